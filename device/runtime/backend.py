"""The protocol every model runtime implements (runtime/llama.py for GGUF, runtime/onnx.py for
ONNX) and the rules they share.

Both stream text, stop on Phi-3's ``<|end|>`` and ``<|endoftext|>`` and never emit them, refuse
prompts that would overflow the context, and keep the evaluated prompt prefix so the next
question re-evaluates only what changed (the system prompt is shared by every RAG prompt).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol

from phibox.device.errors import PhiboxError

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


def check_fit(n_prompt: int, max_new_tokens: int, window: int) -> None:
    if n_prompt + max_new_tokens > window:
        raise ContextOverflowError(
            f"the prompt has {n_prompt} tokens and the answer may take {max_new_tokens}: more than the model's "
            f"{window}-token context. Shorten the question or lower prompt_token_budget/max_new_tokens"
        )


def clean_piece(piece: str) -> tuple[str, bool]:
    """Drop any stop-token text that slipped through; True if one was seen (stop there)."""
    for stop in STOP_TEXTS:
        if stop in piece:
            return piece.split(stop, 1)[0], True
    return piece, False
