"""HF checkpoint → GGUF with llama.cpp's own converter (from the converter kit)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from device.errors import PhiboxError
from export.llama_kit import ConverterKit

OUTTYPES = ("f32", "f16", "bf16", "q8_0")


class ConversionError(PhiboxError):
    """llama.cpp's converter failed on a checkpoint."""


def check_model_name(model_name: str) -> str:
    """llama.cpp applies Phi-3's special-token handling only when general.name says phi3/phi-3."""
    lowered = model_name.lower()
    if "phi3" not in lowered and "phi-3" not in lowered:
        raise ConversionError(
            f"GGUF model name {model_name!r} must contain 'phi3' or 'phi-3': otherwise llama.cpp "
            "tokenizes Phi-3 prompts wrongly and the model answers garbage"
        )
    return model_name


def convert_to_gguf(
    kit: ConverterKit, model_dir: Path, out_path: Path, *, model_name: str, outtype: str = "f16"
) -> Path:
    """Run convert_hf_to_gguf.py on a Phi-3 checkpoint folder; returns the GGUF path."""
    if outtype not in OUTTYPES:
        raise ConversionError(f"outtype {outtype!r} is not one of {OUTTYPES}")
    if not (model_dir / "tokenizer.model").is_file():
        raise ConversionError(
            f"{model_dir} has no tokenizer.model: llama.cpp needs Phi-3's SentencePiece model; "
            "copy it from the base model folder"
        )
    cmd = [
        sys.executable, str(kit.script), str(model_dir),
        "--outfile", str(out_path), "--outtype", outtype,
        "--model-name", check_model_name(model_name),
    ]
    result = subprocess.run(cmd, env=kit.env(), capture_output=True, text=True)
    if result.returncode != 0 or not out_path.is_file():
        raise ConversionError(
            f"llama.cpp's converter failed on {model_dir} (exit {result.returncode}):\n"
            f"{result.stderr.strip()[-1500:]}"
        )
    return out_path
