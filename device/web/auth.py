"""Admin credentials in the config directory (StateDir.config: /etc/phibox on the appliance,
root-owned and read-only for the service): an scrypt password hash, the push token's hash, the /v1
API keys' hashes, the session signing secret. In the state directory: the session generation
(bumped by a logout or a new password: every session cookie issued before stops working). And a
login rate limiter. Nothing secret is stored in clear."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections import deque
from pathlib import Path

from phibox.device.errors import ConfigError
from phibox.device.fsutil import atomic_write
from phibox.device.lifecycle.state import StateDir

SCRYPT = {"n": 2**14, "r": 8, "p": 1}
ADMIN_FILE = "admin.json"
SECRET_FILE = "secret.key"
SESSIONS_FILE = "sessions.json"
log = logging.getLogger("phibox.auth")


def _write_private(path: Path, data: bytes) -> None:
    """0600; written by root into a folder of another group (the appliance's /etc/phibox, group
    phibox): root-owned, 0640, readable by the service and by nobody else."""
    atomic_write(path, data, mode=0o600)
    if os.geteuid() == 0:
        folder = path.parent.stat()
        if folder.st_gid != 0:
            os.chown(path, 0, folder.st_gid)
            os.chmod(path, 0o640)


def _load(state: StateDir) -> dict:
    path = state.config / ADMIN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(state: StateDir, data: dict) -> None:
    state.config.mkdir(parents=True, exist_ok=True)
    _write_private(state.config / ADMIN_FILE, json.dumps(data, indent=2).encode())


def hash_password(password: str, salt: bytes | None = None) -> dict[str, object]:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **SCRYPT)
    return {"alg": "scrypt", **SCRYPT, "salt": base64.b64encode(salt).decode(),
            "hash": base64.b64encode(digest).decode()}


def set_password(state: StateDir, password: str) -> None:
    """The admin password (and the session secret, made once); every admin session ends."""
    if len(password) < 10:
        raise ConfigError("the admin password needs at least 10 characters")
    data = _load(state)
    data["password"] = hash_password(password)
    _save(state, data)
    if not (state.config / SECRET_FILE).is_file():
        _write_private(state.config / SECRET_FILE, secrets.token_bytes(32))
    end_sessions(state)


def session_generation(state: StateDir) -> int:
    """Sessions carry the generation they were issued in; a different one is no session. It lives in
    the state directory: the service itself ends sessions (logout) and can't write the credentials."""
    try:
        return int(json.loads((state.root / SESSIONS_FILE).read_text())["generation"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return 0


def end_sessions(state: StateDir) -> None:
    """Every admin session issued so far stops working (logout, new password, or the command line)."""
    atomic_write(state.root / SESSIONS_FILE,
                 json.dumps({"generation": session_generation(state) + 1}).encode(), mode=0o600)


def check_password(state: StateDir, password: str) -> bool:
    stored = _load(state).get("password")
    if not stored:
        return False
    salt = base64.b64decode(stored["salt"])
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, n=stored["n"], r=stored["r"], p=stored["p"])
    return hmac.compare_digest(digest, base64.b64decode(stored["hash"]))


def has_password(state: StateDir) -> bool:
    return "password" in _load(state)


def new_token(state: StateDir) -> str:
    """A fresh API token for `phibox push`; only its sha256 is kept."""
    token = secrets.token_urlsafe(32)
    data = _load(state)
    data["token_sha256"] = hashlib.sha256(token.encode()).hexdigest()
    _save(state, data)
    return token


def check_token(state: StateDir, token: str) -> bool:
    expected = _load(state).get("token_sha256")
    return bool(expected) and hmac.compare_digest(expected, hashlib.sha256(token.encode()).hexdigest())


def new_api_key(state: StateDir, name: str) -> str:
    """A fresh /v1 API key under name (replacing one of that name); only its sha256 is kept."""
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"API key name {name!r}: use up to 64 letters, digits, '-' or '_'")
    key = "pbx-" + secrets.token_urlsafe(32)
    data = _load(state)
    data.setdefault("api_keys", {})[name] = hashlib.sha256(key.encode()).hexdigest()
    _save(state, data)
    return key


def api_key_name(state: StateDir, key: str) -> str | None:
    """The name of the /v1 API key, or None if it is not one."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    found = None
    for name, expected in _load(state).get("api_keys", {}).items():
        if hmac.compare_digest(expected, digest):
            found = name
    return found


def session_secret(state: StateDir) -> bytes:
    """The key that signs admin session cookies: made once (by `phibox admin set-password`, or here
    when the config directory is writable); else one for this run only (sessions end at restart)."""
    path = state.config / SECRET_FILE
    if not path.is_file():
        try:
            _write_private(path, secrets.token_bytes(32))
        except OSError as exc:
            log.warning("no %s and cannot write it (%s): admin sessions end when the server stops; "
                        "`phibox admin set-password` makes it", path, exc)
            return secrets.token_bytes(32)
    return path.read_bytes()


class LoginLimiter:
    """At most `attempts` failed logins per client address in `window_s` seconds, and at most
    `global_attempts` from all clients together (a spread-out guessing attempt). An attempt is
    reserved before the password is hashed, so concurrent guesses count too; the map of clients is
    bounded (the oldest are forgotten first)."""

    def __init__(self, attempts: int = 5, window_s: float = 300.0, global_attempts: int = 50,
                 max_clients: int = 10_000) -> None:
        self.attempts, self.window_s = attempts, window_s
        self.global_attempts, self.max_clients = global_attempts, max_clients
        self.failures: dict[str, deque[float]] = {}
        self.everyone: deque[float] = deque()
        self.lock = threading.Lock()

    def _trim(self, q: deque[float], now: float) -> deque[float]:
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def _wait(self, q: deque[float], limit: int, now: float) -> int:
        return 0 if len(q) < limit else max(1, int(self.window_s - (now - q[0])))

    def reserve(self, client: str) -> int:
        """Count an attempt now (before checking the password). Returns 0 when it may go ahead, else
        the seconds to wait (and nothing was counted)."""
        with self.lock:
            now = time.monotonic()
            mine = self._trim(self.failures.get(client, deque()), now)
            wait = max(self._wait(mine, self.attempts, now), self._wait(self._trim(self.everyone, now),
                                                                        self.global_attempts, now))
            if wait:
                return wait
            mine.append(now)
            self.everyone.append(now)
            self.failures.pop(client, None)
            self.failures[client] = mine  # most recent last: the oldest client is forgotten first
            while len(self.failures) > self.max_clients:
                self.failures.pop(next(iter(self.failures)))
            return 0

    def succeeded(self, client: str) -> None:
        """The reserved attempt was the right password: forget this client's failures."""
        with self.lock:
            mine = self.failures.pop(client, None)
            if mine and self.everyone:
                self.everyone.pop()
