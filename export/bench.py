"""`phibox bench` measurements: phibox's paths side by side with the raw libraries, in one run.

The device is measured as technicians meet it: a `phibox serve` process, asked over HTTP, so every
answer goes through the device's one engine. Each reference is the raw library with none of
phibox's code, counting the same units:
- decode tokens/s: the API's streamed answer (its own token count over first-to-last chunk) vs a
  plain ``llama_cpp.Llama`` token loop / onnxruntime-genai's generator loop on the same file;
- time to first token of a RAG question, seen by the client: server reusing the system-prompt
  prefix vs a server told not to (``[engine] reuse_prefix = false``);
- retrieval: the device's vector search vs exact numpy over real embeddings, with recall@10
  (bench_retrieval.py);
- ingestion: the device's ONNX embedder vs sentence-transformers on torch, same passages;
- the server's peak RSS vs the model file.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

QUESTION = "Describe the maintenance of the hydraulic press in detail."
PROMPT = f"<|user|>\n{QUESTION}<|end|>\n<|assistant|>\n"
RAG_QUESTIONS = ["The press shows E42, what do I check?", "How tight are the conveyor motor bolts?",
                 "What cap torque does the capper use?", "Compressor fault A9, what do I do?",
                 "How do I clean the filler nozzles?", "Labeller shows L09, what now?"]


def raw_llama_decode(gguf: Path, tokens: int, threads: int, n_ctx: int, mmap: bool) -> float:
    """Decode tokens/s of a plain llama_cpp.Llama token loop (no phibox code) on the same prompt,
    with the server's context size and loading."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, use_mmap=mmap,
                verbose=False)
    try:
        llm.eval(llm.tokenize(PROMPT.encode(), add_bos=True, special=True))
        stamps = []
        for _ in range(tokens):
            token = llm.sample(top_k=1)
            llm.eval([token])
            stamps.append(time.perf_counter())
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])
    finally:
        llm.close()


def raw_genai_decode(onnx_dir: Path, tokens: int, threads: int) -> float:
    """Decode tokens/s of onnxruntime-genai alone (its own generator loop, threads set)."""
    import onnxruntime_genai as og

    config = og.Config(str(onnx_dir))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    ids = og.Tokenizer(model).encode(PROMPT)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + tokens, min_length=len(ids) + tokens, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    stamps = []
    while not gen.is_done():
        gen.generate_next_token()
        stamps.append(time.perf_counter())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def _post_stream(port: int, path: str, body: dict[str, Any]) -> tuple[float, list[tuple[float, bytes]]]:
    """(send time, [(arrival time, line)]) of a streamed POST."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    sent = time.perf_counter()
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    lines = [(time.perf_counter(), line) for line in response]
    conn.close()
    return sent, lines


def api_decode(port: int, model: str, tokens: int) -> float:
    """Decode tokens/s seen by a streaming client of /v1/chat/completions: the answer's tokens (the
    server's usage count) over the time from its first to its last content chunk."""
    body = {"model": model, "stream": True, "max_tokens": tokens, "min_tokens": tokens, "temperature": 0,
            "messages": [{"role": "user", "content": QUESTION}]}
    _, lines = _post_stream(port, "/v1/chat/completions", body)
    stamps = [t for t, line in lines if line.startswith(b"data: {") and b'"content": "' in line
              and b'"content": ""' not in line]
    # the stream carries text pieces, not tokens: count the answer's tokens as asked (min = max)
    return (tokens - 1) / (stamps[-1] - stamps[0])


def api_first_token_ms(port: int, model: str, question: str) -> float:
    """Client-side time from sending a RAG question to its first answer text."""
    body = {"model": model, "stream": True, "max_tokens": 2, "min_tokens": 1, "temperature": 0,
            "messages": [{"role": "user", "content": question}]}
    sent, lines = _post_stream(port, "/v1/chat/completions", body)
    first = next(t for t, line in lines if line.startswith(b"data: {") and b'"content": "' in line
                 and b'"content": ""' not in line)
    return (first - sent) * 1000


def kiosk_answer_ms(port: int, question: str) -> tuple[float, float, bool]:
    """A question asked the kiosk's way (/api/ask): (ms to the first answer text, ms to the done
    event, whether the answer was replayed from the answer cache)."""
    sent, lines = _post_stream(port, "/api/ask", {"question": question})
    first = next((t for t, line in lines if line.startswith(b"event: token")), lines[-1][0])
    done = next(i for i, (_, line) in enumerate(lines) if line.startswith(b"event: done"))
    payload = json.loads(lines[done + 1][1].decode()[len("data: "):])
    return (first - sent) * 1000, (lines[done][0] - sent) * 1000, bool(payload.get("cached"))


def repeated_question(where: list[str], threads: int) -> dict[str, float]:
    """The same kiosk question twice: generated the first time, replayed the second."""
    proc, port = start_server(where, "gguf", threads)
    try:
        first_ms, generated_ms, _ = kiosk_answer_ms(port, RAG_QUESTIONS[3])
        _, replayed_ms, cached = kiosk_answer_ms(port, RAG_QUESTIONS[3])
    finally:
        stop_server(proc)
    if not cached:
        raise RuntimeError("the repeated question was not replayed from the answer cache")
    return {"first_token_ms": first_ms, "generated_ms": generated_ms, "replayed_ms": replayed_ms}


