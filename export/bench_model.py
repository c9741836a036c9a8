"""The benchmark's real-size model: random weights of Phi-3-mini's exact shape, built once and cached.

Speed and memory do not depend on the weights' values, so a random 3.8 B model gives real-size
numbers for `phibox bench --phi3-mini-shape` (its text is meaningless).
"""

from __future__ import annotations

import json
from pathlib import Path


def real_size_bundle(demo_bundle: Path, say=print) -> Path:
    """A bundle folder with a random-weight Phi-3-mini-shaped Q4_K_M GGUF that tokenizes with
    Phi-3's own tokenizer, and the full 32-layer ONNX int4 model; each part built once and cached
    (a cache from before keeps what it has)."""
    import shutil

    from phibox.device.paths import cache_root
    from phibox.train.tiny_phi3 import PHI3_MINI_SHAPE, ensure_tiny_phi3, recipe_key

    root = cache_root() / "bench" / f"phi3-mini-shape-{recipe_key(PHI3_MINI_SHAPE)}"
    root.mkdir(parents=True, exist_ok=True)
    changed = False
    if not (root / "model" / GGUF_NAME).is_file():
        say("building a random-weight model of Phi-3-mini's shape (3.8 B parameters, ~7.6 GB, once) ...")
        _build_part(root / "model", lambda work: _gguf(ensure_tiny_phi3(spec=PHI3_MINI_SHAPE), work, say))
        changed = True
    if gguf_name(root / "model" / GGUF_NAME) != PHI3_VOCAB_NAME:
        say("giving the GGUF Phi-3's own tokenizer (llama.cpp's vocabulary-only GGUF) ...")
        _phi3_vocabulary(root / "model" / GGUF_NAME)
        changed = True
    if onnx_layers(root / "onnx") != PHI3_MINI_SHAPE.num_layers:
        say("building the 32-layer ONNX int4 model (int4 blocks, then onnxruntime-genai's builder; minutes) ...")
        _build_part(root / "onnx", lambda work: _onnx(ensure_tiny_phi3(spec=PHI3_MINI_SHAPE), work))
        changed = True
    if not (root / "embedder").is_dir():
        shutil.copytree(demo_bundle / "embedder", root / "embedder")
        changed = True
    if changed or not (root / "manifest.json").is_file():
        _write_manifest(root)
    return root


GGUF_NAME = "phi3-q4_k_m.gguf"
PHI3_VOCAB_NAME = "phi3-mini-shape, Phi-3 tokenizer"


def gguf_name(gguf: Path) -> str | None:
    """A GGUF's general.name (None when there is no file)."""
    if not gguf.is_file():
        return None
    from llama_cpp import Llama

    return Llama(str(gguf), vocab_only=True, verbose=False).metadata.get("general.name")


def _phi3_vocabulary(gguf: Path) -> None:
    from phibox.export.gguf_vocab import with_vocabulary
    from phibox.export.llama_kit import find_kit

    kit = find_kit()
    with_vocabulary(kit, gguf, kit.phi3_vocab, gguf, PHI3_VOCAB_NAME)


def onnx_layers(onnx_dir: Path) -> int:
    """Decoder layers of a built onnxruntime-genai model folder (0 when there is none)."""
    config = onnx_dir / "genai_config.json"
    if not config.is_file():
        return 0
    return int(json.loads(config.read_text())["model"]["decoder"]["num_hidden_layers"])


def _build_part(dest: Path, build) -> None:
    import shutil

    work = dest.with_name(dest.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    build(work)
    shutil.rmtree(dest, ignore_errors=True)
    work.rename(dest)


def _gguf(checkpoint: Path, work: Path, say) -> None:
    from phibox.export.gguf import convert_to_gguf, quantize_gguf
    from phibox.export.llama_kit import find_kit

    say("converting to GGUF and quantizing to Q4_K_M (minutes) ...")
    f16 = convert_to_gguf(find_kit(), checkpoint, work.parent / "f16.gguf", model_name="phi3-mini-shape")
    quantize_gguf(f16, work / GGUF_NAME, "Q4_K_M")
    f16.unlink()


def _onnx(checkpoint: Path, work: Path) -> None:
    from phibox.export.onnx_genai import build_onnx_genai

    build_onnx_genai(checkpoint, work)


def _write_manifest(root: Path) -> None:
    from phibox.device.bundle import Embedder, Manifest, file_entry
    from phibox.export.pipeline import roles_for

    rels = sorted(p.relative_to(root).as_posix() for part in ("model", "onnx", "embedder")
                  for p in (root / part).rglob("*") if p.is_file())
    spec = json.loads((root / "embedder" / "embedder.json").read_text())
    manifest = Manifest(name="phi3-mini-shape", version=1, created_at="2026-01-01T00:00:00Z",
                        min_device_version="0.1.0", base_model="random weights, Phi-3-mini shape",
                        files=tuple(file_entry(root, r, roles_for(r)) for r in rels), formats=("gguf", "onnx"),
                        embedder=Embedder(spec["id"], spec["dim"]), stop_tokens=("<|end|>", "<|endoftext|>"))
    (root / "manifest.json").write_bytes(manifest.to_bytes())  # benchmark folder: served with --bundle, unsigned
