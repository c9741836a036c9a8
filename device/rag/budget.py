"""The prompt budget: a question and its passages fitted into a fixed number of model tokens.

Prefill is the latency a technician feels (about 35 prompt tokens/s on 2 cores at Phi-3-mini
size), so the RAG prompt has a budget: near-duplicate passages go first, then each passage is
trimmed to its sentences that share words with the question, then the lowest-ranked passages
are dropped. Token counts come from the model's own tokenizer (``count``); never cut in a token.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from phibox.device.errors import PhiboxError
from phibox.device.prompt import Passage, build_prompt
from phibox.device.rag.retrieve import Hit

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


class QuestionTooLongError(PhiboxError):
    """The question alone does not fit the prompt budget."""


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


def trim_passage(text: str, question: str, max_tokens: int, count: Callable[[str], int]) -> str:
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


def rank_shares(room: int, n: int) -> list[int]:
    """Tokens each of n ranked passages may keep: the best-ranked passage, the likeliest to hold the
    answer, gets the most (weights 1, 1/2^1.5, 1/3^1.5, ...), none less than 32."""
    weights = [1 / rank**1.5 for rank in range(1, n + 1)]
    return [max(32, int(room * w / sum(weights))) for w in weights]


def by_source(hits: Sequence[Hit]) -> list[Hit]:
    """Hits of one document side by side (the prompt names each document once), documents in the
    order of their best-ranked hit, each document's hits in rank order."""
    first: dict[str, int] = {}
    for rank, hit in enumerate(hits):
        first.setdefault(hit.source, rank)
    return sorted(hits, key=lambda h: first[h.source])


def fit_prompt(question: str, hits: Sequence[Hit], count: Callable[[str], int], budget: int
               ) -> tuple[str, list[Hit], int]:
    """The prompt within budget model tokens: duplicates dropped, passages trimmed to their relevant
    part, then the lowest-ranked passages dropped one by one. Never cuts inside a token. Returns the
    prompt, the hits it holds in their prompt order (passage [n] is hit n-1) and its token count."""
    base = count(build_prompt(question, []))
    if base > budget:
        raise QuestionTooLongError(f"the question takes {base} of the {budget} prompt tokens: ask it more briefly")
    ranked = dedupe(hits)
    shares = rank_shares(budget - base, len(ranked))
    trimmed = {h.chunk_id: Passage(h.source, trim_passage(h.text, question, share, count), h.heading, h.page)
               for h, share in zip(ranked, shares, strict=True)}
    while True:
        used = by_source(ranked)
        prompt = build_prompt(question, [trimmed[h.chunk_id] for h in used])
        n = count(prompt)
        if n <= budget or not ranked:
            return prompt, used, n
        ranked.pop()
