"""What the answer path reports while it works, as one small protocol.

The worker, the engine and the running device call an ``Observer``; the web room's Prometheus
``Metrics`` implements it, the command line uses ``NullObserver``. So nothing below the web room
knows about Prometheus, and every entry (kiosk, API, `phibox ask`, `phibox bench`) reports alike.
"""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def queue_depth(self, depth: int) -> None:
        """Questions now waiting for the generation worker."""

    def rejected(self, reason: str) -> None:
        """A question was turned away (queue_full, loading, ...)."""

    def generating(self, busy: bool) -> None:
        """The worker started (True) or finished (False) a generation."""

    def queue_wait(self, seconds: float) -> None:
        """How long a question waited before its generation started."""

    def first_token(self, seconds: float) -> None:
        """Generation start to first token."""

    def decode_rate(self, tokens_per_s: float) -> None:
        """Decode speed of one answer."""

    def retrieval(self, seconds: float) -> None:
        """One hybrid retrieval."""

    def model_ready(self, ready: bool) -> None:
        """A model is (or is no longer) loaded and answering."""

    def answer_cache(self, hit: bool) -> None:
        """A cacheable question found (True) or did not find (False) an earlier answer."""


class NullObserver:
    """Reports nowhere: the command line's observer."""

    def queue_depth(self, depth: int) -> None:
        return None

    def rejected(self, reason: str) -> None:
        return None

    def generating(self, busy: bool) -> None:
        return None

    def queue_wait(self, seconds: float) -> None:
        return None

    def first_token(self, seconds: float) -> None:
        return None

    def decode_rate(self, tokens_per_s: float) -> None:
        return None

    def retrieval(self, seconds: float) -> None:
        return None

    def model_ready(self, ready: bool) -> None:
        return None

    def answer_cache(self, hit: bool) -> None:
        return None
