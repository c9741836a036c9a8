"""HTTPS for admin and push on a plant LAN: `phibox tls init` makes the device's certificate and
prints its fingerprint, `phibox serve` serves HTTPS with it (cheroot), `phibox push --fingerprint`
pins it (nothing, not even the token, goes to another certificate), admin cookies are Secure."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import time

import pytest
from bundle_kit import device_state
from test_serve import free_port

from phibox.device.cli.main import main
from phibox.device.web import auth as admin_auth

PASSWORD = "correct horse battery staple"


def https(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None
          ) -> tuple[int, dict[str, str], bytes]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=context)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def device(lifecycle_files, admin_keys, tmp_path_factory):
    root = tmp_path_factory.mktemp("tls") / "state"
    state = device_state(root, lifecycle_files["v3"], admin_keys[1])
    admin_auth.set_password(state, PASSWORD)
    token = root.parent / "token"
    assert main(["admin", "new-token", "--state", str(root), "--out", str(token)]) == 0
    out = subprocess.run([sys.executable, "-m", "phibox.device.cli", "tls", "init", "--state", str(root)],
                         capture_output=True, text=True, check=True).stdout
    fingerprint = out.split("SHA-256 fingerprint: ", 1)[1].split()[0]
    port = free_port()
    env = {**os.environ, "PHIBOX_TLS_CERT": str(root / "tls" / "cert.pem"),
           "PHIBOX_TLS_KEY": str(root / "tls" / "key.pem")}
    proc = subprocess.Popen([sys.executable, "-m", "phibox.device.cli", "serve", "--state", str(root),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "the HTTPS server did not become ready"
        try:
            if json.loads(https(port, "GET", "/healthz")[2])["status"] == "ready":
                break
        except (OSError, ValueError):
            time.sleep(0.2)
    yield {"state": state, "port": port, "token": token, "fingerprint": fingerprint}
    proc.terminate()
    proc.wait(timeout=30)


def test_tls_init_makes_a_private_key_and_keeps_an_existing_certificate(device, capsys) -> None:
    root = device["state"].root
    assert (root / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
    assert main(["tls", "init", "--state", str(root)]) == 1
    assert "pass --force" in capsys.readouterr().err
    assert main(["tls", "show", "--state", str(root)]) == 0
    assert device["fingerprint"] in capsys.readouterr().out


def test_the_kiosk_streams_answers_over_https(device) -> None:
    status, headers, body = https(device["port"], "POST", "/api/ask",
                                  json.dumps({"question": "What do I do when the press shows E42?"}).encode(),
                                  {"Content-Type": "application/json"})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert b"event: passages" in body and b"event: done" in body
    conn = http.client.HTTPConnection("127.0.0.1", device["port"], timeout=10)
    try:
        conn.request("GET", "/healthz")  # plain HTTP on the HTTPS port: no page comes back
        reply = conn.getresponse()
        status, body = reply.status, reply.read()
    except (OSError, http.client.HTTPException):
        status, body = None, b""
    finally:
        conn.close()
    assert status in (None, 400) and b"bundle_version" not in body, (status, body[:200])


def test_admin_cookies_are_secure_under_tls(device) -> None:
    _, headers, _ = https(device["port"], "GET", "/admin/login")
    assert "Secure" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]


def test_push_pins_the_fingerprint(device, lifecycle_files, capsys) -> None:
    url, state = f"https://127.0.0.1:{device['port']}", device["state"]
    wrong = "AB:" * 31 + "AB"
    args = ["push", str(lifecycle_files["v4"]), "--to", url, "--token-file", str(device["token"]), "--no-progress"]
    assert main([*args, "--fingerprint", wrong]) == 1
    assert "not the pinned" in capsys.readouterr().err
    assert state.active_version() == 3 and not list(state.incoming.glob("upload-*"))
    assert main([*args, "--fingerprint", device["fingerprint"]]) == 0
    assert "v4 installed, health check ok" in capsys.readouterr().out
    assert state.active_version() == 4
