"""The kiosk on a plant LAN, through a real server on loopback: /v1 needs a key and is bounded
(tokens, characters, one job per client, a job whose client left is cancelled), admin sessions
end (logout, new password, idle, age), and concurrent password guesses are all counted."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from bundle_kit import device_state
from test_admin import PASSWORD, Browser
from test_serve import get, start_server

from phibox.device.cli.main import main
from phibox.device.config import EngineConfig
from phibox.device.web import auth as admin_auth
from phibox.device.web.settings import ServeConfig

NORAG = "phibox-plant7-norag"


@pytest.fixture(scope="module")
def lan(lifecycle_files, admin_keys, tmp_path_factory):
    """v3 on a state directory, served with /v1 keys required (as on 0.0.0.0), two keys made with the CLI."""
    root = tmp_path_factory.mktemp("lan") / "state"
    state = device_state(root, lifecycle_files["v3"], admin_keys[1])
    admin_auth.set_password(state, PASSWORD)
    keys = {}
    for name in ("mes-line2", "scada"):
        out = root.parent / f"{name}.key"
        assert main(["admin", "new-api-key", "--state", str(root), "--name", name, "--out", str(out)]) == 0
        assert out.stat().st_mode & 0o777 == 0o600
        keys[name] = out.read_text().strip()
    proc, port = start_server(["--state", str(root), "--queue-size", "3", "--backend", "gguf"],
                              env={"PHIBOX_API_KEYS": "required", "PHIBOX_MAX_API_TOKENS": "3500",
                                   "PHIBOX_CONTEXT_WINDOW": "4096",
                                   "PHIBOX_MAX_UPLOAD_MB": str(1 << 30)})  # so the disk check is reached
    yield {"state": state, "port": port, "keys": keys, "proc": proc}
    proc.terminate()
    proc.wait(timeout=30)


def v1(port: int, body: dict, key: str | None, timeout: float = 120) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers=headers)
        r = conn.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw else {}
    finally:
        conn.close()


def chat(content: str = "Fault E31?", **extra: object) -> dict:
    return {"model": NORAG, "messages": [{"role": "user", "content": content}], "max_tokens": 8, **extra}


def test_api_keys_are_required_beyond_loopback_by_default() -> None:
    assert ServeConfig(host="0.0.0.0").api_keys_required
    assert not ServeConfig(host="127.0.0.1").api_keys_required
    assert ServeConfig(host="127.0.0.1", api_keys="required").api_keys_required


def test_v1_without_a_valid_key_is_401(lan) -> None:
    status, body = v1(lan["port"], chat(), None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert "phibox admin new-api-key" in body["error"]["message"]
    assert v1(lan["port"], chat(), "pbx-guessed")[0] == 401
    assert v1(lan["port"], chat(), lan["keys"]["mes-line2"])[0] == 200


def test_token_and_length_caps_on_v1(lan) -> None:
    key, port = lan["keys"]["mes-line2"], lan["port"]
    status, body = v1(port, chat(max_tokens=4000), key)
    assert status == 400 and "max_api_tokens" in body["error"]["message"]
    assert v1(port, chat(max_tokens=8, min_tokens=9), key)[0] == 400
    started = time.monotonic()
    status, body = v1(port, {"model": "phibox-plant7", "messages": [{"role": "user", "content": "x" * 880_000}]},
                      key)
    assert status == 413 and time.monotonic() - started < 5  # refused up front, not after 26 s of CPU
    status, body = v1(port, {"model": "phibox-plant7", "messages": [{"role": "user", "content": "E42 " * 300}]}, key)
    assert status == 413 and "the limit is 1000" in body["error"]["message"]  # same limit as /api/ask
    many = [{"role": "user", "content": "y" * 900}] * 10
    status, body = v1(port, {"model": NORAG, "messages": many, "max_tokens": 8}, key)
    assert status == 413 and "max_chat_chars" in body["error"]["message"]


def open_stream(port: int, body: dict, key: str) -> tuple[socket.socket, object]:
    payload = json.dumps({**body, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"HTTP/1.1 200")
    while not reader.readline().startswith(b"data: {"):  # headers, then the first chunk
        pass
    return sock, reader


def close(sock: socket.socket, reader) -> None:
    reader.close()
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def wait_idle(port: int, limit_s: float = 60) -> float:
    started = time.monotonic()
    while json.loads(get(port, "/healthz")[2])["generating"]:
        assert time.monotonic() - started < limit_s
        time.sleep(0.05)
    return time.monotonic() - started


def test_one_job_at_a_time_per_client(lan, no_stop) -> None:
    port, keys = lan["port"], lan["keys"]
    long = chat("Describe the plant.", max_tokens=3500, logit_bias=no_stop)
    sock, reader = open_stream(port, long, keys["mes-line2"])
    try:
        status, body = v1(port, chat(), keys["mes-line2"])
        assert status == 429 and body["error"]["code"] == "one_job_per_client"
        other = open_stream(port, chat(max_tokens=4), keys["scada"])  # another client still gets in
        close(*other)
    finally:
        close(sock, reader)
    wait_idle(port)
    assert v1(port, chat(), keys["mes-line2"])[0] == 200  # the stream's end let the client go


def test_a_non_streaming_client_that_leaves_gets_its_job_cancelled(lan, no_stop) -> None:
    port, key = lan["port"], lan["keys"]["scada"]
    sock, reader = open_stream(port, chat("Describe the plant.", max_tokens=400, logit_bias=no_stop), key)
    started = time.monotonic()
    received = 0
    while time.monotonic() - started < 1.0:
        received += reader.readline().startswith(b"data: {")
    rate = received / (time.monotonic() - started)
    close(sock, reader)
    wait_idle(port)

    payload = json.dumps(chat("Describe the plant.", max_tokens=3500, logit_bias=no_stop)).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
    deadline = time.monotonic() + 30
    while not json.loads(get(port, "/healthz")[2])["generating"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    sock.close()  # the client gives up without reading anything
    stopped_after = wait_idle(port)
    full = 3500 / max(rate, 1e-9)
    assert stopped_after < full / 4, (rate, full, stopped_after)


def test_sessions_end_on_logout_and_on_a_new_password(lan, tmp_path: Path) -> None:
    port, state = lan["port"], lan["state"]
    web, copy = Browser(port), Browser(port)
    csrf = web.login()
    copy.cookie = web.cookie  # the same cookie, stolen or left in another tab
    status, headers, _ = web.request("GET", "/admin")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert web.form("/admin/logout", {"csrf": csrf})[0] == 302
    status, headers, _ = copy.request("GET", "/admin")
    assert status == 302 and headers["Location"].endswith("/admin/login")

    web.login()
    password_file = tmp_path / "pw"
    password_file.write_text(PASSWORD + "\n")
    assert main(["admin", "set-password", "--state", str(state.root), "--password-file", str(password_file)]) == 0
    assert web.request("GET", "/admin")[0] == 302


def test_sessions_end_when_idle_and_when_old(lan, monkeypatch) -> None:
    from phibox.device.service import DeviceService
    from phibox.device.web import admin
    from phibox.device.web.app import create_app
    from phibox.device.web.metrics import Metrics

    state = lan["state"]
    service = DeviceService(state.current.resolve(), state.db, EngineConfig(), Metrics(), state=state)
    client = create_app(service, ServeConfig(session_idle_min=30, session_max_h=12)).test_client()
    now = [time.time()]
    monkeypatch.setattr(admin.time, "time", lambda: now[0])

    def login() -> None:
        page = client.get("/admin/login").get_data(as_text=True)
        csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        assert client.post("/admin/login", data={"csrf": csrf, "password": PASSWORD}).status_code == 302

    login()
    for _ in range(28):  # used every 24 min 40 s: alive for 11 h 31 min
        now[0] += 25 * 60 - 20
        assert client.get("/admin").status_code == 200
    now[0] += 29.5 * 60  # not idle for 30 minutes, but 12 h after the login: it ends, however busy
    assert client.get("/admin").status_code == 302
    login()
    now[0] += 31 * 60
    assert client.get("/admin").status_code == 302  # 31 minutes untouched


def test_concurrent_wrong_passwords_are_all_counted(lifecycle_files, admin_keys, tmp_path: Path) -> None:
    root = tmp_path / "state"
    state = device_state(root, lifecycle_files["v3"], admin_keys[1])
    admin_auth.set_password(state, PASSWORD)
    proc, port = start_server(["--state", str(root)], env={"PHIBOX_HTTP_THREADS": "12"})
    try:
        def guess(_: int) -> int:
            web = Browser(port)
            _, _, page = web.request("GET", "/admin/login")
            return web.form("/admin/login", {"csrf": web.csrf(page), "password": "wrong guess"})[0]

        with ThreadPoolExecutor(10) as pool:
            codes = sorted(pool.map(guess, range(10)))
        assert codes == [403] * 5 + [429] * 5
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_login_limiter_bounds_its_memory_and_backs_off_globally() -> None:
    limiter = admin_auth.LoginLimiter(attempts=5, window_s=300, global_attempts=20, max_clients=8)
    for i in range(19):
        assert limiter.reserve(f"10.0.0.{i}") == 0
    assert len(limiter.failures) == 8
    assert limiter.reserve("10.0.1.1") == 0
    assert limiter.reserve("10.0.1.2") > 0  # 20 failures from everyone: everyone waits


def raw_get(port: int, path: str, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_only_the_kiosks_own_names_are_answered(lan) -> None:
    port = lan["port"]
    assert raw_get(port, "/healthz", "attacker.example") == 421  # a DNS-rebinding page
    assert raw_get(port, "/healthz", f"attacker.example:{port}") == 421
    for host in (f"127.0.0.1:{port}", "localhost", f"[::1]:{port}", f"{socket.gethostname()}:{port}"):
        assert raw_get(port, "/healthz", host) == 200, host


def test_allowed_hosts_from_the_settings() -> None:
    cfg = ServeConfig(allowed_hosts="kiosk-3.plant.lan, Kiosk-4.plant.lan")
    assert cfg.allowed_hosts == ("kiosk-3.plant.lan", "kiosk-4.plant.lan")


@pytest.fixture()
def app_client(lan):
    from phibox.device.service import DeviceService
    from phibox.device.web.app import create_app
    from phibox.device.web.metrics import Metrics

    state = lan["state"]
    service = DeviceService(state.current.resolve(), state.db, EngineConfig(), Metrics(), state=state)
    return service, create_app(service, ServeConfig()).test_client()


def test_health_and_metrics_leak_nothing_to_the_lan(lan, app_client) -> None:
    service, client = app_client
    service.error = f"OSError: {lan['state'].root}/bundles/4/model/phi3.gguf: read failed"
    body = client.get("/healthz").get_json()
    assert str(lan["state"].root) not in json.dumps(body) and "admin page" in body["error"]
    lan_client = {"REMOTE_ADDR": "10.0.0.9"}
    assert client.get("/metrics", environ_base=lan_client).status_code == 403
    key = {"Authorization": f"Bearer {lan['keys']['scada']}"}
    assert client.get("/metrics", environ_base=lan_client, headers=key).status_code == 200
    assert client.get("/metrics").status_code == 200  # this machine


def test_small_bad_inputs_get_clear_4xx_not_500(lan) -> None:
    port, key = lan["port"], lan["keys"]["scada"]
    for k in ("0", "5000", "x"):
        status, _, body = get(port, f"/api/search?q=press+E42&k={k}")
        assert status == 400 and b"from 1 to 20" in body
    nested = ("[" * 100_000 + "]" * 100_000).encode()
    for path, headers in (("/api/ask", {}), ("/v1/chat/completions", {"Authorization": f"Bearer {key}"})):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", path, body=nested, headers={"Content-Type": "application/json", **headers})
        assert conn.getresponse().status == 400, path
        conn.close()


def test_document_uploads_check_the_name_and_their_own_cap(lan) -> None:
    port, state = lan["port"], lan["state"]
    web = Browser(port)
    csrf = web.login()
    before = set(state.incoming.iterdir())
    for name in ("bad\0name.md", "x" * 250 + ".md", "back\\slash.md"):
        status, body = web.upload(csrf, "document", name, b"# Manual\n\ntext\n")
        assert status == 400 and "file name" in body["error"], (name, body)
    status, body = web.upload(csrf, "document", "huge.md", b"#" * (65 << 20))
    assert status == 413 and "the limit is 64 MB" in body["error"]
    assert set(state.incoming.iterdir()) == before


def api(port: int, method: str, path: str, token: str | None, body: bytes | None = None,
        json_body: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if json_body is not None:
            body, headers["Content-Type"] = json.dumps(json_body).encode(), "application/json"
        conn.request(method, "/api/admin" + path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def push_token(lan) -> str:
    out = lan["state"].root.parent / "push.token"
    assert main(["admin", "new-token", "--state", str(lan["state"].root), "--out", str(out)]) == 0
    return out.read_text().strip()


def test_nothing_is_stored_before_the_token_is_checked(lan, push_token) -> None:
    port, state = lan["port"], lan["state"]
    status, _ = api(port, "PUT", "/uploads/abc?offset=0", None, body=b"\0" * (5 << 20))
    assert status == 401
    status, _ = api(port, "POST", "/uploads", "wrong", json_body={"kind": "bundle", "name": "a.phibox",
                                                                    "size": 10})
    assert status == 401 and not list(state.incoming.glob("upload-*"))


def test_the_declared_size_is_checked_against_free_disk(lan, push_token) -> None:
    free = shutil.disk_usage(lan["state"].root).free
    status, body = api(lan["port"], "POST", "/uploads", push_token,
                       json_body={"kind": "bundle", "name": "huge.phibox", "size": free // 2 + (1 << 30)})
    assert status == 507 and "not enough disk" in body["error"]
    assert not list(lan["state"].incoming.glob("upload-*"))


def test_one_upload_at_a_time_and_a_cancel_frees_the_slot(lan, push_token) -> None:
    port = lan["port"]
    left = lan["state"].incoming / "upload-0123abcd.done"  # a server stopped in the middle of an install
    left.write_bytes(b"x" * 1000)
    os.utime(left, (time.time() - 7200, time.time() - 7200))
    status, first = api(port, "POST", "/uploads", push_token, json_body={"kind": "bundle", "name": "a.phibox",
                                                                          "size": 1000})
    assert status == 200
    assert not left.exists()  # cleaned when the next upload begins
    status, body = api(port, "POST", "/uploads", push_token, json_body={"kind": "bundle", "name": "b.phibox",
                                                                         "size": 1000})
    assert status == 409 and "another upload (a.phibox, 0 of 1000 bytes)" in body["error"]
    assert api(port, "PUT", f"/uploads/{first['id']}?offset=10", push_token, body=b"x" * 10)[0] == 409
    assert api(port, "PUT", f"/uploads/{first['id']}?offset=0", push_token, body=b"x" * 10)[1]["received"] == 10
    assert api(port, "POST", f"/uploads/{first['id']}/finish", push_token)[0] == 409  # 10 of 1000 bytes
    assert api(port, "DELETE", f"/uploads/{first['id']}", push_token)[0] == 200
    for bad in ({"kind": "bundle", "name": "b.phibox", "size": True}, {"kind": "exe", "name": "b.md", "size": 9},
                {"kind": "document", "name": "../../etc/passwd", "size": 9}):
        assert api(port, "POST", "/uploads", push_token, json_body=bad)[0] == 400, bad
    status, second = api(port, "POST", "/uploads", push_token, json_body={"kind": "bundle", "name": "b.phibox",
                                                                           "size": 1000})
    assert status == 200
    api(port, "DELETE", f"/uploads/{second['id']}", push_token)


def test_an_interrupted_push_resumes_where_it_stopped(lan, push_token, lifecycle_files, tmp_path: Path,
                                                      capsys) -> None:
    import hashlib

    port, state, v4 = lan["port"], lan["state"], lifecycle_files["v4"]
    data = v4.read_bytes()
    status, up = api(port, "POST", "/uploads", push_token, json_body={
        "kind": "bundle", "name": v4.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    assert status == 200
    first = min(up["piece_bytes"], len(data) // 2)
    assert api(port, "PUT", f"/uploads/{up['id']}?offset=0", push_token, body=data[:first])[0] == 200
    # a piece cut off by a dropped connection never reaches the device: the upload stays where it was
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"PUT /api/admin/uploads/" + up["id"].encode() + b"?offset=%d HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Authorization: Bearer " % first + push_token.encode() + b"\r\nContent-Length: 4000\r\n\r\n"
                 + b"y" * 1000)
    sock.close()
    time.sleep(0.5)
    assert api(port, "GET", f"/uploads/{up['id']}", push_token)[1]["received"] == first
    token_file = tmp_path / "token"
    token_file.write_text(push_token)
    assert main(["push", str(v4), "--to", f"http://127.0.0.1:{port}", "--token-file", str(token_file),
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"resuming the upload at {first} of {len(data)} bytes" in captured.err
    assert "v4 installed, health check ok" in captured.out and state.active_version() == 4
    assert not list(state.incoming.glob("upload-*"))


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_mode)
            for p in sorted(folder.rglob("*"))}


def test_the_running_device_never_writes_its_credentials(lifecycle_files, admin_keys, tmp_path: Path) -> None:
    """On the appliance the credentials are root's (/etc/phibox, read-only for the service): logins,
    logouts, pushes and API calls must work without writing there."""
    config = tmp_path / "etc-phibox"
    state = device_state(tmp_path / "state", lifecycle_files["v3"], admin_keys[1], config=config)
    admin_auth.set_password(state, PASSWORD)
    token_file = tmp_path / "token"
    token_file.write_text(admin_auth.new_token(state))
    key = admin_auth.new_api_key(state, "mes-line2")
    assert not list(state.root.glob("keys")) and (config / "admin.json").is_file()
    before = snapshot(config)
    proc, port = start_server(["--state", str(state.root)], env={"PHIBOX_CONFIG_DIR": str(config),
                                                                 "PHIBOX_API_KEYS": "required"})
    try:
        web = Browser(port)
        csrf = web.login()
        assert web.form("/admin/logout", {"csrf": csrf})[0] == 302
        assert web.request("GET", "/admin")[0] == 302  # the logout ended the session (state/sessions.json)
        assert v1(port, chat(), key)[0] == 200
        assert main(["push", str(lifecycle_files["v4"]), "--to", f"http://127.0.0.1:{port}",
                     "--token-file", str(token_file), "--no-progress"]) == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert snapshot(config) == before
    assert state.active_version() == 4


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand files to another owner")
def test_admin_commands_run_with_sudo_leave_files_the_service_can_read(tmp_path: Path) -> None:
    config, state_root = tmp_path / "etc-phibox", tmp_path / "state"
    config.mkdir()
    state_root.mkdir()
    os.chown(config, 0, 4242)  # root:phibox
    os.chown(state_root, 4242, 4242)  # phibox:phibox
    env_state = ["--state", str(state_root)]
    os.environ["PHIBOX_CONFIG_DIR"] = str(config)
    try:
        password = tmp_path / "pw"
        password.write_text(PASSWORD)
        assert main(["admin", "set-password", *env_state, "--password-file", str(password)]) == 0
        assert main(["admin", "new-token", *env_state, "--out", str(state_root / "push.token")]) == 0
    finally:
        del os.environ["PHIBOX_CONFIG_DIR"]
    for name in ("admin.json", "secret.key"):
        st = (config / name).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 4242, 0o640), name
    st = (state_root / "push.token").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4242, 4242, 0o600)


def lan_address() -> str | None:
    """This machine's address on its network (no packet is sent), or None without one."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


