"""llama.cpp (llama-cpp-python) running a GGUF file."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from phibox.device.runtime.backend import STOP_TEXTS, check_control_tokens, check_fit, clean_piece, control_ids
from phibox.device.runtime.cpu_backends import ensure_cpu_backend


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

    def tokenize(self, text: str) -> list[int]:
        """The prompt's tokens, the template's markers parsed as control tokens (message content is
        neutralised when rendered, so nothing else can spell one)."""
        return self.llm.tokenize(text.encode(), add_bos=True, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def generate(self, prompt: str, max_new_tokens: int, temperature: float = 0.0,
                 cancel: threading.Event | None = None, reuse_prefix: bool = True,
                 logit_bias: dict[int, float] | None = None, min_new_tokens: int = 0) -> Iterator[str]:
        tokens = self.tokenize(prompt)
        check_control_tokens(tokens[1:] if tokens[:1] == [self.llm.token_bos()] else tokens, self.control, prompt)
        check_fit(len(tokens), max_new_tokens, self.context_window)
        if not reuse_prefix:
            self.llm.reset()
        if min_new_tokens > 0:
            yield from self._held_then_free(prompt, tokens, max_new_tokens, min_new_tokens, temperature, cancel,
                                            logit_bias)
            return
        stream = self._stream(tokens, max_new_tokens, temperature, logit_bias)
        try:
            for chunk in stream:
                if cancel is not None and cancel.is_set():
                    break
                piece, stop = clean_piece(chunk["choices"][0]["text"])
                if piece:
                    yield piece
                if stop:
                    break
        finally:
            stream.close()

    def _stream(self, tokens: list[int], max_new_tokens: int, temperature: float,
                logit_bias: dict[int, float] | None) -> Iterator[dict]:
        return self.llm.create_completion(tokens, max_tokens=max_new_tokens, temperature=temperature,
                                          top_k=1 if temperature == 0 else 40, stream=True, stop=list(STOP_TEXTS),
                                          logit_bias=logit_bias)

    def _held_then_free(self, prompt: str, tokens: list[int], max_new_tokens: int, min_new_tokens: int,
                        temperature: float, cancel: threading.Event | None,
                        logit_bias: dict[int, float] | None) -> Iterator[str]:
        """min_new_tokens: first that many tokens with the end-of-generation tokens banned (a logit
        bias keeps llama.cpp's fast sampler; a Python logits processor measured 20x slower at
        Phi-3-mini size), then the rest as usual, continuing from the same KV cache."""
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        banned = {t: -1e9 for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
        text = ""
        stream = self._stream(tokens, min_new_tokens, temperature, {**(logit_bias or {}), **banned})
        try:
            for chunk in stream:
                if cancel is not None and cancel.is_set():
                    return
                piece = chunk["choices"][0]["text"]
                text += piece
                if piece:
                    yield piece
        finally:
            stream.close()
        rest = max_new_tokens - min_new_tokens
        if rest > 0:
            yield from self.generate(prompt + text, rest, temperature, cancel, True, logit_bias, 0)

    def close(self) -> None:
        self.llm.close()
