"""The tiny Phi-3 kit: real architecture, Phi-3's tokens and stop ids, built once and cached."""

from __future__ import annotations

import json
from pathlib import Path

from phibox.train.tiny_phi3 import PHI3_ADDED_TOKENS, TinySpec, ensure_tiny_phi3, recipe_key


def test_added_tokens_follow_phi3s_order_after_the_pieces(hf_tokenizer) -> None:
    spec = TinySpec()
    ids = hf_tokenizer.convert_tokens_to_ids(list(PHI3_ADDED_TOKENS))
    assert ids == list(range(spec.sp_vocab_size, spec.sp_vocab_size + len(PHI3_ADDED_TOKENS)))
    assert hf_tokenizer.eos_token == "<|endoftext|>" and hf_tokenizer.pad_token == "<|endoftext|>"
    assert (hf_tokenizer.unk_token_id, hf_tokenizer.bos_token_id) == (0, 1)


def test_special_tokens_are_special_and_strip_right_except_endoftext(tiny_phi3: Path) -> None:
    added = json.loads((tiny_phi3 / "tokenizer.json").read_text())["added_tokens"]
    by_content = {t["content"]: t for t in added}
    for token in PHI3_ADDED_TOKENS:
        entry = by_content[token]
        assert entry["special"] and not entry["normalized"]
        assert entry["rstrip"] == (token != "<|endoftext|>")


def test_checkpoint_is_a_real_phi3_with_fused_layers(tiny_phi3: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_phi3)
    assert type(model).__name__ == "Phi3ForCausalLM"
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"} <= names
    assert not {"q_proj", "k_proj", "v_proj"} & names
    assert model.config.vocab_size % 64 == 0


def test_stop_ids_come_from_the_tokenizer(tiny_phi3: Path, hf_tokenizer) -> None:
    end = hf_tokenizer.convert_tokens_to_ids("<|end|>")
    eot = hf_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert end != eot and hf_tokenizer.unk_token_id not in (end, eot)
    gen = json.loads((tiny_phi3 / "generation_config.json").read_text())
    assert sorted(gen["eos_token_id"]) == sorted([end, eot])
    config = json.loads((tiny_phi3 / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "LlamaTokenizer" and "<|assistant|>" in config["chat_template"]
    assert (tiny_phi3 / "tokenizer.model").is_file()


def test_second_call_reuses_the_cached_build(tiny_phi3: Path) -> None:
    before = (tiny_phi3 / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_phi3() == tiny_phi3
    assert (tiny_phi3 / "model.safetensors").stat().st_mtime_ns == before


def test_cache_key_changes_with_the_recipe() -> None:
    assert recipe_key(TinySpec()) != recipe_key(TinySpec(num_layers=2))
    assert recipe_key(TinySpec()) == recipe_key(TinySpec())
