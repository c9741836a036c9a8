"""The ONNX int4 route that fits a 16 GB build box: the checkpoint is written as int4 blocks one
tensor at a time and the builder builds from those. The result must be the model the builder
makes from the float checkpoint itself: the same int4 bytes, the same greedy tokens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


def _nbits(model_dir: Path) -> dict[str, list[np.ndarray]]:
    """MatMulNBits nodes by their layer path → [weights, scales(, zero points)]."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_dir / "model.onnx"))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {node.name.rsplit("/", 1)[0]: [init[x] for x in node.input[1:] if x]
            for node in model.graph.node if node.op_type == "MatMulNBits"}


def _greedy(model_dir: Path, prompt: list[int], n: int) -> list[int]:
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + n, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    tokens: list[int] = []
    while not generator.is_done() and len(tokens) < n:
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


@pytest.fixture(scope="module")
def stock_onnx(tiny_phi3: Path, tmp_path_factory) -> Path:
    """The builder run on the float checkpoint directly, as it ships (no phibox step)."""
    out = tmp_path_factory.mktemp("stock-onnx")
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(tiny_phi3), "-o", str(out),
                    "-p", "int4", "-e", "cpu", "-c", str(out / "cache"),
                    "--extra_options", "int4_block_size=32", "int4_accuracy_level=4"],
                   check=True, capture_output=True)
    return out


def test_int4_blocks_route_gives_the_stock_builders_model(tiny_onnx: Path, stock_onnx: Path) -> None:
    ours, stock = _nbits(tiny_onnx), _nbits(stock_onnx)
    assert sorted(ours) == sorted(stock)  # the same 4-bit matmuls, q/k/v still fused into one
    assert any("qkv_proj" in name for name in ours)
    for name, (weights, scales, *zeros) in ours.items():
        stock_weights, stock_scales, *_ = stock[name]
        assert np.array_equal(weights.reshape(-1), stock_weights.reshape(-1)), name
        assert np.array_equal(scales.reshape(-1), stock_scales.reshape(-1)), name
        assert all((z == 0x88).all() for z in zeros), f"{name}: zero points other than the symmetric 8"
    prompt = list(range(5, 70))
    assert _greedy(tiny_onnx, prompt, 24) == _greedy(stock_onnx, prompt, 24)


def test_int4_blocks_are_written_split_and_the_rest_is_copied(tiny_phi3: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    from phibox.export.int4_weights import quantize_checkpoint

    out = quantize_checkpoint(tiny_phi3, tmp_path / "int4")
    names: set[str] = set()
    for shard in out.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as handle:
            names |= set(handle.keys())
    assert "model.layers.0.self_attn.q_proj.qweight" in names and "model.layers.0.mlp.up_proj.qzeros" in names
    assert not any(".qkv_proj." in n or ".gate_up_proj." in n for n in names)
    assert "model.embed_tokens.weight" in names and "lm_head.weight" in names  # kept in float
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "olive", "bits": 4, "group_size": 32, "overrides": None}
    assert (out / "tokenizer.model").read_bytes() == (tiny_phi3 / "tokenizer.model").read_bytes()


def test_int4_blocks_refuse_what_they_cannot_quantize(tiny_phi3: Path, tmp_path: Path) -> None:
    from phibox.export.int4_weights import Int4WeightsError, quantize_checkpoint, quantize_matrix

    done = quantize_checkpoint(tiny_phi3, tmp_path / "int4")
    with pytest.raises(Int4WeightsError, match="already quantized"):
        quantize_checkpoint(done, tmp_path / "again")
    with pytest.raises(Int4WeightsError, match="blocks of 32"):
        quantize_matrix(torch.ones(8, 48), 32)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(Int4WeightsError, match="no safetensors weights"):
        quantize_checkpoint(empty, tmp_path / "y")
