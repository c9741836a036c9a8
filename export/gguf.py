"""HF checkpoint → GGUF with llama.cpp's own converter (from the converter kit)."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from phibox.device.errors import PhiboxError
from phibox.export.llama_kit import ConverterKit

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
QUANTS = ("Q4_K_M", "Q4_0", "Q8_0")
"""4-bit K-quant (default), plain 4-bit, 8-bit. K-quants need tensor widths divisible by 256."""


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


def quantize_gguf(src: Path, out_path: Path, quant: str = "Q4_K_M", threads: int | None = None) -> Path:
    """Quantize an f16/f32 GGUF with llama.cpp's own quantizer (the device's llama.cpp version)."""
    import os

    import llama_cpp

    if quant not in QUANTS:
        raise ConversionError(f"quantization {quant!r} is not one of {QUANTS}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    params.nthread = threads or os.cpu_count() or 1
    with captured_native_output() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out_path).encode(), params)
    if rc != 0 or not out_path.is_file():
        raise ConversionError(f"llama.cpp could not quantize {src} to {quant} (code {rc}):\n{log.read()[-1500:]}")
    return out_path


@contextlib.contextmanager
def captured_native_output() -> Iterator[io.StringIO]:
    """Collect what native code prints to stdout/stderr (llama.cpp logs every tensor) instead of
    flooding the terminal; the text is available afterwards for error messages."""
    import os
    import sys
    import tempfile

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    result = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield result
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            result.write(sink.read().decode("utf-8", errors="replace"))
            result.seek(0)


def gguf_metadata(path: Path) -> dict[str, str]:
    """The GGUF's key/value metadata as llama.cpp reads it (vocab only; cheap)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return dict(llm.metadata)
    finally:
        llm.close()
