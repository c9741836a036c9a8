"""The device's state directory (default /var/lib/phibox):

    bundles/<version>/   unpacked, verified bundles (the newest few are kept for rollback)
    current              symlink to bundles/<active version>, swapped atomically
    documents.db         the documents index
    events.jsonl         installs, activations, failed health checks, rollbacks
    incoming/            uploads and downloads in progress
    blocked.json         versions that failed their health check or were rolled back: a fleet pull
                         skips them until an admin allows them again (`phibox bundle allow`)
    channel-pin.json     the fleet channel this device follows and the newest channel it has seen
    sessions.json        the admin session generation (a logout ends every session)

The credentials are in the config directory (paths.config_dir: /etc/phibox on the appliance,
root-owned and read-only for the service; the state directory itself elsewhere):

    keys/*.pub           trusted Ed25519 public keys (several, for rotation)
    admin.json           the admin password's scrypt hash, the push token's and API keys' hashes
    secret.key           the key that signs admin session cookies
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from phibox.device import paths
from phibox.device.errors import ConfigError
from phibox.device.fsutil import atomic_write, fsync_dir
from phibox.device.installed import DOCUMENTS_DB
from phibox.device.provenance import utc_now


class StateDir:
    def __init__(self, root: Path, config: Path | None = None) -> None:
        self.root = root
        self.config = config or paths.config_dir(root)
        self.bundles = root / "bundles"
        self.current = root / "current"
        self.keys = self.config / "keys"
        self.db = root / DOCUMENTS_DB
        self.events = root / "events.jsonl"
        self.incoming = root / "incoming"

    def init(self) -> StateDir:
        for folder in (self.root, self.bundles, self.incoming):
            folder.mkdir(parents=True, exist_ok=True)
        if self.config == self.root:  # else root-owned, made by install.sh
            self.keys.mkdir(exist_ok=True)
        return self

    def bundle_dir(self, version: int) -> Path:
        return self.bundles / str(version)

    def active_version(self) -> int | None:
        """The version `current` points at, or None before the first install."""
        if not self.current.is_symlink():
            return None
        target = os.readlink(self.current)
        try:
            return int(Path(target).name)
        except ValueError as exc:
            raise ConfigError(f"{self.current} points at {target}, not a bundle version folder") from exc

    def versions(self) -> list[int]:
        """Completely installed versions, oldest first."""
        if not self.bundles.is_dir():
            return []
        return sorted(int(p.name) for p in self.bundles.iterdir() if p.name.isdigit() and p.is_dir())

    def previous_version(self) -> int | None:
        active = self.active_version()
        older = [v for v in self.versions() if active is None or v < active]
        return older[-1] if older else None

    def activate(self, version: int | None) -> None:
        """Point `current` at bundles/<version> atomically (new link beside it, rename over, fsync)."""
        if version is None:
            self.current.unlink(missing_ok=True)
            fsync_dir(self.root)
            return
        if not self.bundle_dir(version).is_dir():
            raise ConfigError(f"bundle version {version} is not installed in {self.bundles}")
        tmp = self.root / f".current-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(f"bundles/{version}", tmp)
        os.rename(tmp, self.current)
        fsync_dir(self.root)

    def prune(self, keep: int) -> list[int]:
        """Remove old versions beyond the newest `keep`, never the active one."""
        active = self.active_version()
        removable = [v for v in self.versions() if v != active]
        doomed = removable[: max(0, len(self.versions()) - keep)]
        for version in doomed:
            shutil.rmtree(self.bundle_dir(version), ignore_errors=True)
        return doomed

    def clean_partials(self) -> None:
        """Remove half-unpacked bundles left by an install that was killed."""
        if self.bundles.is_dir():
            for p in self.bundles.iterdir():
                if ".partial" in p.name:
                    shutil.rmtree(p, ignore_errors=True)
        for p in self.root.glob(".current-*"):
            p.unlink(missing_ok=True)

    # --- versions a fleet pull must not retry -----------------------------------------------
    @property
    def blocked_file(self) -> Path:
        return self.root / "blocked.json"

    def blocked(self) -> dict[int, dict[str, str]]:
        """{version: {"reason", "at"}} of versions that failed here or were rolled back."""
        try:
            data = json.loads(self.blocked_file.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise ConfigError(f"{self.blocked_file} is damaged ({exc}): delete it to forget blocked versions") from exc
        return {int(v): dict(info) for v, info in data.items()}

    def block(self, version: int, reason: str) -> None:
        """Remember that version must not come back by itself (call under the install lock)."""
        data = self.blocked()
        data[version] = {"reason": reason, "at": utc_now()}
        atomic_write(self.blocked_file, json.dumps({str(v): i for v, i in sorted(data.items())}, indent=1).encode())

    def unblock(self, version: int) -> bool:
        """Forget a blocked version (an admin allowed it, or it was installed on purpose and passed)."""
        data = self.blocked()
        if data.pop(version, None) is None:
            return False
        atomic_write(self.blocked_file, json.dumps({str(v): i for v, i in sorted(data.items())}, indent=1).encode())
        return True

    # --- the server running from this directory --------------------------------------------
    @property
    def server_file(self) -> Path:
        return self.root / "server.json"

    def mark_server(self, host: str, port: int, scheme: str = "http", fingerprint: str | None = None) -> None:
        """`phibox serve` says it runs from here (pid, its start time, the URL that reaches it from this
        machine and, under HTTPS, its certificate's fingerprint), so installs and pulls from the shell
        go to it."""
        local = "127.0.0.1" if host in ("0.0.0.0", "", "localhost") else "[::1]" if host == "::" else host
        url = f"{scheme}://{f'[{local}]' if ':' in local and not local.startswith('[') else local}:{port}"
        info = {"pid": os.getpid(), "started": _process_start(os.getpid()), "port": port, "url": url,
                "fingerprint": fingerprint}
        atomic_write(self.server_file, json.dumps(info).encode())

    def clear_server(self) -> None:
        info = self.running_server()
        if info is not None and info["pid"] == os.getpid():
            self.server_file.unlink(missing_ok=True)

    def running_server(self) -> dict[str, Any] | None:
        """The live `phibox serve` running from this directory ({"pid", "port", "url"}), or None. A pid
        reused by another process after a crash does not count: its start time differs."""
        try:
            info = json.loads(self.server_file.read_text())
            pid = int(info["pid"])
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, KeyError, TypeError, ProcessLookupError):
            return None
        except PermissionError:  # alive, under another user (the service user)
            pid = int(info["pid"])
        started = _process_start(pid)
        if started is not None and info.get("started") not in (None, started):
            return None
        port = int(info["port"])
        found: dict[str, Any] = {"pid": pid, "port": port, "url": str(info.get("url") or f"http://127.0.0.1:{port}")}
        if info.get("fingerprint"):
            found["fingerprint"] = str(info["fingerprint"])
        return found

    def record(self, event: str, **detail: Any) -> dict[str, Any]:
        entry = {"at": utc_now(), "event": event, **detail}
        with open(self.events, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return entry

    def recent_events(self, n: int = 20) -> list[dict[str, Any]]:
        if not self.events.is_file():
            return []
        lines = self.events.read_text().splitlines()[-n:]
        return [json.loads(line) for line in reversed(lines) if line.strip()]


def _process_start(pid: int) -> int | None:
    """When the process started (clock ticks since boot, /proc/PID/stat field 22), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
