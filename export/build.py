"""The export run: each step in order, in a staging folder, ending in one signed bundle file."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from phibox.device.bundle import Embedder, load_private_key
from phibox.device.errors import ConfigError
from phibox.export import parity
from phibox.export.pipeline import (
    ExportConfig,
    Steps,
    build_manifest,
    check_merged,
    check_onnx_memory,
    clean_stale_staging,
)


def export_bundle(merged: Path, key_path: Path, out_path: Path, cfg: ExportConfig,
                  say: Callable[[str], None] = print) -> Path:
    """Build, check and sign a bundle from a merged checkpoint; returns the bundle path."""
    if out_path.suffix != ".phibox":
        raise ConfigError(f"--out {out_path} should end in .phibox")
    if out_path.exists():
        raise ConfigError(f"{out_path} already exists: choose another --out (bundles are never overwritten)")
    config = check_merged(merged)
    key = load_private_key(key_path)  # fail before any long step
    if "onnx" in cfg.formats:
        check_onnx_memory(config)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(out_path.parent)
    staging = out_path.parent / f".phibox-export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        return _run(merged, key, out_path, cfg, staging, say)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _run(merged: Path, key, out_path: Path, cfg: ExportConfig, staging: Path,
         say: Callable[[str], None]) -> Path:
    from phibox.export.embedder import default_embedder_dir, export_embedder
    from phibox.export.gguf import convert_to_gguf, quantize_gguf
    from phibox.export.llama_kit import find_kit
    from phibox.export.onnx_genai import build_onnx_genai
    from phibox.export.pack import write_bundle

    files, work = staging / "bundle", staging / "work"
    files.mkdir()
    work.mkdir()
    steps = Steps(2 * ("gguf" in cfg.formats) + ("onnx" in cfg.formats) + 3 + (cfg.docs is not None)
                  + (cfg.eval_retrieval is not None), say)
    gguf_path = files / "model" / f"phi3-{cfg.quant.lower()}.gguf"
    onnx_dir = files / "onnx"
    if "gguf" in cfg.formats:
        kit = find_kit()
        f16 = steps.run("convert to GGUF f16 (llama.cpp converter)", lambda: convert_to_gguf(
            kit, merged, work / "model-f16.gguf", model_name=f"phi3-{cfg.name}"), work / "model-f16.gguf")
        gguf_path.parent.mkdir()
        steps.run(f"quantize GGUF to {cfg.quant}", lambda: quantize_gguf(f16, gguf_path, cfg.quant), gguf_path)
    if "onnx" in cfg.formats:
        steps.run("build ONNX int4 (onnxruntime-genai builder)", lambda: build_onnx_genai(
            merged, onnx_dir, block_size=cfg.onnx_block_size, accuracy_level=cfg.onnx_accuracy_level), onnx_dir)
    source = cfg.embedder_dir or default_embedder_dir()
    report = steps.run("export the sentence embedder to ONNX and check it against torch", lambda: export_embedder(
        source, files / "embedder", options=cfg.embedder, min_cosine=cfg.embedder_min_cosine), files / "embedder")
    say(f"      embedder {report.id}: {report.dim}-d, cosine vs torch min {report.min_cosine:.6f} "
        f"over {report.sentences} sentences as questions and as passages")
    for note in report.notes:
        say(f"      note: {note}")
    if cfg.docs is not None:
        docs = cfg.docs
        index = steps.run(f"index the manuals in {docs} with the exported embedder",
                          lambda: build_index(docs, files / "embedder", files / "index" / "documents.db"),
                          files / "index")
        say(f"      {index['documents']} documents, {index['chunks']} chunks")
        if cfg.eval_retrieval is not None:
            eval_file, relevance = cfg.eval_retrieval, files / "retrieval" / "relevance.json"
            fitted = steps.run(f"calibrate the relevance decision on {eval_file}", lambda: calibrate_relevance(
                eval_file, files / "index" / "documents.db", files / "embedder", relevance), relevance)
            say(f"      not covered: precision {fitted['precision']}, recall {fitted['recall']}, "
                f"answerable kept {fitted['answerable_kept']}")
    (files / "eval").mkdir()
    results = steps.run("parity gate: merged model vs each format", lambda: run_parity(
        merged, gguf_path if "gguf" in cfg.formats else None, onnx_dir if "onnx" in cfg.formats else None,
        cfg, files / "eval" / "parity.json"))
    say(parity.table(results, cfg.thresholds))
    problems = parity.failures(results, cfg.thresholds)
    if problems:
        kept = out_path.with_name(out_path.stem + ".parity-failed.json")
        shutil.copy2(files / "eval" / "parity.json", kept)
        raise parity.ParityError(f"the parity gate failed (full report: {kept}):\n  " + "\n  ".join(problems))
    manifest = build_manifest(files, cfg, merged, Embedder(report.id, report.dim), results)
    steps.run("sign and pack the bundle", lambda: write_bundle(files, manifest, key, out_path, staging), out_path)
    return out_path


def run_parity(merged: Path, gguf: Path | None, onnx_dir: Path | None, cfg: ExportConfig,
               report_path: Path) -> dict[str, parity.FormatResult]:
    """The gate, one model in memory at a time: the merged model's logits and continuations first
    (then it is freed), then each format's. Peak: the merged checkpoint in its own dtype."""
    from phibox.export.runners import HFRunner, LlamaCppRunner, OnnxGenaiRunner, Runner

    prompts = parity.load_prompts(cfg.parity_prompts)
    reference = HFRunner(merged)
    try:
        ids = {prompt: reference.tokenize(prompt) for prompt in prompts}
        ref_logits = {tuple(i): reference.logits(i) for i in ids.values()}
        merged_texts = {prompt: reference.continue_greedy(i, cfg.continuation_tokens) for prompt, i in ids.items()}
    finally:
        reference.close()
    openers: dict[str, Callable[[], Runner]] = {}
    if gguf is not None:
        openers["gguf"] = lambda: LlamaCppRunner(gguf)
    if onnx_dir is not None:
        openers["onnx"] = lambda: OnnxGenaiRunner(onnx_dir)
    results: dict[str, parity.FormatResult] = {}
    for name, open_runner in openers.items():
        runner = open_runner()
        try:
            results.update(parity.run_gate(prompts, ids.__getitem__, lambda i: ref_logits[tuple(i)],
                                           {name: runner.logits}, cfg.thresholds))
            for prompt in prompts:
                results[name].continuations.append({
                    "prompt_tail": prompt[-80:], "merged": merged_texts[prompt],
                    name: runner.continue_greedy(ids[prompt], cfg.continuation_tokens),
                })
        finally:
            runner.close()
    parity.write_report(report_path, results, cfg.thresholds, prompts)
    return results


