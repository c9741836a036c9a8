"""llama.cpp (llama-cpp-python) running a GGUF file."""

from __future__ import annotations

import codecs
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from phibox.device.runtime.backend import check_control_tokens, check_fit, control_ids
from phibox.device.runtime.cpu_backends import ensure_cpu_backend


def end_of_generation_ids(llm: Any) -> frozenset[int]:
    """The tokens that end an answer (Phi-3: <|end|>, <|endoftext|>), as the GGUF's vocab marks them."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return frozenset(t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t))


class NativeSampler:
    """A llama.cpp sampler chain: logit bias, then greedy (temperature 0) or top-k 40 + temperature."""

    def __init__(self, n_vocab: int, temperature: float, bias: dict[int, float]) -> None:
        import llama_cpp

        self.lib = llama_cpp
        self.chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if bias:
            entries = (llama_cpp.llama_logit_bias * len(bias))()
            for entry, (token, value) in zip(entries, bias.items(), strict=True):
                entry.token, entry.bias = token, value
            self._add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), entries))
        if temperature == 0:
            self._add(llama_cpp.llama_sampler_init_greedy())
        else:
            self._add(llama_cpp.llama_sampler_init_top_k(40))
            self._add(llama_cpp.llama_sampler_init_temp(temperature))
            self._add(llama_cpp.llama_sampler_init_dist(random.getrandbits(32)))

    def _add(self, sampler: Any) -> None:
        self.lib.llama_sampler_chain_add(self.chain, sampler)

    def sample(self, llm: Any) -> int:
        """The next token from the last evaluated position's logits."""
        return int(self.lib.llama_sampler_sample(self.chain, llm.ctx, -1))

    def close(self) -> None:
        if self.chain is not None:
            self.lib.llama_sampler_free(self.chain)
            self.chain = None


class LlamaCppBackend:
    """A GGUF model in llama-cpp-python, loaded once."""

    name = "gguf"

    def __init__(self, gguf: Path, context_window: int, threads: int, mmap: bool = False) -> None:
        from llama_cpp import Llama

        ensure_cpu_backend()
        self.llm = Llama(model_path=str(gguf), n_ctx=context_window, n_threads=threads, n_threads_batch=threads,
                         use_mmap=mmap, verbose=False)
        self.context_window = context_window
        self.control = control_ids(lambda s: self.llm.tokenize(s.encode(), add_bos=False, special=True))
        self.eog = end_of_generation_ids(self.llm)
        self.eog_ban = {t: -1e9 for t in self.eog}

    def tokenize(self, text: str) -> list[int]:
        """The prompt's tokens, the template's markers parsed as control tokens (message content is
        neutralised when rendered, so nothing else can spell one)."""
        return self.llm.tokenize(text.encode(), add_bos=True, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def generate(self, prompt: str, max_new_tokens: int, temperature: float = 0.0,
                 cancel: threading.Event | None = None, reuse_prefix: bool = True,
                 logit_bias: dict[int, float] | None = None, min_new_tokens: int = 0) -> Iterator[str]:
        """One item per generated token: the text it completes ("" inside a multi-byte character).
        A plain llama.cpp loop: prefill what the cache lacks, then sample with llama.cpp's own
        sampler chain (logit bias included; no Python logits processor) and decode one token at a
        time; the end-of-generation tokens stop it and are not counted. min_new_tokens bans them,
        by logit bias, for that many tokens."""
        tokens = self.tokenize(prompt)
        check_control_tokens(tokens[1:] if tokens[:1] == [self.llm.token_bos()] else tokens, self.control, prompt)
        check_fit(len(tokens), max_new_tokens, self.context_window)
        self._prefill(tokens, reuse_prefix)
        free = self._sampler(temperature, logit_bias or {})
        held = self._sampler(temperature, {**(logit_bias or {}), **self.eog_ban}) if min_new_tokens > 0 else free
        text = codecs.getincrementaldecoder("utf-8")("replace")
        last = None
        try:
            for n in range(max_new_tokens):
                if cancel is not None and cancel.is_set():
                    return
                if last is not None:  # the previous token is evaluated only once its text is out
                    self.llm.eval([last])
                last = held.sample(self.llm) if n < min_new_tokens else free.sample(self.llm)
                if last in self.eog:
                    return
                yield text.decode(self.llm.detokenize([last]))
        finally:
            free.close()
            held.close()

    def _prefill(self, tokens: list[int], reuse_prefix: bool) -> None:
        """Evaluate the prompt, keeping the cached prefix it shares with the last one (at least the
        last token is evaluated again, so the logits are the prompt's)."""
        keep = 0
        if reuse_prefix:
            cached = self.llm.input_ids[: self.llm.n_tokens]
            limit = min(len(cached), len(tokens) - 1)
            differs = np.flatnonzero(cached[:limit] != np.asarray(tokens[:limit]))
            keep = int(differs[0]) if differs.size else limit
        self.llm.n_tokens = keep  # Llama.eval drops the cache from here on, then decodes the rest
        self.llm.eval(tokens[keep:])

    def _sampler(self, temperature: float, bias: dict[int, float]) -> NativeSampler:
        return NativeSampler(self.llm.n_vocab(), temperature, bias)

    def close(self) -> None:
        self.llm.close()
