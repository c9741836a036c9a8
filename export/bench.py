"""`phibox bench` (make bench): phibox's paths measured side by side with the raw libraries, in one run.

Rows: decode tokens/s through the HTTP API vs raw llama-cpp-python and raw onnxruntime-genai; time
to first token with and without the reused system-prompt prefix; retrieval p50/p95 at 10k and 100k
chunks (sqlite-vec vs exact numpy, recall@10); ingestion chunks/s (ONNX embedder vs
sentence-transformers on torch, min cosine); the server's peak RSS vs the model file. The table is
printed and written as JSON. By default it measures the demo bundle (tiny model: speed ratios are
meaningful, absolute speeds are not); --phi3-mini-shape measures a random-weight model of
Phi-3-mini's exact shape.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PROMPT = "<|user|>\nDescribe the maintenance of the hydraulic press in detail.<|end|>\n<|assistant|>\n"


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def raw_llama_decode(gguf: Path, tokens: int, threads: int) -> float:
    """Decode tokens/s of llama-cpp-python alone on the same file and prompt."""
    from device.backends import LlamaCppBackend

    backend = LlamaCppBackend(gguf, 2048, threads)
    try:
        return _decode_rate(backend.generate(PROMPT, tokens, min_new_tokens=tokens))
    finally:
        backend.close()


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


def _decode_rate(pieces) -> float:
    stamps = [time.perf_counter() for _ in pieces]
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def api_decode(port: int, model: str, tokens: int) -> float:
    """Decode tokens/s seen by a streaming client of /v1/chat/completions."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = {"model": model, "stream": True, "max_tokens": tokens, "min_tokens": tokens, "temperature": 0,
            "messages": [{"role": "user", "content": "Describe the maintenance of the hydraulic press in detail."}]}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    stamps = []
    for line in response:
        if line.startswith(b"data: {") and b'"content": "' in line.replace(b'":"', b'": "'):
            stamps.append(time.perf_counter())
    conn.close()
    return (len(stamps) - 2) / (stamps[-1] - stamps[1])  # from the first token to the last