def build_index(docs: Path, embedder_dir: Path, db_path: Path) -> dict[str, int]:
    """A prebuilt documents database made by the device's own command (`phibox ingest`, the code a
    kiosk runs) with the exported embedder, left as a single file (no -wal or -shm beside it)."""
    import json
    import subprocess
    import sys

    if not docs.is_dir():
        raise ConfigError(f"--docs {docs} is not a folder of manuals")
    db_path.parent.mkdir(parents=True)
    done = subprocess.run([sys.executable, "-m", "phibox.device.cli", "ingest", str(docs), "--db", str(db_path),
                           "--embedder", str(embedder_dir), "--for-bundle", "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"indexing --docs {docs} failed: {done.stderr.strip()[-800:]}")
    report = json.loads(done.stdout)
    if not report["added"]:
        raise ConfigError(f"--docs {docs}: no readable manuals ({len(report['failed'])} files failed)")
    return report["counts"]


def calibrate_relevance(eval_file: Path, db_path: Path, embedder_dir: Path, out: Path) -> dict[str, object]:
    """retrieval/relevance.json fitted by the device's own command (`phibox eval retrieval --calibrate`)
    on the prebuilt index; returns its not-covered precision and recall."""
    import json
    import subprocess
    import sys

    if not eval_file.is_file():
        raise ConfigError(f"--eval-retrieval {eval_file} does not exist")
    done = subprocess.run([sys.executable, "-m", "phibox.device.cli", "eval", "retrieval", str(eval_file),
                           "--db", str(db_path), "--embedder", str(embedder_dir), "--calibrate", str(out), "--json"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"calibrating on --eval-retrieval {eval_file} failed: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout)["not_covered"]
