"""HF, llama.cpp (GGUF from llama.cpp's real converter) and onnxruntime-genai (its real builder)
turn the same Phi-3 chat prompts into the same token ids, and agree on the stop tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from phibox.device.prompt import Passage, build_prompt, render_chat

PROMPTS = [
    build_prompt("The press shows E42, what do I check?", [
        Passage("press.pdf", "E42: low hydraulic pressure. Check oil level; bleed the pump.", "Faults", 12)]),
    build_prompt("Torque for the conveyor motor mount?", [
        Passage("conveyor.md", "Mount bolts M10: 45 Nm. Re-check after 50 hours.", "Maintenance > Motor")]),
    build_prompt("Does the manual cover the forklift?", []),
    render_chat([{"role": "user", "content": "Part number 4711-23 — is it the seal kit?"}]),
    render_chat([
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Compressor at 8.5 bar, 95 °C: normal?"},
        {"role": "assistant", "content": "No: stop it and check the cooler [1]."},
        {"role": "user", "content": "And the oil?\nTabs\tand newlines too."},
    ]),
    render_chat([{"role": "user", "content": "Café filler — déjà vu, naïve façade, ½ turn, ±0.5 mm, 日本"}]),
]


def hf_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=True).input_ids)


@pytest.fixture(scope="module")
def llama_vocab(tiny_gguf: Path):
    from llama_cpp import Llama

    return Llama(model_path=str(tiny_gguf), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def ortgenai_tokenizer(tiny_onnx: Path):
    import onnxruntime_genai as og

    return og.Tokenizer(og.Model(str(tiny_onnx)))


@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_llama_cpp_tokenizes_like_hf(index: int, hf_tokenizer, llama_vocab) -> None:
    text = PROMPTS[index]
    ids = llama_vocab.tokenize(text.encode(), add_bos=True, special=True)
    assert ids == hf_ids(hf_tokenizer, text)


@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_onnxruntime_genai_tokenizes_like_hf(index: int, hf_tokenizer, ortgenai_tokenizer) -> None:
    text = PROMPTS[index]
    assert [int(i) for i in ortgenai_tokenizer.encode(text)] == hf_ids(hf_tokenizer, text)


def test_gguf_carries_phi3_name_template_and_stop_tokens(tiny_gguf: Path, hf_tokenizer, llama_vocab) -> None:
    meta = llama_vocab.metadata
    assert "phi3" in meta["general.name"].lower()
    assert meta["general.architecture"] == "phi3"
    assert "<|assistant|>" in meta["tokenizer.chat_template"]
    end = hf_tokenizer.convert_tokens_to_ids("<|end|>")
    eot = hf_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert int(meta["tokenizer.ggml.eos_token_id"]) in (end, eot)
    assert llama_vocab.detokenize([end], special=True) == b"<|end|>"
    assert llama_vocab.detokenize([eot], special=True) == b"<|endoftext|>"


def test_onnx_genai_stops_on_both_phi3_stop_tokens(tiny_onnx: Path, hf_tokenizer) -> None:
    from phibox.export.onnx_genai import eos_ids

    expected = {hf_tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|endoftext|>")}
    assert set(eos_ids(tiny_onnx)) == expected


def test_gguf_name_without_phi3_is_refused(tiny_phi3: Path, converter_kit, tmp_path: Path) -> None:
    from phibox.export.gguf import ConversionError, convert_to_gguf

    with pytest.raises(ConversionError, match="must contain 'phi3'"):
        convert_to_gguf(converter_kit, tiny_phi3, tmp_path / "x.gguf", model_name="plant7-model")
