"""HF checkpoint → ONNX int4 for onnxruntime-genai, with onnxruntime-genai's own model builder.

The builder ships inside the pinned onnxruntime-genai (constraints.txt): builders from 0.16 on
need transformers 5, which the export stack (optimum-onnx) cannot use, so phibox pins 0.15.2 for
both the builder and the runtime.

For int4 the checkpoint is first written as int4 blocks, one tensor at a time
(`export/int4_weights.py`), and the builder builds from those: given the float checkpoint it
holds the whole model in float32 twice (more than 20 GB for Phi-3-mini). The blocks are the
bytes the builder's own quantizer would have written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from phibox.device.errors import PhiboxError
from phibox.export.int4_weights import quantize_checkpoint

PRECISIONS = ("int4", "fp32", "fp16")


class OnnxBuildError(PhiboxError):
    """onnxruntime-genai's model builder failed on a checkpoint."""


def build_onnx_genai(
    model_dir: Path,
    out_dir: Path,
    *,
    precision: str = "int4",
    block_size: int = 32,
    accuracy_level: int = 4,
    cache_dir: Path | None = None,
) -> Path:
    """Build a CPU onnxruntime-genai model folder (model.onnx, genai_config.json, tokenizer)."""
    if precision not in PRECISIONS:
        raise OnnxBuildError(f"precision {precision!r} is not one of {PRECISIONS}")
    if block_size not in (16, 32, 64, 128, 256):
        raise OnnxBuildError(f"int4 block size {block_size} must be 16, 32, 64, 128 or 256")
    if accuracy_level not in range(5):
        raise OnnxBuildError(f"int4 accuracy level {accuracy_level} must be 0-4 (4: int8 compute, fastest on CPU)")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="phibox-ortgenai-", dir=out_dir.parent) as tmp:
        source = model_dir
        if precision == "int4":
            source = quantize_checkpoint(model_dir, Path(tmp) / "int4", block_size=block_size)
        result = _run_builder(source, out_dir, precision, block_size, accuracy_level, cache_dir or Path(tmp) / "cache")
    config = out_dir / "genai_config.json"
    if result.returncode != 0 or not config.is_file():
        raise OnnxBuildError(
            f"onnxruntime-genai's builder failed on {model_dir} (exit {result.returncode}):\n"
            f"{result.stderr.strip()[-1500:]}"
        )
    return out_dir


def _run_builder(
    model_dir: Path, out_dir: Path, precision: str, block_size: int, accuracy_level: int, cache: Path
) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder",
        "-i", str(model_dir), "-o", str(out_dir), "-p", precision, "-e", "cpu", "-c", str(cache),
        "--extra_options", f"int4_block_size={block_size}", f"int4_accuracy_level={accuracy_level}",
    ]
    return subprocess.run(cmd, capture_output=True, text=True)


def eos_ids(model_dir: Path) -> list[int]:
    """The eos ids genai_config.json stops on (phibox needs both <|end|> and <|endoftext|>)."""
    config = json.loads((model_dir / "genai_config.json").read_text())
    eos = config["model"]["eos_token_id"]
    return list(eos) if isinstance(eos, list) else [eos]