@pytest.mark.skipif(lan_address() is None, reason="this machine has no non-loopback address")
def test_metrics_from_the_lan_need_a_key_on_a_real_server(lan, lifecycle_files, admin_keys, tmp_path: Path) -> None:
    state = device_state(tmp_path / "state", lifecycle_files["v3"], admin_keys[1])
    key = admin_auth.new_api_key(state, "prometheus")
    proc, port = start_server(["--state", str(state.root), "--host", "0.0.0.0"])
    try:
        address = lan_address()
        conn = http.client.HTTPConnection(address, port, timeout=30)
        conn.request("GET", "/metrics")
        refused = conn.getresponse()
        assert refused.status == 403 and b"metrics_public" in refused.read()
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {key}"})
        allowed = conn.getresponse()
        assert allowed.status == 200 and b"phibox_requests_total" in allowed.read()
        conn.close()
        assert get(port, "/metrics")[0] == 200  # this machine
        conn = http.client.HTTPConnection(address, port, timeout=30)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(chat()), headers={"Content-Type":
                                                                                      "application/json"})
        assert conn.getresponse().status == 401  # listening beyond loopback: /v1 keys are required by default
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_degraded_kiosk_does_not_tell_the_lan_why(lifecycle_files, admin_keys, tmp_path: Path) -> None:
    state = device_state(tmp_path / "state", lifecycle_files["v4-broken"], admin_keys[1])  # nothing to fall back to
    proc, port = start_server(["--state", str(state.root)], states=("degraded",), timeout_s=300,
                              env={"PHIBOX_LOAD_ATTEMPTS": "1"})
    try:
        body = get(port, "/healthz")[2].decode()
        assert json.loads(body)["status"] == "degraded" and "admin page" in body
        assert str(state.root) not in body and "Error" not in body
    finally:
        proc.terminate()
        proc.wait(timeout=30)
