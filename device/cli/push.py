"""`phibox push BUNDLE --to URL --token-file F`: upload a bundle to one device, which verifies,
installs, activates and health-checks it; prints the outcome."""

from __future__ import annotations

import argparse
import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="a .phibox file")
    parser.add_argument("--to", required=True, help="the device, e.g. http://kiosk-3:8080")
    parser.add_argument("--token-file", type=Path, required=True, help="file holding the device's API token")
    parser.add_argument("--allow-downgrade", action="store_true", help="install even if older than the active one")


def push(bundle: Path, url: str, token: str, allow_downgrade: bool = False, timeout: float = 1800) -> tuple[int, dict]:
    """Stream the bundle to the device's /api/admin/bundles; returns (HTTP status, JSON body)."""
    from phibox.device.errors import ConfigError

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--to {url!r} must look like http://host:port")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, parts.port, timeout=timeout)
    path = "/api/admin/bundles" + ("?allow_downgrade=1" if allow_downgrade else "")
    try:
        with open(bundle, "rb") as fh:
            conn.request("POST", path, body=fh, headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream",
                "Content-Length": str(bundle.stat().st_size)})
        response = conn.getresponse()
        raw = response.read()
    except OSError as exc:
        raise ConfigError(f"cannot reach {url}: {exc}") from exc
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, {"error": raw.decode(errors="replace")[:500]}


def run(args: argparse.Namespace) -> int:
    token = args.token_file.read_text().strip()
    status, body = push(args.bundle, args.to, token, args.allow_downgrade)
    if status == 200:
        print(f"{args.to}: {body['name']} v{body['installed']} installed, health check {body['health']}, active")
        return 0
    print(f"{args.to}: refused ({status}): {body.get('error', body)}")
    return 1