def start_server(where: list[str], backend: str, threads: int) -> tuple[subprocess.Popen, int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "device.cli", "serve", *where, "--port", str(port),
                             "--backend", backend, "--threads", str(threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ttft(bundle: Path, db: Path, threads: int, runs: int = 5) -> tuple[float, float]:
    """Median time to first token of RAG questions with and without the reused prompt prefix (gguf)."""
    from device.answer import Engine
    from device.backends import LlamaCppBackend
    from device.config import EngineConfig
    from device.embedder import OnnxEmbedder
    from device.installed import InstalledBundle
    from device.store import DocumentStore

    b = InstalledBundle.open(bundle)
    cfg = EngineConfig(threads=threads, max_new_tokens=4)
    backend = LlamaCppBackend(b.gguf_path(), cfg.context_window, threads)
    store = DocumentStore.open(db, readonly=True)
    engine = Engine(store, OnnxEmbedder(b.embedder_dir, threads), backend, cfg)
    questions = ["The press shows E42, what do I check?", "How tight are the conveyor motor bolts?",
                 "What cap torque does the capper use?", "Compressor fault A9, what do I do?",
                 "How do I clean the filler nozzles?", "Labeller shows L09, what now?"]
    results: dict[bool, list[float]] = {True: [], False: []}
    try:
        list(engine.answer(questions[0], min_new_tokens=2))  # warm-up
        for i in range(runs):
            for reuse in (False, True):
                q = questions[(i + 1) % len(questions)]
                list(engine.answer(questions[i % len(questions)], reuse_prefix=True, min_new_tokens=2))
                done = list(engine.answer(q, reuse_prefix=reuse, min_new_tokens=2))[-1].data
                results[reuse].append(done.timings.first_token_ms)
    finally:
        backend.close()
        store.close()
    return statistics.median(results[False]), statistics.median(results[True])


def retrieval(n: int, dim: int = 384, queries: int = 50, k: int = 10) -> dict[str, float]:
    """sqlite-vec KNN (phibox's vector path) vs exact numpy on the same random unit vectors."""
    from device import db

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as tmp:
        conn = db.connect(Path(tmp) / "bench.db")
        conn.execute(f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{dim}])")
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO v(rowid, embedding) VALUES (?, ?)",
                         ((i, struct.pack(f"{dim}f", *vec)) for i, vec in enumerate(vectors)))
        conn.execute("COMMIT")
        q = rng.standard_normal((queries, dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        sq, sn, recalls = [], [], []
        for query in q:
            t = time.perf_counter()
            got = [r[0] for r in conn.execute("SELECT rowid FROM v WHERE embedding MATCH ? AND k = ? ORDER BY distance",
                                              (struct.pack(f"{dim}f", *query), k))]
            sq.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            exact = np.argpartition(-(vectors @ query), k)[:k]
            sn.append((time.perf_counter() - t) * 1000)
            recalls.append(len(set(got) & set(exact.tolist())) / k)
        conn.close()
    return {"vec_p50_ms": _percentile(sq, 50), "vec_p95_ms": _percentile(sq, 95), "numpy_p50_ms": _percentile(sn, 50),
            "numpy_p95_ms": _percentile(sn, 95), "recall_at_10": float(np.mean(recalls))}


def ingestion(embedder_dir: Path, source_dir: Path, threads: int, n: int = 1000) -> dict[str, float]:
    """Chunks/s of phibox's ONNX embedder vs sentence-transformers on torch, same passages."""
    from sentence_transformers import SentenceTransformer

    from device.embedder import OnnxEmbedder

    rng = np.random.default_rng(1)
    words = " ".join(p.read_text(errors="ignore") for p in sorted(Path(__file__).resolve().parent.parent
                                                                    .joinpath("demo", "manuals").glob("*.md"))).split()
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


def real_size_bundle(demo_bundle: Path, say=print) -> Path:
    """A bundle folder with a random-weight Phi-3-mini-shaped Q4_K_M GGUF and a 16-layer ONNX int4
    slice (the ONNX builder needs more than 24 GB for all 32 layers), built once and cached."""
    import shutil

    from device.bundle import Embedder, Manifest, file_entry
    from device.paths import cache_root
    from export.gguf import convert_to_gguf, quantize_gguf
    from export.llama_kit import find_kit
    from export.onnx_genai import build_onnx_genai
    from export.pipeline import roles_for
    from train.tiny_phi3 import PHI3_MINI_16_LAYERS, PHI3_MINI_SHAPE, ensure_tiny_phi3, recipe_key

    root = cache_root() / "bench" / f"phi3-mini-shape-{recipe_key(PHI3_MINI_SHAPE)}"
    if (root / "manifest.json").is_file():
        return root
    work = root.with_name(root.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    (work / "model").mkdir(parents=True)
    say("building a random-weight model of Phi-3-mini's shape (3.8 B parameters, ~7.6 GB, once) ...")
    full = ensure_tiny_phi3(spec=PHI3_MINI_SHAPE)
    say("converting to GGUF and quantizing to Q4_K_M (minutes) ...")
    f16 = convert_to_gguf(find_kit(), full, work / "f16.gguf", model_name="phi3-mini-shape")
    quantize_gguf(f16, work / "model" / "phi3-q4_k_m.gguf", "Q4_K_M")
    f16.unlink()
    say("building the ONNX int4 model of a 16-layer slice (about 15 GB of RAM) ...")
    build_onnx_genai(ensure_tiny_phi3(spec=PHI3_MINI_16_LAYERS), work / "onnx")
    shutil.copytree(demo_bundle / "embedder", work / "embedder")
    rels = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
    spec = json.loads((work / "embedder" / "embedder.json").read_text())
    manifest = Manifest(name="phi3-mini-shape", version=1, created_at="2026-01-01T00:00:00Z",
                        min_device_version="0.1.0", base_model="random weights, Phi-3-mini shape",
                        files=tuple(file_entry(work, r, roles_for(r)) for r in rels), formats=("gguf", "onnx"),
                        embedder=Embedder(spec["id"], spec["dim"]), stop_tokens=("<|end|>", "<|endoftext|>"))
    (work / "manifest.json").write_bytes(manifest.to_bytes())  # benchmark folder: served with --bundle, unsigned
    work.rename(root)
    return root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"), help="where to write the JSON")
    parser.add_argument("--demo-dir", type=Path, default=Path(".demo"), help="demo build to measure (made if absent)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per decode measurement")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--sizes", default="10000,100000", help="retrieval sizes in chunks")
    parser.add_argument("--phi3-mini-shape", action="store_true",
                        help="measure the model rows on a random-weight model of Phi-3-mini's exact shape")


def run(args: argparse.Namespace) -> int:
    from export.demo import build
    from export.embedder import default_embedder_dir

    info = build(args.demo_dir)
    state = Path(info["state"])
    bundle = (state / "current").resolve()
    where = ["--state", str(state)]
    model_label = "demo tiny Phi-3 (speed ratios meaningful, absolute speeds not)"
    if args.phi3_mini_shape:
        bundle = real_size_bundle(bundle)
        where = ["--bundle", str(bundle), "--db", str(state / "documents.db")]
        model_label = "random weights of Phi-3-mini's shape (3.8 B); ONNX rows: 16 of its 32 layers"
    gguf = next((bundle / "model").glob("*.gguf"))
    rows: list[dict[str, Any]] = []

    def row(name: str, phibox: float, reference: float, unit: str, note: str = "") -> None:
        rows.append({"measure": name, "phibox": round(phibox, 3), "reference": round(reference, 3), "unit": unit,
                     "ratio": round(phibox / reference, 3) if reference else None, "note": note})
        print(f"  {name}: phibox {phibox:.3f} vs {reference:.3f} {unit}", flush=True)

    print("decode through the HTTP API vs the raw runtimes ...", flush=True)
    for backend, raw in (("gguf", lambda: raw_llama_decode(gguf, args.tokens, args.threads)),
                         ("onnx", lambda: raw_genai_decode(bundle / "onnx", args.tokens, args.threads))):
        proc, port = start_server(where, backend, args.threads)
        try:
            model = f"phibox-{json.loads((bundle / 'manifest.json').read_text())['name']}-norag"
            api = statistics.median(api_decode(port, model, args.tokens) for _ in range(3))
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        reference = statistics.median(raw() for _ in range(3))
        runtime = "llama-cpp-python" if backend == "gguf" else "onnxruntime-genai"
        row(f"decode tokens/s, {backend}: HTTP API vs raw {runtime}", api, reference, "tokens/s")
        if backend == "gguf":
            row("device server peak RSS vs GGUF file size", rss, gguf.stat().st_size / 2**20, "MB",
                "whole server: model, embedder, Flask, waitress")
    print("time to first token of a RAG question ...", flush=True)
    cold, warm = ttft(bundle, state / "documents.db", args.threads, runs=2 if args.phi3_mini_shape else 5)
    row("time to first token, reused system-prompt prefix vs none", warm, cold, "ms")
    for n in (int(s) for s in args.sizes.split(",")):
        print(f"retrieval over {n} chunks ...", flush=True)
        r = retrieval(n)
        row(f"retrieval p50, {n} chunks: sqlite-vec vs exact numpy", r["vec_p50_ms"], r["numpy_p50_ms"], "ms",
            f"recall@10 {r['recall_at_10']:.3f}")
        row(f"retrieval p95, {n} chunks: sqlite-vec vs exact numpy", r["vec_p95_ms"], r["numpy_p95_ms"], "ms")
    print("ingestion embedding speed ...", flush=True)
    e = ingestion(bundle / "embedder", default_embedder_dir(), args.threads)
    row("ingestion chunks/s: ONNX embedder vs sentence-transformers (torch)", e["onnx_chunks_s"], e["torch_chunks_s"],
        "chunks/s", f"min cosine {e['min_cosine']:.6f}")
    result = {"model": model_label, "threads": args.threads, "rows": rows}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\n{'measure':<66} {'phibox':>10} {'reference':>10} {'ratio':>7}  unit / note")
    for r in rows:
        print(f"{r['measure']:<66} {r['phibox']:>10.2f} {r['reference']:>10.2f} {r['ratio'] or 0:>7.2f}  "
              f"{r['unit']} {r['note']}")
    print(f"\nwritten to {args.out}")
    return 0
