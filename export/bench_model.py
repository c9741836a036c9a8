"""The benchmark's real-size model: random weights of Phi-3-mini's exact shape, built once and cached.

Speed and memory do not depend on the weights' values, so a random 3.8 B model gives real-size
numbers for `phibox bench --phi3-mini-shape` (its text is meaningless).
"""

from __future__ import annotations

import json
from pathlib import Path


def real_size_bundle(demo_bundle: Path, say=print) -> Path:
    """A bundle folder with a random-weight Phi-3-mini-shaped Q4_K_M GGUF and a 16-layer ONNX int4
    slice (the ONNX builder needs more than 24 GB for all 32 layers), built once and cached."""
    import shutil

    from phibox.device.bundle import Embedder, Manifest, file_entry
    from phibox.device.paths import cache_root
    from phibox.export.gguf import convert_to_gguf, quantize_gguf
    from phibox.export.llama_kit import find_kit
    from phibox.export.onnx_genai import build_onnx_genai
    from phibox.export.pipeline import roles_for
    from phibox.train.tiny_phi3 import PHI3_MINI_16_LAYERS, PHI3_MINI_SHAPE, ensure_tiny_phi3, recipe_key

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
