"""The kiosk server for real: `phibox serve` (waitress) in a subprocess on 127.0.0.1, the tiny bundle,
the openai client, raw SSE, load, disconnects and hostile documents."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from docs_kit import write_corpus

from phibox.device.config import EngineConfig
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.ingest import ingest
from phibox.device.rag.store import DocumentStore

XSS_DOC = """# Guard door
<script>alert("doc")</script> Close the guard door before start. <img src=x onerror="alert('doc')"> Door switch DS-7.
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def post(port: int, path: str, body: object, timeout: float = 120, raw: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=raw if raw is not None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def sse_events(raw: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in raw.decode().split("\n\n"):
        lines = [ln for ln in block.splitlines() if not ln.startswith(":")]
        event = next((ln[7:] for ln in lines if ln.startswith("event: ")), "message")
        data = "".join(ln[6:] for ln in lines if ln.startswith("data: "))
        if data:
            events.append((event, json.loads(data)))
    return events


@pytest.fixture(scope="module")
def docs_db(tiny_bundle_dir: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve")
    corpus = write_corpus(folder / "manuals")
    (corpus / "guard.txt").write_text(XSS_DOC)  # plain text: the markup reaches the page as data
    store = DocumentStore.open(folder / "docs.db")
    ingest([corpus], store, OnnxEmbedder(tiny_bundle_dir / "embedder"), EngineConfig(), progress=False)
    store.close()
    return folder / "docs.db"


def start_server(args: list[str], states: tuple[str, ...] = ("ready",), timeout_s: float = 90,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """`phibox serve ARGS` on a free port (settings from env added to ours), once /healthz reports
    one of states."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "phibox.device.cli", "serve", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "server did not become ready"
        try:
            status, _, body = get(port, "/healthz", timeout=2)
            if status == 200 and json.loads(body)["status"] in states:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tiny_bundle_dir: Path, docs_db: Path):
    # long answers on purpose (the cancellation test needs one): above the default max_api_tokens
    proc, port = start_server(["--bundle", str(tiny_bundle_dir), "--db", str(docs_db), "--queue-size", "2",
                               "--backend", "gguf"], env={"PHIBOX_MAX_API_TOKENS": "3500",
                                                                  "PHIBOX_CONTEXT_WINDOW": "4096"})
    yield proc, port
    proc.terminate()
    proc.wait(timeout=30)


def test_runs_on_waitress_not_the_flask_dev_server(server) -> None:
    _, port = server
    status, headers, _ = get(port, "/healthz")
    assert status == 200 and headers["Server"] == "phibox" and "Werkzeug" not in headers["Server"]


def test_openai_client_streamed_and_not(server, no_stop) -> None:
    from openai import OpenAI

    _, port = server
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="not-needed", max_retries=0)
    models = [m.id for m in client.models.list().data]
    assert models == ["phibox-plant7", "phibox-plant7-norag"]
    reply = client.chat.completions.create(model="phibox-plant7",
                                           messages=[{"role": "user", "content": "The press shows E42, what now?"}])
    assert reply.choices[0].message.content and reply.choices[0].finish_reason == "stop"
    assert reply.model_extra["passages"][0]["source"] == "press.md" and "citations" in reply.model_extra
    chunks = list(client.chat.completions.create(
        model="phibox-plant7-norag", messages=[{"role": "user", "content": "What do I do for fault E31?"}],
        stream=True, max_tokens=30))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip() == "Bleed air from the press pump." and chunks[-1].choices[0].finish_reason == "stop"
    capped = client.chat.completions.create(model="phibox-plant7-norag", max_tokens=5, logit_bias=no_stop,
                                            messages=[{"role": "user", "content": "Tell me about the press."}])
    assert capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens == 5
    stopped = client.chat.completions.create(model="phibox-plant7-norag", stop=["pump"], max_tokens=30,
                                             messages=[{"role": "user", "content": "What do I do for fault E31?"}])
    assert stopped.choices[0].message.content == "Bleed air from the press"


def test_api_ask_streams_passages_tokens_then_citations(server) -> None:
    _, port = server
    status, headers, raw = post(port, "/api/ask", {"question": "What do I do when the press shows E42?"})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    kinds = [k for k, _ in events]
    assert kinds[0] == "passages" and kinds[-1] == "done" and kinds.count("token") >= 2
    assert set(kinds[1:-1]) == {"token"}
    done = events[-1][1]
    assert done["text"] == "".join(d["text"] for k, d in events if k == "token").strip()
    assert "citations" in done and done["timings"]["first_token_ms"] is not None
    assert events[0][1]["passages"][0]["source"] == "press.md"


def test_not_covered_questions_answer_without_the_model(server) -> None:
    _, port = server
    _, _, raw = post(port, "/api/ask", {"question": "Who won the football world cup in 1954?"})
    events = sse_events(raw)
    assert events[0][1]["covered"] is False and events[0][1]["passages"], "the closest passages, marked as such"
    assert [k for k, _ in events] == ["passages", "token", "done"] and events[-1][1]["covered"] is False
    _, _, body = get(port, "/api/search?q=Who+won+the+football+world+cup+in+1954%3F")
    assert json.loads(body)["covered"] is False


def test_bad_input_gets_clear_errors_and_the_server_keeps_serving(server) -> None:
    _, port = server
    assert post(port, "/api/ask", {"question": "   "})[0] == 400
    status, _, body = post(port, "/api/ask", {"question": "x" * 1001})
    assert status == 413 and "limit is 1000" in json.loads(body)["error"]
    assert post(port, "/api/ask", None, raw=b"{not json")[0] == 400
    status, _, body = post(port, "/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user",
                                                                                          "content": "hi"}]})
    error = json.loads(body)["error"]
    assert status == 404 and error["code"] == "model_not_found" and error["param"] == "model"
    status, _, body = post(port, "/v1/chat/completions", {"model": "phibox-plant7", "messages": "hi"})
    assert status == 400 and json.loads(body)["error"]["param"] == "messages"
    assert get(port, "/api/search?q=")[0] == 400
    assert get(port, "/healthz")[0] == 200


def test_load_gets_503_with_retry_after_and_leaks_nothing(server, no_stop) -> None:
    proc, port = server

    def resources() -> tuple[int, int]:
        threads = int(next(ln.split()[1] for ln in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                           if ln.startswith("Threads:")))
        return threads, len(os.listdir(f"/proc/{proc.pid}/fd"))

    before = resources()
    body = {"model": "phibox-plant7-norag", "max_tokens": 300, "logit_bias": no_stop,
            "messages": [{"role": "user", "content": "Describe the plant."}]}
    health: list[int] = []

    def one(_: int) -> tuple[int, dict[str, str], bytes]:
        return post(port, "/v1/chat/completions", body, timeout=300)

    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(one, i) for i in range(10)]
        while not all(f.done() for f in futures):
            started = time.monotonic()
            status, _, _ = get(port, "/healthz", timeout=5)
            health.append(status)
            assert time.monotonic() - started < 2, "/healthz was slow under load"
            time.sleep(0.2)
        results = [f.result() for f in futures]
    accepted = [r for r in results if r[0] == 200]
    rejected = [r for r in results if r[0] == 503]
    assert len(accepted) + len(rejected) == 10 and rejected and len(accepted) >= 3
    assert all(int(r[1]["Retry-After"]) > 0 and json.loads(r[2])["error"]["code"] == "queue_full" for r in rejected)
    assert all(json.loads(r[2])["usage"]["completion_tokens"] == 300 for r in accepted)
    assert health and set(health) == {200}
    time.sleep(1.0)
    after = resources()
    assert after[0] <= before[0] + 2 and after[1] <= before[1] + 2, (before, after)
    metrics = get(port, "/metrics")[2].decode()
    assert 'phibox_rejections_total{reason="queue_full"}' in metrics
    assert "phibox_time_to_first_token_seconds_bucket" in metrics and "phibox_queue_depth 0.0" in metrics


def test_disconnect_cancels_the_generation_and_the_next_one_starts(server, no_stop) -> None:
    _, port = server
    long_body = {"model": "phibox-plant7-norag", "max_tokens": 3500, "logit_bias": no_stop, "stream": True,
                 "messages": [{"role": "user", "content": "Describe the plant."}]}
    payload = json.dumps(long_body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
    reader = sock.makefile("rb")
    started = time.monotonic()
    received = 0
    while time.monotonic() - started < 1.0:
        received += reader.readline().startswith(b"data: {")
    rate = received / (time.monotonic() - started)
    full_duration = 3500 / max(rate, 1e-9)
    reader.close()
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    closed_at = time.monotonic()
    status, _, _ = post(port, "/v1/chat/completions", {"model": "phibox-plant7-norag", "max_tokens": 20,
                                                         "messages": [{"role": "user", "content": "Fault E31?"}]})
    next_done = time.monotonic() - closed_at
    assert status == 200
    assert full_duration > 4 * next_done, (rate, full_duration, next_done)


def test_hostile_documents_stay_inert_in_the_page_and_api(server) -> None:
    _, port = server
    status, headers, html = get(port, "/?q=guard+door+switch+DS-7")
    page = html.decode()
    assert status == 200 and "&lt;script&gt;alert(&#34;doc&#34;)&lt;/script&gt;" in page
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert not any(s in page for s in ("http://", "https://")), "the page must not load anything from elsewhere"
    js = get(port, "/static/kiosk.js")[2].decode()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js
    _, _, raw = get(port, "/api/search?q=guard+door+switch+DS-7")
    assert '<script>alert(\\"doc\\")</script>' in raw.decode()  # plain data in JSON; the page sets textContent


def test_a_repeated_question_replays_the_earlier_answer_marked_and_counted(server) -> None:
    _, port = server
    question = "How often is the hydraulic oil of the press changed?"
    first = sse_events(post(port, "/api/ask", {"question": question})[2])
    same = "how OFTEN is the hydraulic oil of the press changed?  "  # case and spacing make no other question
    again = sse_events(post(port, "/api/ask", {"question": same})[2])
    done_first, done_again = first[-1][1], again[-1][1]
    assert first[-1][0] == again[-1][0] == "done"
    assert done_first["cached"] is False and done_again["cached"] is True
    assert done_again["text"] == done_first["text"] and done_again["citations"] == done_first["citations"]
    assert [d["passages"] for kind, d in again if kind == "passages"] == [
        d["passages"] for kind, d in first if kind == "passages"]
    assert "".join(d["text"] for kind, d in again if kind == "token") == done_first["text"]
    assert done_again["timings"]["generated_tokens"] == done_first["timings"]["generated_tokens"]
    metrics = get(port, "/metrics")[2].decode()
    assert 'phibox_answer_cache_total{result="hit"}' in metrics
    hits = float(metrics.split('phibox_answer_cache_total{result="hit"} ')[1].split()[0])
    assert hits >= 1
