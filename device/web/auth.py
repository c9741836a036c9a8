"""Admin credentials in the state directory: an scrypt password hash, an API token hash, the
session signing secret, and a login rate limiter. Nothing secret is stored in clear."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import defaultdict, deque
from pathlib import Path

from phibox.device.errors import ConfigError
from phibox.device.fsutil import atomic_write

SCRYPT = {"n": 2**14, "r": 8, "p": 1}
ADMIN_FILE = "admin.json"
SECRET_FILE = "secret.key"


def _write_private(path: Path, data: bytes) -> None:
    atomic_write(path, data, mode=0o600)


def _load(state_root: Path) -> dict:
    path = state_root / ADMIN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(state_root: Path, data: dict) -> None:
    _write_private(state_root / ADMIN_FILE, json.dumps(data, indent=2).encode())


def hash_password(password: str, salt: bytes | None = None) -> dict[str, object]:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **SCRYPT)
    return {"alg": "scrypt", **SCRYPT, "salt": base64.b64encode(salt).decode(),
            "hash": base64.b64encode(digest).decode()}


def set_password(state_root: Path, password: str) -> None:
    if len(password) < 10:
        raise ConfigError("the admin password needs at least 10 characters")
    data = _load(state_root)
    data["password"] = hash_password(password)
    _save(state_root, data)


def check_password(state_root: Path, password: str) -> bool:
    stored = _load(state_root).get("password")
    if not stored:
        return False
    salt = base64.b64decode(stored["salt"])
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, n=stored["n"], r=stored["r"], p=stored["p"])
    return hmac.compare_digest(digest, base64.b64decode(stored["hash"]))


def has_password(state_root: Path) -> bool:
    return "password" in _load(state_root)


def new_token(state_root: Path) -> str:
    """A fresh API token for `phibox push`; only its sha256 is kept."""
    token = secrets.token_urlsafe(32)
    data = _load(state_root)
    data["token_sha256"] = hashlib.sha256(token.encode()).hexdigest()
    _save(state_root, data)
    return token


def check_token(state_root: Path, token: str) -> bool:
    expected = _load(state_root).get("token_sha256")
    return bool(expected) and hmac.compare_digest(expected, hashlib.sha256(token.encode()).hexdigest())


def session_secret(state_root: Path) -> bytes:
    """The key that signs admin session cookies, created once (mode 0600)."""
    path = state_root / SECRET_FILE
    if not path.is_file():
        _write_private(path, secrets.token_bytes(32))
    return path.read_bytes()


class LoginLimiter:
    """At most `attempts` failed logins per client address in `window_s` seconds."""

    def __init__(self, attempts: int = 5, window_s: float = 300.0) -> None:
        self.attempts, self.window_s = attempts, window_s
        self.failures: dict[str, deque[float]] = defaultdict(deque)
        self.lock = threading.Lock()

    def _recent(self, client: str) -> deque[float]:
        q, now = self.failures[client], time.monotonic()
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def blocked_for(self, client: str) -> int:
        """Seconds until this client may try again (0: allowed now)."""
        with self.lock:
            q = self._recent(client)
            if len(q) < self.attempts:
                return 0
            return max(1, int(self.window_s - (time.monotonic() - q[0])))

    def failed(self, client: str) -> None:
        with self.lock:
            self._recent(client).append(time.monotonic())

    def succeeded(self, client: str) -> None:
        with self.lock:
            self.failures.pop(client, None)
