"""`phibox bench --phi3-mini-shape --onnx-full`: the build box's RAM during a real-size export.

A process tree is watched, not one process: `phibox export` runs llama.cpp's converter and
onnxruntime-genai's builder as children while the parent keeps what it holds, so the box needs
the sum. The reference for the ONNX step is the stock builder given the same bf16 checkpoint,
with none of phibox's code; it is stopped once it passes the 16 GB build box (it would go on to
more than 20 GB).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

BUILD_BOX_MB = 16 * 1024


@dataclass(frozen=True)
class TreePeak:
    peak_mb: float
    seconds: float
    returncode: int | None  # None: stopped at the limit
    tail: str


def watch(cmd: list[str], *, limit_mb: float | None = None, cwd: Path | None = None,
          every_s: float = 0.25) -> TreePeak:
    """Run `cmd`, summing the RSS of it and its descendants every `every_s`; stop it past `limit_mb`."""
    started = time.monotonic()
    with subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        log = _drain(proc)
        root, peak = psutil.Process(proc.pid), 0.0
        while proc.poll() is None:
            peak = max(peak, _tree_rss_mb(root))
            if limit_mb is not None and peak > limit_mb:
                _kill_tree(root)
                proc.wait()
                return TreePeak(peak, time.monotonic() - started, None, "".join(log)[-2000:])
            time.sleep(every_s)
        return TreePeak(peak, time.monotonic() - started, proc.returncode, "".join(log)[-2000:])


def onnx_step(checkpoint: Path, scratch: Path) -> TreePeak:
    """phibox's ONNX step (int4 blocks, then the builder) on a checkpoint."""
    code = ("import sys; from pathlib import Path; from phibox.export.onnx_genai import build_onnx_genai; "
            "build_onnx_genai(Path(sys.argv[1]), Path(sys.argv[2]))")
    return watch([sys.executable, "-c", code, str(checkpoint), str(scratch / "phibox-onnx")])


def stock_builder(checkpoint: Path, scratch: Path) -> TreePeak:
    """onnxruntime-genai's builder as it ships, on the same checkpoint, stopped past the build box."""
    return watch([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint),
                  "-o", str(scratch / "stock-onnx"), "-p", "int4", "-e", "cpu", "-c", str(scratch / "stock-cache"),
                  "--extra_options", "int4_block_size=32", "int4_accuracy_level=4"], limit_mb=BUILD_BOX_MB)


def whole_export(checkpoint: Path, scratch: Path) -> TreePeak:
    """`phibox export --formats gguf,onnx` of the checkpoint: convert, quantize, ONNX, embedder, gate, pack."""
    key = scratch / "bench.key"
    subprocess.run([sys.executable, "-m", "phibox.device.cli", "keygen", "--out", str(key)], check=True,
                   capture_output=True)
    # Random weights give near-uniform logits, so 4-bit rounding flips the argmax: the gate runs in
    # full (its memory is part of what is measured) with thresholds that cannot fail.
    return watch([sys.executable, "-m", "phibox.device.cli", "export", str(checkpoint), "--key", str(key),
                  "--out", str(scratch / "phi3-mini-shape-v1.phibox"), "--version", "1", "--formats", "gguf,onnx",
                  "--min-top1", "0", "--max-kl", "1000000"])


def _drain(proc: subprocess.Popen) -> list[str]:
    import threading

    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            del lines[:-200]

    threading.Thread(target=read, daemon=True).start()
    return lines


def _tree_rss_mb(root: psutil.Process) -> float:
    total = 0
    for proc in [root, *_children(root)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def _children(root: psutil.Process) -> list[psutil.Process]:
    try:
        return root.children(recursive=True)
    except psutil.Error:
        return []


def _kill_tree(root: psutil.Process) -> None:
    for proc in [*_children(root), root]:
        try:
            proc.kill()
        except psutil.Error:
            continue
