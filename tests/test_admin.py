"""The admin area and live activation on a real server (waitress, subprocess) over a state directory."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from docs_kit import write_corpus
from test_serve import get, post, start_server

from phibox.device.cli.main import main
from phibox.device.config import EngineConfig
from phibox.device.lifecycle import installer
from phibox.device.lifecycle.state import StateDir
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.ingest import ingest
from phibox.device.rag.store import DocumentStore
from phibox.device.service import DeviceService
from phibox.device.web import auth as admin_auth
from phibox.device.web.app import create_app
from phibox.device.web.metrics import Metrics
from phibox.device.web.settings import ServeConfig

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def device(lifecycle_files, admin_keys, tiny_bundle_dir: Path, tmp_path_factory):
    """A state directory with v3 active, manuals indexed, a password and an API token; the server on it."""
    root = tmp_path_factory.mktemp("device") / "state"
    state = StateDir(root).init()
    shutil.copy(admin_keys[1], state.keys / "admin.pub")
    installer.install(lifecycle_files["v3"], state)
    store = DocumentStore.open(state.db)
    ingest([write_corpus(root.parent / "manuals")], store, OnnxEmbedder(tiny_bundle_dir / "embedder"),
           EngineConfig(), progress=False)
    store.close()
    admin_auth.set_password(state, PASSWORD)
    token_file = root.parent / "token"
    assert main(["admin", "new-token", "--state", str(root), "--out", str(token_file)]) == 0
    proc, port = start_server(["--state", str(root), "--queue-size", "2", "--backend", "gguf"],
                              # a long answer to push under
                              env={"PHIBOX_MAX_API_TOKENS": "1500", "PHIBOX_CONTEXT_WINDOW": "4096"})
    yield {"state": state, "port": port, "token": token_file, "proc": proc}
    proc.terminate()
    proc.wait(timeout=30)


class Browser:
    """A cookie-keeping HTTP client, enough for the admin forms."""

    def __init__(self, port: int) -> None:
        self.port, self.cookie = port, ""

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            h = {"Cookie": self.cookie} if self.cookie else {}
            conn.request(method, path, body=body, headers={**h, **(headers or {})})
            r = conn.getresponse()
            data = r.read()
            cookie = r.getheader("Set-Cookie")
            if cookie:
                self.cookie = cookie.split(";", 1)[0]
            return r.status, dict(r.getheaders()), data.decode(errors="replace")
        finally:
            conn.close()

    def form(self, path: str, fields: dict[str, str]):
        from urllib.parse import urlencode

        return self.request("POST", path, urlencode(fields).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded"})

    def csrf(self, page: str) -> str:
        return re.search(r'name="csrf" value="([^"]+)"', page).group(1)

    def upload(self, csrf: str, kind: str, name: str, data: bytes) -> tuple[int, dict]:
        """What the admin page's script does: declare, send in pieces, finish."""
        headers = {"X-CSRF-Token": csrf, "Content-Type": "application/json"}
        status, _, raw = self.request("POST", "/admin/uploads", json.dumps(
            {"kind": kind, "name": name, "size": len(data)}).encode(), headers)
        body = json.loads(raw)
        if status != 200:
            return status, body
        offset, piece = body["received"], body["piece_bytes"]
        while offset < len(data):
            status, _, raw = self.request("PUT", f"/admin/uploads/{body['id']}?offset={offset}",
                                          data[offset : offset + piece],
                                          {"X-CSRF-Token": csrf, "Content-Type": "application/octet-stream"})
            if status != 200:
                return status, json.loads(raw)
            offset = json.loads(raw)["received"]
        status, _, raw = self.request("POST", f"/admin/uploads/{body['id']}/finish", None, {"X-CSRF-Token": csrf})
        return status, json.loads(raw)

    def login(self) -> str:
        _, _, page = self.request("GET", "/admin/login")
        status, headers, _ = self.form("/admin/login", {"csrf": self.csrf(page), "password": PASSWORD})
        assert status == 302 and headers["Location"].endswith("/admin")
        _, _, admin_page = self.request("GET", "/admin")
        return self.csrf(admin_page)


