"""ServeConfig: how `phibox serve` runs. One object, filled from defaults → TOML file → environment
(PHIBOX_<FIELD>, e.g. PHIBOX_PORT=8081) → command-line flags, checked when built.

A TOML file may also hold an ``[engine]`` table with EngineConfig fields (device/config.py).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from phibox.device.config import EngineConfig
from phibox.device.errors import ConfigError
from phibox.device.web.i18n import LANGUAGES


@dataclass(frozen=True)
class ServeConfig:
    """The kiosk server's settings."""

    host: str = "127.0.0.1"
    """Address to listen on; 0.0.0.0 to serve the plant network (the kiosk itself uses 127.0.0.1)."""
    port: int = 8080
    queue_size: int = 4
    """Questions waiting for the single generation worker; beyond it the API answers 503 + Retry-After."""
    http_threads: int = 0
    """WSGI worker threads; 0 means queue_size + 6 (streams waiting in the queue hold a thread each)."""
    max_question_chars: int = 1000
    """Longer questions get HTTP 413."""
    max_correction_chars: int = 2000
    """Longest correction a technician may send with a rating (/api/feedback); longer gets HTTP 413."""
    recent_answers: int = 500
    """Finished answers kept in memory for rating; a rating of an older one gets 404 (ask again)."""
    retry_after_s: int = 10
    """Retry-After seconds sent with 503 answers."""
    log_questions: bool = False
    """Put question text in the request log (off: logs carry no technician input)."""
    backend: str = ""
    """gguf or onnx; empty means gguf when the bundle has it, else onnx."""
    state: str = ""
    """Device state directory; empty means $PHIBOX_STATE_DIR or /var/lib/phibox (used unless bundle is set)."""
    bundle: str = ""
    """Unpacked bundle folder to serve instead of a state directory (no admin installs then)."""
    db: str = ""
    """Documents database; empty means documents.db in the state directory."""
    demo: bool = False
    """Show the demo notice on the kiosk page (tiny model: its words are not meaningful)."""
    max_upload_mb: int = 8192
    """Largest bundle or document upload; bigger ones get HTTP 413 before anything is stored."""
    secure_cookies: bool = False
    """Mark the admin session cookie Secure (set when the admin area is served over HTTPS)."""
    keep_bundles: int = 2
    """Installed bundles kept for rollback."""
    memory_budget_mb: int = 0
    """Memory the server may use; a new bundle's model is loaded beside the running one only if it
    fits, else the old one is drained first. 0: the smaller of MemAvailable and the cgroup's room."""
    load_attempts: int = 3
    """Tries to load the active bundle's model at start before falling back to the previous bundle."""
    load_retry_s: float = 10.0
    """Wait before the second try; doubled before each further one."""
    api_keys: str = "auto"
    """/v1 needs a key from `phibox admin new-api-key`: "auto" (when listening beyond loopback),
    "required" or "off"."""
    max_api_tokens: int = 512
    """Largest max_tokens (and min_tokens) a /v1 client may ask for."""
    max_chat_chars: int = 8000
    """Largest total of characters over all of a /v1 request's messages (a RAG question is also
    held to max_question_chars)."""
    session_idle_min: int = 30
    """An admin session ends after this many minutes without a request."""
    session_max_h: int = 12
    """An admin session ends this many hours after the login, whatever happens."""
    allowed_hosts: tuple[str, ...] = ()
    """Names (Host header) the server answers to besides IP addresses, localhost and this machine's
    own name: e.g. ("kiosk-3.plant.lan",). Other names get 421 (a DNS-rebinding page can't reach it)."""
    metrics_public: bool = False
    """Serve /metrics to any client; off: loopback, or a /v1 API key."""
    max_document_mb: int = 64
    """Largest manual an admin may upload."""
    tls_cert: str = ""
    """PEM certificate (from `phibox tls init`): serve HTTPS, admin cookies Secure."""
    tls_key: str = ""
    """PEM private key that goes with tls_cert."""
    default_language: str = ""
    """Language of the kiosk and admin pages when nobody picked one on the page: en, bg, ro, pl, zh-Hans
    or nb. It wins over the browser's Accept-Language (a kiosk browser usually says en-US); empty: the
    browser's language, else English."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port {self.port} is not a TCP port")
        if self.queue_size < 1:
            raise ConfigError("queue_size must be at least 1")
        if self.max_question_chars < 10:
            raise ConfigError("max_question_chars must be at least 10")
        if self.max_correction_chars < 1 or self.recent_answers < 1:
            raise ConfigError("max_correction_chars and recent_answers must be at least 1")
        if self.load_attempts < 1 or self.load_retry_s < 0:
            raise ConfigError("load_attempts must be at least 1 and load_retry_s not negative")
        if self.backend not in ("", "gguf", "onnx"):
            raise ConfigError(f"backend must be gguf or onnx, not {self.backend!r}")
        if self.api_keys not in ("auto", "required", "off"):
            raise ConfigError(f"api_keys must be auto, required or off, not {self.api_keys!r}")
        if self.max_api_tokens < 1 or self.max_chat_chars < self.max_question_chars:
            raise ConfigError("max_api_tokens must be at least 1 and max_chat_chars at least max_question_chars")
        if isinstance(self.allowed_hosts, str | list):
            object.__setattr__(self, "allowed_hosts", _hosts(self.allowed_hosts))
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key go together: give both (from `phibox tls init`), or neither")
        if self.max_document_mb < 1:
            raise ConfigError("max_document_mb must be at least 1")
        if self.default_language and self.default_language not in LANGUAGES:
            raise ConfigError(f"default_language {self.default_language!r} is not one of the page's languages: "
                              f"use one of {', '.join(LANGUAGES)}, or leave it empty for the browser's language")
        if self.session_idle_min < 1 or self.session_max_h < 1:
            raise ConfigError("session_idle_min and session_max_h must be at least 1")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def loopback_only(self) -> bool:
        """Whether the server listens on this machine only (then /v1 keys are optional under "auto")."""
        return self.host in ("127.0.0.1", "::1", "localhost")

    @property
    def api_keys_required(self) -> bool:
        return self.api_keys == "required" or (self.api_keys == "auto" and not self.loopback_only)

    @property
    def threads(self) -> int:
        return self.http_threads or self.queue_size + 6


def _hosts(value: str | list[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    return tuple(h.strip().lower() for h in items if h.strip())


def _coerce(name: str, kind: Any, raw: str) -> Any:
    try:
        if kind in (bool, "bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        return raw
    except ValueError as exc:
        raise ConfigError(f"PHIBOX_{name.upper()}={raw!r} is not a valid {kind}") from exc


def load_serve_config(path: Path | None = None, env: dict[str, str] | None = None,
                      **flags: Any) -> tuple[ServeConfig, EngineConfig]:
    """Defaults → file → environment → flags (None flags are ignored)."""
    env = dict(os.environ) if env is None else env
    serve_values: dict[str, Any] = {}
    engine_values: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the server config ({exc})") from exc
        engine_values = dict(data.pop("engine", {}))
        serve_values.update(data)
    known = {f.name: f.type for f in fields(ServeConfig)}
    unknown = sorted(set(serve_values) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
    for name, kind in known.items():
        raw = env.get(f"PHIBOX_{name.upper()}")
        if raw is not None:
            serve_values[name] = _coerce(name, kind, raw)
    for f in fields(EngineConfig):
        raw = env.get(f"PHIBOX_{f.name.upper()}")
        if raw is not None and f.name not in known:
            engine_values[f.name] = _coerce(f.name, f.type, raw)
    serve_values.update({k: v for k, v in flags.items() if v is not None and k in known})
    engine_flags = {k: v for k, v in flags.items() if v is not None and k not in known}
    try:
        serve = ServeConfig(**serve_values)
    except TypeError as exc:
        raise ConfigError(f"server config: {exc}") from exc
    engine = EngineConfig().with_overrides(**engine_values, **engine_flags)
    return serve, engine
