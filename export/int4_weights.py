"""Stream a checkpoint's linear weights into int4 blocks, one tensor at a time.

onnxruntime-genai's model builder, given a plain checkpoint, materialises every weight as
float32 in one ONNX proto before it quantizes (more than 20 GB for Phi-3-mini). Given a
checkpoint that is already quantized it builds the graph straight from the int4 blocks. This
module writes that checkpoint: each decoder Linear weight is quantized with onnxruntime's own
block quantizer (the very routine the builder would call, so the bytes are the same) and stored
in the builder's "olive" layout — `qweight` (out, in/2) uint8, `scales` (out, in/block) float32 —
symmetric, with the implied zero point 8 written out (`qzeros`, two per byte): the builder fuses
q, k and v into one MatMulNBits and needs zero points to concatenate. Phi-3's fused `qkv_proj`
and `gate_up_proj` are written split (q/k/v, gate/up): the builder's reader halves the rows of a
fused olive `qzeros`. A block never spans output rows, so splitting first gives the same bytes.
Everything else (embeddings, norms, lm_head, tokenizer) is copied
as is; the builder quantizes lm_head itself. Peak memory is one shard of the source plus one
output shard, not the model.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from onnxruntime.capi._pybind_state import quantize_matmul_4bits
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from phibox.device.errors import PhiboxError

LINEAR = re.compile(r"^model\.layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj))\.weight$")
SHARD_BYTES = 1 << 30
SYMMETRIC_ZEROS = 0x88  # two 4-bit zero points of 8: what a symmetric block means to MatMulNBits
COPIED = ("generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
          "special_tokens_map.json", "added_tokens.json")


class Int4WeightsError(PhiboxError):
    """A checkpoint could not be quantized into int4 blocks."""


def quantize_checkpoint(model_dir: Path, out_dir: Path, *, block_size: int = 32) -> Path:
    """Write `out_dir`: `model_dir` with its decoder Linear weights as symmetric int4 blocks."""
    config = json.loads((model_dir / "config.json").read_text())
    if "quantization_config" in config:
        method = config["quantization_config"].get("quant_method")
        raise Int4WeightsError(f"{model_dir} is already quantized ({method}); export takes the merged float checkpoint")
    files = _weight_files(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [(path, name) for path in files for name in _keys(path)]
    shard: dict[str, torch.Tensor] = {}
    written = 0
    with tqdm(total=len(names), desc="int4 blocks", unit="tensor") as bar:
        for name, tensor in _tensors(names):
            shard.update(_convert(name, tensor, block_size, config))
            if sum(t.numel() * t.element_size() for t in shard.values()) >= SHARD_BYTES:
                written = _flush(shard, out_dir, written)
            bar.update()
    _flush(shard, out_dir, written)
    config["quantization_config"] = {
        "quant_method": "olive", "bits": 4, "group_size": block_size, "overrides": None,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    for name in COPIED:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out_dir / name)
    return out_dir


def quantize_matrix(weight: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, in) float weight → qweight (out, in/2) uint8, scales (out, in/block) float32, qzeros."""
    out_features, in_features = weight.shape
    if in_features % block_size:
        raise Int4WeightsError(f"a {tuple(weight.shape)} weight does not split into blocks of {block_size}")
    k_blocks = in_features // block_size
    matmul_b = np.ascontiguousarray(weight.float().numpy().T)
    packed = np.zeros((out_features, k_blocks, block_size // 2), dtype=np.uint8)
    scales = np.zeros((out_features, k_blocks), dtype=np.float32)
    zeros = np.zeros((out_features, (k_blocks + 1) // 2), dtype=np.uint8)
    quantize_matmul_4bits(packed, matmul_b, scales, zeros, block_size, out_features, in_features, True)
    zeros.fill(SYMMETRIC_ZEROS)
    return torch.from_numpy(packed.reshape(out_features, -1)), torch.from_numpy(scales), torch.from_numpy(zeros)


def _convert(name: str, tensor: torch.Tensor, block_size: int, config: dict) -> dict[str, torch.Tensor]:
    if not LINEAR.match(name):
        return {name: tensor.contiguous()}
    converted: dict[str, torch.Tensor] = {}
    for stem, part in _split(name.removesuffix(".weight"), tensor, config):
        qweight, scales, qzeros = quantize_matrix(part, block_size)
        converted |= {f"{stem}.qweight": qweight, f"{stem}.scales": scales, f"{stem}.qzeros": qzeros}
    return converted


def _split(stem: str, tensor: torch.Tensor, config: dict) -> list[tuple[str, torch.Tensor]]:
    """Phi-3's fused projections as the separate ones the builder reads."""
    base, _, kind = stem.rpartition(".")
    if kind == "qkv_proj":
        head = config["hidden_size"] // config["num_attention_heads"]
        q = config["num_attention_heads"] * head
        kv = config.get("num_key_value_heads", config["num_attention_heads"]) * head
        sizes, names = [q, kv, kv], ["q_proj", "k_proj", "v_proj"]
    elif kind == "gate_up_proj":
        sizes, names = [config["intermediate_size"]] * 2, ["gate_proj", "up_proj"]
    else:
        return [(stem, tensor)]
    if sum(sizes) != tensor.shape[0]:
        raise Int4WeightsError(f"{stem} has {tensor.shape[0]} rows, the config implies {sum(sizes)}")
    return [(f"{base}.{n}", part) for n, part in zip(names, torch.split(tensor, sizes), strict=True)]


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / shard for shard in shards]
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise Int4WeightsError(f"{model_dir} has no safetensors weights (model.safetensors or an index)")
    return [single]


def _keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def _tensors(names: list[tuple[Path, str]]) -> Iterator[tuple[str, torch.Tensor]]:
    """One tensor at a time; the file is opened per tensor so its mapping never stays resident."""
    for path, name in names:
        with safe_open(str(path), framework="pt") as handle:
            tensor = handle.get_tensor(name)
        yield name, tensor


def _flush(shard: dict[str, torch.Tensor], out_dir: Path, written: int) -> int:
    if not shard:
        return written
    save_file(shard, str(out_dir / f"model-int4-{written:05d}.safetensors"), metadata={"format": "pt"})
    shard.clear()
    return written + 1
