"""The answer: retrieve → fit passages into the prompt budget → generate → cite.

``Engine.answer`` yields events in the order a kiosk shows them: the passages (milliseconds after
the question), the answer's text as it streams, then the passages actually cited and the timings.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from device.backends import Backend
from device.config import EngineConfig
from device.embedder import OnnxEmbedder
from device.errors import PhiboxError
from device.prompt import Passage, build_prompt
from device.retrieve import Hit, SearchResult, search
from device.store import DocumentStore

NOT_COVERED = "The manuals on this device do not cover that question. Try other words, or ask a colleague."
_CITE = re.compile(r"\[(\d+)\]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


class QuestionTooLongError(PhiboxError):
    """The question alone does not fit the prompt budget."""


@dataclass
class Timings:
    retrieval_ms: float = 0.0
    prompt_tokens: int = 0
    first_token_ms: float | None = None
    generated_tokens: int = 0
    tokens_per_s: float | None = None
    total_ms: float = 0.0


@dataclass
class Answer:
    text: str
    covered: bool
    """False when no passage was relevant enough and the model was not asked."""
    passages: list[Hit]
    cited: list[int] = field(default_factory=list)
    """1-based numbers of the passages the answer cites with [n]."""
    timings: Timings = field(default_factory=Timings)

    def cited_hits(self) -> list[Hit]:
        return [self.passages[n - 1] for n in self.cited]

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "covered": self.covered, "cited": self.cited,
                "passages": [h.to_dict() for h in self.passages], "timings": asdict(self.timings)}


@dataclass(frozen=True)
class Event:
    kind: str
    """passages | token | done"""
    data: Any


def parse_citations(text: str, n_passages: int) -> list[int]:
    """[n] markers in order of first use, only those naming a passage that was given."""
    seen: list[int] = []
    for match in _CITE.finditer(text):
        n = int(match.group(1))
        if 1 <= n <= n_passages and n not in seen:
            seen.append(n)
    return seen


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"\w+", text.lower()) if len(w) > 2}


def dedupe(hits: Sequence[Hit], threshold: float = 0.8) -> list[Hit]:
    """Drop passages that mostly repeat a better-ranked one (overlapping chunks, copied sections)."""
    kept: list[Hit] = []
    for hit in hits:
        words = _words(hit.text)
        if all(len(words & _words(k.text)) / max(1, len(words | _words(k.text))) < threshold for k in kept):
            kept.append(hit)
    return kept


def trim_passage(text: str, question: str, max_tokens: int, count) -> str:
    """The passage's most relevant sentences (in their original order) within max_tokens."""
    if count(text) <= max_tokens:
        return text
    sentences = [s for s in _SENTENCE.split(text) if s.strip()]
    wanted = _words(question)
    ranked = sorted(range(len(sentences)), key=lambda i: (-len(_words(sentences[i]) & wanted), i))
    chosen: list[int] = []
    for i in ranked:
        if count(" ".join(sentences[j] for j in sorted([*chosen, i]))) <= max_tokens:
            chosen.append(i)
    if not chosen:  # one very long sentence: keep whole words from its start
        words, kept = sentences[ranked[0]].split(), []
        for word in words:
            if count(" ".join([*kept, word])) > max_tokens:
                break
            kept.append(word)
        return " ".join(kept) + " …"
    return " ".join(sentences[j] for j in sorted(chosen))


def fit_prompt(question: str, hits: Sequence[Hit], backend: Backend, budget: int) -> tuple[str, list[Hit], int]:
    """The prompt within budget model tokens: duplicates dropped, passages trimmed to their relevant
    part, then the lowest-ranked passages dropped one by one. Never cuts inside a token."""
    base = backend.count_tokens(build_prompt(question, []))
    if base > budget:
        raise QuestionTooLongError(f"the question takes {base} of the {budget} prompt tokens: ask it more briefly")
    kept = dedupe(hits)
    share = max(32, (budget - base) // max(1, len(kept)))
    passages = [Passage(h.source, trim_passage(h.text, question, share, backend.count_tokens), h.heading, h.page)
                for h in kept]
    while True:
        prompt = build_prompt(question, passages)
        n = backend.count_tokens(prompt)
        if n <= budget or not passages:
            return prompt, kept[: len(passages)], n
        passages.pop()


class Engine:
    """Everything the device needs to answer: the index, the embedder and a loaded model."""

    def __init__(self, store: DocumentStore, embedder: OnnxEmbedder, backend: Backend | None, cfg: EngineConfig):
        self.store, self.embedder, self.backend, self.cfg = store, embedder, backend, cfg
        self.lock = threading.Lock()
        """One generation at a time: the model holds one KV cache."""

    def search(self, question: str) -> SearchResult:
        return search(self.store, self.embedder, question, self.cfg)

    def answer(self, question: str, *, cancel: threading.Event | None = None, max_new_tokens: int | None = None,
               temperature: float | None = None, reuse_prefix: bool = True, min_new_tokens: int = 0) -> Iterator[Event]:
        started = time.perf_counter()
        result = self.search(question)
        timings = Timings(retrieval_ms=round(result.retrieval_ms, 2))
        if not result.hits:
            yield Event("passages", [])
            yield Event("token", NOT_COVERED)
            timings.total_ms = round((time.perf_counter() - started) * 1000, 2)
            yield Event("done", Answer(NOT_COVERED, False, [], [], timings))
            return
        if self.backend is None:
            raise PhiboxError("no model is loaded: search works, answers need a bundle with a model")
        max_new = max_new_tokens or self.cfg.max_new_tokens
        budget = min(self.cfg.prompt_token_budget, self.backend.context_window - max_new)
        prompt, used, timings.prompt_tokens = fit_prompt(question, result.hits, self.backend, budget)
        yield Event("passages", used)
        pieces: list[str] = []
        with self.lock:
            gen_start = time.perf_counter()
            for piece in self.backend.generate(prompt, max_new, self.cfg.temperature if temperature is None
                                               else temperature, cancel, reuse_prefix,
                                               min_new_tokens=min_new_tokens):
                if timings.first_token_ms is None:
                    timings.first_token_ms = round((time.perf_counter() - gen_start) * 1000, 2)
                pieces.append(piece)
                yield Event("token", piece)
            gen_s = time.perf_counter() - gen_start
        text = "".join(pieces).strip()
        timings.generated_tokens = self.backend.count_tokens(text) - self.backend.count_tokens("") if text else 0
        if timings.first_token_ms is not None and timings.generated_tokens > 1:
            decode_s = gen_s - timings.first_token_ms / 1000
            timings.tokens_per_s = round((timings.generated_tokens - 1) / max(decode_s, 1e-9), 2)
        timings.total_ms = round((time.perf_counter() - started) * 1000, 2)
        yield Event("done", Answer(text, True, used, parse_citations(text, len(used)), timings))
