"""`phibox push BUNDLE --to URL --token-file F`: upload a bundle to one device in pieces (resuming an
interrupted push), which then verifies, installs, activates and health-checks it; prints the outcome."""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from pathlib import Path
from urllib.parse import urlsplit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="a .phibox file")
    parser.add_argument("--to", required=True, help="the device, e.g. http://kiosk-3:8080")
    parser.add_argument("--token-file", type=Path, required=True, help="file holding the device's API token")
    parser.add_argument("--allow-downgrade", action="store_true", help="install even if older than the active one")
    parser.add_argument("--fingerprint", default=None,
                        help="for https: the SHA-256 fingerprint `phibox tls init` printed on the device (pinned; "
                             "nothing is sent to a server with another certificate)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


class _Device:
    """One keep-alive connection to a device's /api/admin, JSON in and out."""

    def __init__(self, url: str, token: str, timeout: float, fingerprint: str | None) -> None:
        from phibox.device.errors import ConfigError
        from phibox.device.lifecycle.tls import PinnedHTTPSConnection

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--to {url!r} must look like http://host:port or https://host:port")
        if fingerprint and parts.scheme != "https":
            raise ConfigError("--fingerprint pins an HTTPS certificate: use an https:// URL")
        self.url = url
        self.conn: http.client.HTTPConnection
        if fingerprint:
            self.conn = PinnedHTTPSConnection(parts.hostname, parts.port, fingerprint, timeout)
        elif parts.scheme == "https":
            self.conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout)
        else:
            self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        self.auth = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: bytes | None = None, json_body: dict | None = None
             ) -> tuple[int, dict]:
        from phibox.device.errors import ConfigError

        headers = dict(self.auth)
        if json_body is not None:
            body, headers["Content-Type"] = json.dumps(json_body).encode(), "application/json"
        elif body is not None:
            headers["Content-Type"] = "application/octet-stream"
        try:
            self.conn.request(method, "/api/admin" + path, body=body, headers=headers)
            response = self.conn.getresponse()
            raw = response.read()
        except OSError as exc:
            self.conn.close()
            raise ConfigError(f"cannot reach {self.url}: {exc}; run the push again to resume") from exc
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, {"error": raw.decode(errors="replace")[:500]}

    def close(self) -> None:
        self.conn.close()


def push(bundle: Path, url: str, token: str, allow_downgrade: bool = False, timeout: float = 1800,
         progress: bool = False, fingerprint: str | None = None) -> tuple[int, dict]:
    """Upload the bundle in pieces (resuming one the device already holds part of), then have the
    device install it; returns (HTTP status, JSON body) of the step that ended it."""
    from tqdm.auto import tqdm

    from phibox.device.bundle import sha256_file

    size = bundle.stat().st_size
    device = _Device(url, token, timeout, fingerprint)
    try:
        status, body = device.call("POST", "/uploads", json_body={
            "kind": "bundle", "name": bundle.name, "size": size, "sha256": sha256_file(bundle)[1]})
        if status != 200:
            return status, body
        upload, offset, piece = body["id"], int(body["received"]), int(body["piece_bytes"])
        if offset:
            print(f"resuming the upload at {offset} of {size} bytes", file=sys.stderr)
        bar = tqdm(total=size, initial=offset, unit="B", unit_scale=True, desc=f"push {bundle.name}",
                   disable=not progress, dynamic_ncols=True)
        with open(bundle, "rb") as fh, bar:
            fh.seek(offset)
            while offset < size:
                data = fh.read(piece)
                status, body = device.call("PUT", f"/uploads/{upload}?offset={offset}", body=data)
                if status != 200:
                    return status, body
                offset = int(body["received"])
                fh.seek(offset)
                bar.update(offset - bar.n)
        return device.call("POST", f"/uploads/{upload}/finish" + ("?allow_downgrade=1" if allow_downgrade else ""))
    finally:
        device.close()




def run(args: argparse.Namespace) -> int:
    token = args.token_file.read_text().strip()
    status, body = push(args.bundle, args.to, token, args.allow_downgrade, progress=not args.no_progress,
                        fingerprint=args.fingerprint)
    if status == 200:
        print(f"{args.to}: {body['name']} v{body['installed']} installed, health check {body['health']}, active")
        return 0
    print(f"{args.to}: refused ({status}): {body.get('error', body)}")
    return 1