def test_admin_routes_need_a_session_and_csrf(device) -> None:
    web = Browser(device["port"])
    status, headers, _ = web.request("GET", "/admin")
    assert status == 302 and headers["Location"].endswith("/admin/login")
    assert web.request("POST", "/admin/bundles/rollback")[0] == 401
    _, _, login_page = web.request("GET", "/admin/login")
    assert web.form("/admin/login", {"password": PASSWORD})[0] == 400  # no CSRF token
    assert web.form("/admin/login", {"csrf": web.csrf(login_page), "password": PASSWORD})[0] == 302
    assert web.form("/admin/bundles/rollback", {"csrf": "forged"})[0] == 400


def test_session_cookie_is_httponly_and_samesite_strict(device) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", device["port"], timeout=30)
    conn.request("GET", "/admin/login")
    cookie = conn.getresponse().getheader("Set-Cookie")
    conn.close()
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and cookie.startswith("phibox_admin=")


def test_push_with_a_wrong_token_is_401(device, lifecycle_files, tmp_path: Path, capsys) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token")
    rc = main(["push", str(lifecycle_files["v4"]), "--to", f"http://127.0.0.1:{device['port']}",
               "--token-file", str(wrong)])
    assert rc == 1 and "refused (401)" in capsys.readouterr().out
    assert device["state"].active_version() == 3


def test_unloadable_bundle_is_rolled_back_and_shown_to_admins(device, lifecycle_files, capsys) -> None:
    rc = main(["push", str(lifecycle_files["v4-broken"]), "--to", f"http://127.0.0.1:{device['port']}",
               "--token-file", str(device["token"])])
    out = capsys.readouterr().out
    assert rc == 1 and "failed its health check" in out and "version 3 stays active" in out
    assert device["state"].active_version() == 3
    assert json.loads(get(device["port"], "/healthz")[2])["bundle_version"] == 3
    web = Browser(device["port"])
    web.login()
    assert "health_check_failed" in web.request("GET", "/admin")[2]


def test_oversized_and_truncated_uploads_change_nothing(device) -> None:
    """Nothing big is accepted before the token is checked, nor more than one piece per request."""
    port = device["port"]
    token = device["token"].read_text().strip().encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"PUT /api/admin/uploads/abc?offset=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Length: 99999999999\r\n\r\n")
    reply = sock.recv(4096).decode()
    sock.close()
    assert reply.startswith("HTTP/1.1 413")  # waitress's own cap: one piece, before any byte is stored
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/api/admin/uploads", json.dumps({"kind": "bundle", "name": "big.phibox",
                                                           "size": 99999999999}),
                 {"Authorization": f"Bearer {token.decode()}", "Content-Type": "application/json"})
    reply = conn.getresponse()
    assert reply.status == 413 and "the limit is 8192 MB" in json.loads(reply.read())["error"]
    conn.close()
    time.sleep(0.5)
    assert device["state"].active_version() == 3 and not list(device["state"].incoming.iterdir())
    assert get(port, "/healthz")[0] == 200


