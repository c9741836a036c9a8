"""The benchmark's real-size model counts prompt tokens with Phi-3's own tokenizer, taken from the
vocabulary-only GGUF llama.cpp's source ships; the swap keeps every tensor."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

PROMPT = "<|user|>\nThe press shows E42, what do I check?<|end|>\n<|assistant|>\n"


def _greedy(gguf: Path) -> tuple[str, str]:
    from llama_cpp import Llama

    model = Llama(str(gguf), n_ctx=128, n_threads=2, verbose=False)
    text = model.create_completion(PROMPT, max_tokens=12, temperature=0.0)["choices"][0]["text"]
    return text, model.metadata.get("general.name", "")


def test_the_kit_carries_phi3s_own_tokenizer(converter_kit) -> None:
    from llama_cpp import Llama

    vocab = Llama(str(converter_kit.phi3_vocab), vocab_only=True, verbose=False)
    ids = vocab.tokenize(PROMPT.encode(), add_bos=False, special=True)
    assert vocab.n_vocab() == 32064  # Phi-3-mini's embedding rows
    assert ids[0] == 32010 and ids[-2:] == [32007, 32001]  # <|user|> ... <|end|> <|assistant|>
    assert len(ids) == 15


def test_swapping_the_vocabulary_keeps_the_weights(converter_kit, tiny_gguf: Path, tmp_path: Path) -> None:
    from phibox.export.gguf_vocab import with_vocabulary

    model = shutil.copy(tiny_gguf, tmp_path / "model.gguf")
    before, _ = _greedy(Path(model))
    out = with_vocabulary(converter_kit, Path(model), tiny_gguf, tmp_path / "swapped.gguf", "phi3-swapped")
    after, name = _greedy(out)
    assert (after, name) == (before, "phi3-swapped")


def test_a_vocabulary_of_another_size_is_refused(converter_kit, tiny_gguf: Path, tmp_path: Path) -> None:
    from phibox.export.gguf_vocab import VocabSwapError, with_vocabulary

    with pytest.raises(VocabSwapError, match=r"32064 tokens, the model's embedding 1024 rows"):
        with_vocabulary(converter_kit, tiny_gguf, converter_kit.phi3_vocab, tmp_path / "x.gguf", "phi3-x")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
    from phibox.export.gguf import ConversionError

    with pytest.raises(ConversionError, match="must contain 'phi3'"):  # llama.cpp would tokenize it wrongly
        with_vocabulary(converter_kit, tiny_gguf, tiny_gguf, tmp_path / "y.gguf", "swapped")
