"""The two runtimes behind one small protocol: llama.cpp for GGUF, onnxruntime-genai for ONNX.

Both stream text, stop on Phi-3's ``<|end|>`` and ``<|endoftext|>`` and never emit them, refuse
prompts that would overflow the context, and keep the evaluated prompt prefix so the next
question re-evaluates only what changed (the system prompt is shared by every RAG prompt).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from device.errors import PhiboxError

STOP_TEXTS = ("<|end|>", "<|endoftext|>")


class ContextOverflowError(PhiboxError):
    """A prompt plus the answer would not fit the model's context window."""


class UnsupportedOptionError(PhiboxError):
    """A generation option this runtime cannot honour."""


class Backend(Protocol):
    name: str
    context_window: int

    def count_tokens(self, text: str) -> int: ...

    def generate(self, prompt: str, max_new_tokens: int, temperature: float = 0.0,
                 cancel: threading.Event | None = None, reuse_prefix: bool = True,
                 logit_bias: dict[int, float] | None = None, min_new_tokens: int = 0) -> Iterator[str]: ...

    def close(self) -> None: ...


def _check_fit(n_prompt: int, max_new_tokens: int, window: int) -> None:
    if n_prompt + max_new_tokens > window:
        raise ContextOverflowError(
            f"the prompt has {n_prompt} tokens and the answer may take {max_new_tokens}: more than the model's "
            f"{window}-token context. Shorten the question or lower prompt_token_budget/max_new_tokens"
        )


def _clean(piece: str) -> tuple[str, bool]:
    """Drop any stop-token text that slipped through; True if one was seen (stop there)."""
    for stop in STOP_TEXTS:
        if stop in piece:
            return piece.split(stop, 1)[0], True
    return piece, False


class LlamaCppBackend:
    """A GGUF model in llama-cpp-python, loaded once."""

    name = "gguf"

    def __init__(self, gguf: Path, context_window: int, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_ctx=context_window, n_threads=threads, n_threads_batch=threads,
                         verbose=False)
        self.context_window = context_window

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=True, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def generate(self, prompt: str, max_new_tokens: int, temperature: float = 0.0,
                 cancel: threading.Event | None = None, reuse_prefix: bool = True,
                 logit_bias: dict[int, float] | None = None, min_new_tokens: int = 0) -> Iterator[str]:
        tokens = self.tokenize(prompt)
        _check_fit(len(tokens), max_new_tokens, self.context_window)
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
                piece, stop = _clean(chunk["choices"][0]["text"])
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


class OnnxGenaiBackend:
    """An onnxruntime-genai model folder; one live generator rewound to the shared prefix."""

    name = "onnx"

    def __init__(self, model_dir: Path, threads: int) -> None:
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(model_dir))
        # The default session options used one core on a 2-core box (measured): set the threads.
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        genai = json.loads((model_dir / "genai_config.json").read_text())
        self.context_window = int(genai["model"]["context_length"])
        self.generator = None
        self.tokens: list[int] = []

    def tokenize(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def _start(self, tokens: list[int], temperature: float, reuse_prefix: bool, min_new_tokens: int = 0) -> None:
        common = 0
        if reuse_prefix and self.generator is not None and temperature == 0:
            while common < min(len(tokens) - 1, len(self.tokens)) and tokens[common] == self.tokens[common]:
                common += 1
        if common > 0:
            self.generator.rewind_to(common)
        else:
            params = self.og.GeneratorParams(self.model)
            options = {"max_length": self.context_window, "do_sample": temperature > 0}
            if min_new_tokens:  # a fresh generator: min_length counts the prompt too
                options["min_length"] = len(tokens) + min_new_tokens
            if temperature > 0:
                options.update(temperature=temperature, top_k=40)
            params.set_search_options(**options)
            self.generator = self.og.Generator(self.model, params)
        self.generator.append_tokens(tokens[common:])
        self.tokens = list(tokens)

    def generate(self, prompt: str, max_new_tokens: int, temperature: float = 0.0,
                 cancel: threading.Event | None = None, reuse_prefix: bool = True,
                 logit_bias: dict[int, float] | None = None, min_new_tokens: int = 0) -> Iterator[str]:
        if logit_bias:
            raise UnsupportedOptionError("logit_bias is not supported by the onnx backend; use the gguf one")
        tokens = self.tokenize(prompt)
        _check_fit(len(tokens), max_new_tokens, self.context_window)
        self._start(tokens, temperature, reuse_prefix and min_new_tokens == 0, min_new_tokens)
        stream = self.tokenizer.create_stream()
        for _ in range(max_new_tokens):
            if (cancel is not None and cancel.is_set()) or self.generator.is_done():
                break
            self.generator.generate_next_token()
            if self.generator.is_done():  # stopped on <|end|> or <|endoftext|>, which is not emitted
                break
            token = int(self.generator.get_next_tokens()[0])
            self.tokens.append(token)
            piece, stop = _clean(stream.decode(token))
            if piece:
                yield piece
            if stop:
                break

    def close(self) -> None:
        self.generator = None
        del self.model