def test_activation_during_a_generation_lets_it_finish_then_the_new_bundle_answers(device, lifecycle_files,
                                                                                   hf_tokenizer, capsys) -> None:
    port = device["port"]
    no_stop = {str(hf_tokenizer.convert_tokens_to_ids(t)): -100 for t in ("<|end|>", "<|endoftext|>")}
    result: dict = {}

    def long_generation() -> None:
        result["reply"] = post(port, "/v1/chat/completions", {
            "model": "phibox-plant7-norag", "max_tokens": 1200, "logit_bias": no_stop,
            "messages": [{"role": "user", "content": "Describe the plant."}]}, timeout=300)

    worker = threading.Thread(target=long_generation)
    worker.start()
    deadline = time.monotonic() + 30
    while not json.loads(get(port, "/healthz")[2])["generating"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rc = main(["push", str(lifecycle_files["v4"]), "--to", f"http://127.0.0.1:{port}",
               "--token-file", str(device["token"])])
    assert rc == 0 and "v4 installed, health check ok" in capsys.readouterr().out
    assert json.loads(get(port, "/healthz")[2])["generating"], "the push should land while the answer runs"
    worker.join(300)
    status, _, raw = result["reply"]
    assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 1200
    health = json.loads(get(port, "/healthz")[2])
    assert health["bundle_version"] == 4 and device["state"].active_version() == 4
    _, _, raw = post(port, "/api/ask", {"question": "What do I do when the press shows E42?"})
    assert b'"covered": true' in raw and b"event: done" in raw


def test_admin_page_rollback_and_documents(device, tmp_path: Path) -> None:
    web = Browser(device["port"])
    csrf = web.login()
    page = web.request("GET", "/admin")[2]
    assert "Bundles" in page and "press.md" in page and "(active)" in page
    status, _, _ = web.form("/admin/bundles/rollback", {"csrf": csrf})
    assert status == 302 and device["state"].active_version() == 3
    assert json.loads(get(device["port"], "/healthz")[2])["bundle_version"] == 3
    doc = b"# Palletizer PZ-9\n\nThe stretch wrapper film roll is changed with the safety key SK-12 removed.\n"
    status, body = web.upload(csrf, "document", "palletizer.md", doc)
    assert status == 200 and body == {"saved": "palletizer.md", "reindexing": True}, body
    deadline = time.monotonic() + 60
    while json.loads(web.request("GET", "/admin/documents/progress")[2])["running"] or \
            "added 1" not in json.loads(web.request("GET", "/admin/documents/progress")[2])["message"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    hits = json.loads(get(device["port"], "/api/search?q=stretch+wrapper+film+SK-12")[2])["passages"]
    assert hits and hits[0]["source"] == "palletizer.md"


def test_repeated_bad_passwords_get_429(lifecycle_files, admin_keys, tiny_bundle_dir: Path, tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state").init()
    shutil.copy(admin_keys[1], state.keys / "admin.pub")
    installer.install(lifecycle_files["v3"], state)
    admin_auth.set_password(state, PASSWORD)
    service = DeviceService(state.current.resolve(), state.db, EngineConfig(), Metrics(), state=state)
    client = create_app(service, ServeConfig()).test_client()
    page = client.get("/admin/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    codes = [client.post("/admin/login", data={"csrf": csrf, "password": "wrong"}).status_code for _ in range(6)]
    assert codes[:5] == [403] * 5 and codes[5] == 429
    blocked = client.post("/admin/login", data={"csrf": csrf, "password": PASSWORD})
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0


def test_new_embedder_triggers_a_background_reembed_and_search_keeps_working(
        lifecycle_files, admin_keys, tiny_bundle_dir: Path, tmp_path: Path) -> None:
    from bundle_kit import resign

    state = StateDir(tmp_path / "state").init()
    shutil.copy(admin_keys[1], state.keys / "admin.pub")
    installer.install(lifecycle_files["v3"], state)
    store = DocumentStore.open(state.db)
    ingest([write_corpus(tmp_path / "manuals")], store, OnnxEmbedder(tiny_bundle_dir / "embedder"), EngineConfig(),
           progress=False)
    store.close()

    def rename_embedder(folder: Path) -> None:
        spec = folder / "embedder" / "embedder.json"
        spec.write_text(spec.read_text().replace("sentence-transformers/all-MiniLM-L6-v2", "minilm-retrained"))

    v4 = resign(tiny_bundle_dir, tmp_path / "plant7-v4.phibox", admin_keys[0], 4, edit=rename_embedder,
                scratch=tmp_path)
    service = DeviceService(state.current.resolve(), state.db, EngineConfig(), Metrics(), state=state)
    service.start(background=False)
    try:
        installer.install(v4, state, health_check=service.activate)
        assert service.engine.search("press E42").hits, "keyword search must answer while vectors are rebuilt"
        deadline = time.monotonic() + 120
        while service.reembedding.is_set() or not any(e["event"] == "reembedded" for e in state.recent_events()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        store = DocumentStore.open(state.db, readonly=True)
        assert store.embedder() == ("minilm-retrained", 384)
        assert store.counts()["vectors"] == store.counts()["chunks"] > 0
        store.close()
        hit = service.engine.search("The oil pressure dropped and the press halted").hits[0]
        assert hit.similarity is not None and hit.source == "press.md"
    finally:
        service.close()
