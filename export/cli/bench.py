"""`phibox bench` (make bench): phibox's paths measured side by side with the raw libraries.

By default it measures the demo bundle (tiny model: speed ratios are meaningful, absolute speeds
are not); --phi3-mini-shape measures a random-weight model of Phi-3-mini's exact shape (built once
and cached, about 20 minutes). The table is printed and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from phibox.device.config import EngineConfig
from phibox.device.errors import ConfigError
from phibox.export import bench, bench_export, bench_retrieval


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"), help="where to write the JSON")
    parser.add_argument("--demo-dir", type=Path, default=Path(".demo"), help="demo build to measure (made if absent)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per decode measurement")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--sizes", default="10000,100000", help="retrieval sizes in chunks")
    parser.add_argument("--phi3-mini-shape", action="store_true",
                        help="measure the model rows on a random-weight model of Phi-3-mini's exact shape")
    parser.add_argument("--onnx-full", action="store_true",
                        help="with --phi3-mini-shape: also watch the build box's RAM during a real-size export "
                             "(the ONNX step vs the stock builder, then the whole export; about 25 minutes)")


class Table:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def row(self, name: str, phibox: float, reference: float, unit: str, note: str = "") -> None:
        self.rows.append({"measure": name, "phibox": round(phibox, 3), "reference": round(reference, 3), "unit": unit,
                          "ratio": round(phibox / reference, 3) if reference else None, "note": note})
        print(f"  {name}: phibox {phibox:.3f} vs {reference:.3f} {unit}", flush=True)

    def print(self) -> None:
        print(f"\n{'measure':<66} {'phibox':>10} {'reference':>10} {'ratio':>7}  unit / note")
        for r in self.rows:
            print(f"{r['measure']:<66} {r['phibox']:>10.2f} {r['reference']:>10.2f} {r['ratio'] or 0:>7.2f}  "
                  f"{r['unit']} {r['note']}")


def run(args: argparse.Namespace) -> int:
    from phibox.export.bench_model import real_size_bundle
    from phibox.export.demo import DEMO, build
    from phibox.export.embedder import default_embedder_dir

    if args.onnx_full and not args.phi3_mini_shape:
        raise ConfigError("--onnx-full measures a real-size export: add --phi3-mini-shape")
    info = build(args.demo_dir)
    state = Path(info["state"])
    bundle = (state / "current").resolve()
    where = ["--state", str(state)]
    model_label = "demo tiny Phi-3 (speed ratios meaningful, absolute speeds not)"
    if args.phi3_mini_shape:
        bundle = real_size_bundle(bundle)
        where = ["--bundle", str(bundle), "--db", str(state / "documents.db")]
        model_label = ("random weights of Phi-3-mini's shape (3.8 B), all 32 layers in both formats; "
                       "the GGUF tokenizes with Phi-3's own tokenizer")
    gguf = next((bundle / "model").glob("*.gguf"))
    name = json.loads((bundle / "manifest.json").read_text())["name"]
    table = Table()
    print("decode through the HTTP API vs the raw runtimes ...", flush=True)
    for backend in ("gguf", "onnx"):
        proc, port = bench.start_server(where, backend, args.threads)
        try:
            api = statistics.median(bench.api_decode(port, f"phibox-{name}-norag", args.tokens) for _ in range(3))
            bench.api_first_token_ms(port, f"phibox-{name}", bench.RAG_QUESTIONS[1])  # the embedder at work too
            rss = bench.status_mb(proc.pid)
        finally:
            bench.stop_server(proc)
        if backend == "gguf":
            raw = [bench.raw_llama_decode(gguf, args.tokens, args.threads, EngineConfig().window, EngineConfig().mmap)
                   for _ in range(3)]
            table.row("decode tokens/s, gguf: HTTP API vs plain llama_cpp.Llama loop", api, statistics.median(raw),
                      "tokens/s")
            table.row("device server peak RSS vs GGUF file size", rss, gguf.stat().st_size / 2**20, "MB",
                      "whole server: model, embedder, Flask, waitress; decode, then a RAG question")
        else:
            raw = [bench.raw_genai_decode(bundle / "onnx", args.tokens, args.threads) for _ in range(3)]
            table.row("decode tokens/s, onnx: HTTP API vs raw onnxruntime-genai", api, statistics.median(raw),
                      "tokens/s")
    budget = EngineConfig().prompt_token_budget
    small, large = (bench.prompt_evidence(state / "documents.db", bundle, DEMO / "qa.jsonl", b) for b in (budget, 600))
    table.row(f"RAG prompt tokens, median over the demo Q&A: budget {budget} vs 600", small["median_tokens"],
              large["median_tokens"], "tokens", f"answers' key terms kept {small['key_terms_kept']:.3f} vs "
              f"{large['key_terms_kept']:.3f}")
    print("time to first token of a RAG question (client side) ...", flush=True)
    runs = 3 if args.phi3_mini_shape else 5
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "engine.toml"
        cold, warm, wide = (bench.ttft(where, f"phibox-{name}", args.threads, runs, config, engine) for engine in (
            {"reuse_prefix": "false"}, {"reuse_prefix": "true"},
            {"reuse_prefix": "true", "prompt_token_budget": "600"}))
    table.row("time to first token, reused system-prompt prefix vs none", warm, cold, "ms", "client side, RAG")
    table.row(f"time to first token, prompt budget {budget} vs 600 (prefix reused)", warm, wide, "ms",
              "client side, RAG")
    print("a repeated kiosk question (answer cache) ...", flush=True)
    repeat = bench.repeated_question(where, args.threads)
    table.row("repeated question: whole answer replayed vs the first time's first words", repeat["replayed_ms"],
              repeat["first_token_ms"], "ms", f"the first answer took {repeat['generated_ms'] / 1000:.1f} s in all")
    print("peak RSS of the server during a live bundle switch ...", flush=True)
    with tempfile.TemporaryDirectory(dir=args.out.resolve().parent) as scratch:
        peaks = bench.activation_peaks(bundle, args.threads, Path(scratch))
    table.row("server peak RSS during a live switch, side by side vs steady", peaks["side_by_side_peak_mb"],
              peaks["steady_mb"], "MB", f"estimate {peaks['side_by_side_estimate_mb']:.0f} MB for the new model")
    table.row("server peak RSS during a live switch, drain (budget steady+64 MB) vs steady", peaks["drain_peak_mb"],
              peaks["steady_mb"], "MB", "the answer under way finishes first; questions meanwhile get passages")
    table.row("fleet pull process peak RSS (fetch + hand to the kiosk) vs phibox-pull.service MemoryMax",
              peaks["pull_peak_mb"], 512, "MB", "phibox pull --through-server, as the timer runs it")
    for n in (int(s) for s in args.sizes.split(",")):
        print(f"retrieval over {n} chunks of real embeddings ...", flush=True)
        r = bench_retrieval.measure(bundle / "embedder", n, args.threads)
        table.row(f"retrieval p50, {n} chunks: phibox's vector search vs exact numpy", r["vec_p50_ms"],
                  r["numpy_p50_ms"], "ms", f"recall@10 {r['recall_at_10']:.3f}, "
                  f"resident +{r['resident_growth_mb']:.0f} MB")
        table.row(f"retrieval p95, {n} chunks: phibox's vector search vs exact numpy", r["vec_p95_ms"],
                  r["numpy_p95_ms"], "ms")
    print("ingestion embedding speed ...", flush=True)
    e = bench.ingestion(bundle / "embedder", default_embedder_dir(), DEMO / "manuals", args.threads)
    table.row("ingestion chunks/s: ONNX embedder vs sentence-transformers (torch)", e["onnx_chunks_s"],
              e["torch_chunks_s"], "chunks/s", f"min cosine {e['min_cosine']:.6f}")
    _save(args, model_label, table)  # the rows so far survive a failure in the long export rows
    if args.onnx_full:
        export_rows(table, args.out.resolve().parent)
        _save(args, model_label, table)
    table.print()
    print(f"\nwritten to {args.out}")
    return 0


def _save(args: argparse.Namespace, model_label: str, table: Table) -> None:
    args.out.write_text(json.dumps({"model": model_label, "threads": args.threads, "rows": table.rows}, indent=2))


def export_rows(table: Table, scratch_parent: Path) -> None:
    """The build box's RAM at real size: phibox's ONNX step vs the stock builder, then a whole export."""
    from phibox.train.tiny_phi3 import PHI3_MINI_SHAPE, ensure_tiny_phi3

    checkpoint = ensure_tiny_phi3(spec=PHI3_MINI_SHAPE)
    with tempfile.TemporaryDirectory(dir=scratch_parent, prefix="phibox-bench-export-") as scratch:
        print("ONNX int4 at 32 layers: phibox's step, then the stock builder (stopped past 16 GB) ...", flush=True)
        ours = bench_export.onnx_step(checkpoint, Path(scratch))
        if ours.returncode != 0:
            raise RuntimeError(f"phibox's ONNX step failed:\n{ours.tail}")
        stock = bench_export.stock_builder(checkpoint, Path(scratch))
        stopped = "stopped past 16 GB" if stock.returncode is None else f"exit {stock.returncode}"
        table.row("ONNX int4 build peak RAM, 32 layers: int4 blocks + builder vs stock builder", ours.peak_mb,
                  stock.peak_mb, "MB", f"{ours.seconds:.0f} s vs {stock.seconds:.0f} s ({stopped})")
    with tempfile.TemporaryDirectory(dir=scratch_parent, prefix="phibox-bench-export-") as scratch:
        print("the whole `phibox export --formats gguf,onnx` at real size ...", flush=True)
        whole = bench_export.whole_export(checkpoint, Path(scratch))
        if whole.returncode != 0:
            raise RuntimeError(f"phibox export failed:\n{whole.tail}")
        table.row("whole export, gguf + onnx, peak RAM of the process tree vs a 16 GB build box", whole.peak_mb,
                  bench_export.BUILD_BOX_MB, "MB", f"{whole.seconds / 60:.1f} min: convert, quantize, ONNX, "
                  "embedder, parity gate, pack")