def start_server(where: list[str], backend: str, threads: int, config: Path | None = None,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """`phibox serve` on a free loopback port (extra environment in env), once /healthz says ready."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    extra = ["--config", str(config)] if config else []
    proc = subprocess.Popen([sys.executable, "-m", "phibox.device.cli", "serve", *where, "--port", str(port),
                             "--backend", backend, "--threads", str(threads), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=None if env is None else {**os.environ, **env})
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if json.loads(conn.getresponse().read())["status"] == "ready":
                return proc, port
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the server did not become ready")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def status_mb(pid: int, field: str = "VmHWM") -> float:
    """A memory field of /proc/PID/status in MB: VmHWM (peak RSS) or VmRSS (now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ttft(where: list[str], model: str, threads: int, runs: int, config: Path, engine: dict[str, str]) -> float:
    """Median client-side time to first token of RAG questions from a server with these [engine]
    settings (TOML values, e.g. {"reuse_prefix": "false"}), written to config."""
    config.write_text("[engine]\n" + "".join(f"{key} = {value}\n" for key, value in engine.items()))
    proc, port = start_server(where, "gguf", threads, config)
    try:
        api_first_token_ms(port, model, RAG_QUESTIONS[0])  # warm-up
        times = [api_first_token_ms(port, model, RAG_QUESTIONS[(i + 1) % len(RAG_QUESTIONS)]) for i in range(runs)]
    finally:
        stop_server(proc)
    return statistics.median(times)


_EVIDENCE_SIDE = """
import json, re, statistics, sys
from pathlib import Path
from llama_cpp import Llama
from phibox.device.config import EngineConfig
from phibox.device.rag.budget import fit_prompt
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.retrieve import search
from phibox.device.rag.store import DocumentStore

db, bundle, qa, budget = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
vocab = Llama(str(next((bundle / "model").glob("*.gguf"))), vocab_only=True, verbose=False)
count = lambda text: len(vocab.tokenize(text.encode(), add_bos=False, special=True))
store, embedder = DocumentStore.open(db, readonly=True), OnnxEmbedder(bundle / "embedder")
tokens, kept = [], []
for line in qa.read_text().splitlines():
    pair = json.loads(line)
    hits = search(store, embedder, pair["question"], EngineConfig()).hits
    prompt, _, n = fit_prompt(pair["question"], hits, count, budget)
    answer = re.sub(r"\\[\\d+\\]", "", pair["answer"])
    terms = {w.lower() for w in re.findall(r"[\\w\\-./]+", answer) if any(c.isdigit() for c in w) or len(w) > 6}
    tokens.append(n)
    if terms:
        kept.append(sum(term in prompt.lower() for term in terms) / len(terms))
print(json.dumps({"median_tokens": statistics.median(tokens), "key_terms_kept": statistics.mean(kept)}))
"""


def prompt_evidence(db: Path, bundle: Path, qa: Path, budget: int) -> dict[str, float]:
    """Over a Q&A file's questions, as the device fits them (its own code, in a process of its own):
    the median RAG prompt's tokens (the model's own tokenizer) and the share of the answers' key
    terms (words with a digit, words of 7+ letters) the prompt holds: evidence kept per token spent."""
    out = subprocess.run([sys.executable, "-c", _EVIDENCE_SIDE, str(db), str(bundle), str(qa), str(budget)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def ingestion(embedder_dir: Path, source_dir: Path, manuals: Path, threads: int, n: int = 1000) -> dict[str, float]:
    """Chunks/s of the device's ONNX embedder vs sentence-transformers on torch, same passages."""
    from sentence_transformers import SentenceTransformer

    from phibox.device.rag.embedder import OnnxEmbedder

    rng = np.random.default_rng(1)
    words = " ".join(p.read_text(errors="ignore") for p in sorted(manuals.glob("*.md"))).split()
    passages = [" ".join(rng.choice(words, size=int(rng.integers(40, 120)))) for _ in range(n)]
    onnx = OnnxEmbedder(embedder_dir, threads)
    onnx.embed(passages[:32])
    t = time.perf_counter()
    a = onnx.embed(passages)
    onnx_rate = n / (time.perf_counter() - t)
    torch_model = SentenceTransformer(str(source_dir), device="cpu", local_files_only=True)
    torch_model.encode(passages[:32])
    t = time.perf_counter()
    b = torch_model.encode(passages, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    torch_rate = n / (time.perf_counter() - t)
    return {"onnx_chunks_s": onnx_rate, "torch_chunks_s": torch_rate, "min_cosine": float(np.sum(a * b, axis=1).min())}


def _phibox(*argv: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "phibox.device.cli", *argv], capture_output=True, text=True,
                          env=env, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"phibox {' '.join(argv[:2])} failed: {done.stdout[-500:]} {done.stderr[-800:]}")
    return done.stdout


def signed_gguf_bundles(bundle: Path, scratch: Path, versions: tuple[int, ...]) -> tuple[Path, list[Path]]:
    """The bundle folder's GGUF model and embedder as signed .phibox files of the given versions."""
    from phibox.device.bundle import Manifest, file_entry, generate_key, load_private_key
    from phibox.export.pack import write_bundle
    from phibox.export.pipeline import roles_for

    key = scratch / "bench.key"
    generate_key(key)
    old = Manifest.from_bytes((bundle / "manifest.json").read_bytes())
    rels = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*")
                  if p.is_file() and p.parts[len(bundle.parts)] in ("model", "embedder"))
    entries = tuple(file_entry(bundle, r, roles_for(r)) for r in rels)
    files = []
    for version in versions:
        manifest = Manifest(name=old.name, version=version, created_at=old.created_at,
                            min_device_version=old.min_device_version, base_model=old.base_model, files=entries,
                            formats=("gguf",), embedder=old.embedder, stop_tokens=old.stop_tokens)
        files.append(write_bundle(bundle, manifest, load_private_key(key), scratch / f"bench-v{version}.phibox",
                                  scratch))
    return key.with_suffix(".pub"), files


def activation_peaks(bundle: Path, threads: int, scratch: Path) -> dict[str, float]:
    """Peak RSS of the server during a live `phibox push` of the same model, once with room for two
    models (side by side) and once under a budget of its steady RSS + 64 MB (drain: at Phi-3-mini
    shape that is below the unit's MemoryMax=6G), next to its steady RSS after an answer."""
    pub, (v1, v2, v3, v4) = signed_gguf_bundles(bundle, scratch, (1, 2, 3, 4))
    state, token = scratch / "state", scratch / "push.token"
    _phibox("bundle", "trust", str(pub), "--state", str(state))
    _phibox("bundle", "install", str(v1), "--state", str(state), "--skip-health-check")
    _phibox("admin", "new-token", "--state", str(state), "--out", str(token))
    out: dict[str, float] = {}
    for way, new in (("side_by_side", v2), ("drain", v3)):
        budget = "0" if way == "side_by_side" else str(int(out["steady_mb"]) + 64)
        proc, port = start_server(["--state", str(state)], "gguf", threads,
                                  env={"PHIBOX_MEMORY_BUDGET_MB": budget})
        try:
            name = json.loads((bundle / "manifest.json").read_text())["name"]
            api_first_token_ms(port, f"phibox-{name}-norag", QUESTION)  # one answer: the KV cache is in use
            out["steady_mb"] = max(out.get("steady_mb", 0.0), status_mb(proc.pid, "VmRSS"))
            _phibox("push", str(new), "--to", f"http://127.0.0.1:{port}", "--token-file", str(token))
        finally:
            stop_server(proc)
        events = [json.loads(line) for line in (state / "events.jsonl").read_text().splitlines()]
        switched = next(e for e in reversed(events) if e["event"] == "model_switched")
        assert switched["way"] == way, switched
        out[f"{way}_peak_mb"] = float(switched["peak_rss_mb"])
        out[f"{way}_estimate_mb"] = float(switched["estimate_mb"])
    out["pull_peak_mb"] = pull_peak(state, v4, scratch, threads)
    return out


def pull_peak(state: Path, bundle_file: Path, scratch: Path, threads: int) -> float:
    """Peak RSS (MB) of a `phibox pull --through-server` process fetching bundle_file from a channel
    folder on a local HTTP server and handing it to the running kiosk (what phibox-pull.service does)."""
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from phibox.device.bundle import Manifest

    folder, key = scratch / "channel", scratch / "bench.key"
    name = Manifest.from_bytes((state / "current" / "manifest.json").read_bytes()).name
    _phibox("publish", str(bundle_file), "--key", str(key), "--dir", str(folder), "--channel", "bench")

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    files = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    proc, _ = start_server(["--state", str(state)], "gguf", threads)
    try:
        (state / "push.token").write_bytes((scratch / "push.token").read_bytes())
        with (scratch / "pull.out").open("wb") as out, (scratch / "pull.err").open("wb") as err:
            pull = subprocess.Popen([sys.executable, "-m", "phibox.device.cli", "pull",
                                     f"http://127.0.0.1:{files.server_address[1]}/", "--channel", "bench", "--state",
                                     str(state), "--through-server"], stdout=out, stderr=err)
        # VmHWM of the pull's own (exec'd) address space. Not wait4's ru_maxrss: a child's maxrss
        # starts from its parent's high-water mark at fork (here the bench's, a model loaded before).
        peak = 0.0
        while pull.poll() is None:
            try:
                peak = max(peak, status_mb(pull.pid))
            except OSError:
                break
            time.sleep(0.05)
        if pull.wait() != 0:
            raise RuntimeError(f"phibox pull failed: {(scratch / 'pull.err').read_text()[-800:]}")
        assert f"pulled and activated {name} v4" in (scratch / "pull.out").read_text()
    finally:
        stop_server(proc)
        files.shutdown()
    return peak
