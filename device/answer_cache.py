"""Finished answers kept for repeated questions: technicians at one machine ask the same things.

An answer is found again only for the same normalised question, the same passages (chunk ids and
the hash of their text: an edited or re-indexed manual misses) and the same model (the model slot's
generation: after a bundle switch the old model's answers are never found again and age out).
Only greedy answers with default options are kept: they are what the model would say again.
Bounded, least recently used first out; thread-safe.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

_WORDS = re.compile(r"\w+")


@dataclass(frozen=True)
class CachedAnswer:
    text: str
    finish_reason: str
    tokens: int


def normalise(question: str) -> str:
    """Case, punctuation and spacing do not make another question."""
    return " ".join(_WORDS.findall(question.casefold()))


def cache_key(question: str, passages: Iterable[tuple[int, str]], max_new_tokens: int, model: int) -> str:
    digest = hashlib.sha256(f"{model}\0{normalise(question)}".encode())
    for chunk_id, text in passages:
        digest.update(f"\0{chunk_id}\0".encode())
        digest.update(hashlib.sha256(text.encode()).digest())
    digest.update(f"\0{max_new_tokens}".encode())
    return digest.hexdigest()


class AnswerCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CachedAnswer] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedAnswer | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: str, answer: CachedAnswer) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[key] = answer
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
