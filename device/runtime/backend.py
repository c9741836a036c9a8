"""The protocol every model runtime implements (runtime/llama.py for GGUF, runtime/onnx.py for
ONNX) and the rules they share.

Both stream text, stop on Phi-3's ``<|end|>`` and ``<|endoftext|>`` and never emit them, refuse
prompts that would overflow the context, and keep the evaluated prompt prefix so the next
question re-evaluates only what changed (the system prompt is shared by every RAG prompt).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from phibox.device.errors import PhiboxError
from phibox.device.prompt import MARKERS, count_markers

STOP_TEXTS = ("<|end|>", "<|endoftext|>")


class ContextOverflowError(PhiboxError):
    """A prompt plus the answer would not fit the model's context window."""


class UnsupportedOptionError(PhiboxError):
    """A generation option this runtime cannot honour."""


class ControlTokenError(PhiboxError):
    """A prompt holds control tokens that the chat template did not put there (an injection)."""


class Backend(Protocol):
    name: str
    context_window: int

    def count_tokens(self, text: str) -> int: ...

    def generate(self, prompt: str, max_new_tokens: int, temperature: float = 0.0,
                 cancel: threading.Event | None = None, reuse_prefix: bool = True,
                 logit_bias: dict[int, float] | None = None, min_new_tokens: int = 0) -> Iterator[str]:
        """One item per generated token (the text it completes, possibly ""): the count is the
        answer's token count. The end-of-turn token is not yielded."""
        ...

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


def control_ids(tokenize_special: Callable[[str], list[int]]) -> frozenset[int]:
    """The ids of the template markers and of ``<s>``/``</s>`` in a tokenizer (each that is one token)."""
    ids = [tokenize_special(text) for text in (*MARKERS, "<s>", "</s>")]
    return frozenset(t[0] for t in ids if len(t) == 1)


def check_control_tokens(tokens: Sequence[int], ids: frozenset[int], prompt: str) -> None:
    """Refuse a prompt whose control tokens outnumber the template's markers: only the markers the
    template wrote may reach the model as control tokens (content is neutralised when rendered;
    this guards every other way a prompt could be built)."""
    found = sum(1 for t in tokens if t in ids)
    if found != count_markers(prompt):
        raise ControlTokenError(f"the prompt holds {found} control tokens where its chat template has "
                                f"{count_markers(prompt)}: refusing it (text may not spell <|...|> markers)")
