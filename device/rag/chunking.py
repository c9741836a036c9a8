"""Splitting sections into chunks along paragraphs, then sentences, then words, measured in
embedder tokens, with a little overlap between neighbours of the same section."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from phibox.device.rag.readers import Section
from phibox.device.rag.store import ChunkRow

_SENTENCE = re.compile(r"(?<=[.!?;:])\s+(?=[A-Z0-9(\"'])")


def _units(text: str, count: Callable[[str], int], limit: int) -> list[tuple[str, int]]:
    """(text, tokens) pieces no longer than limit: paragraphs, or their sentences, or word runs."""
    out: list[tuple[str, int]] = []
    for paragraph in (p.strip() for p in re.split(r"\n\s*\n", text)):
        if not paragraph:
            continue
        n = count(paragraph)
        if n <= limit:
            out.append((paragraph, n))
            continue
        for sentence in (s.strip() for s in _SENTENCE.split(paragraph)):
            n = count(sentence)
            if n <= limit:
                out.append((sentence, n))
            else:
                out.extend(_word_runs(sentence, count, limit))
    return out


def _word_runs(text: str, count: Callable[[str], int], limit: int) -> list[tuple[str, int]]:
    runs, words = [], text.split()
    while words:
        lo, hi = 1, len(words)
        while lo < hi:  # the longest prefix of words that fits
            mid = (lo + hi + 1) // 2
            if count(" ".join(words[:mid])) <= limit:
                lo = mid
            else:
                hi = mid - 1
        piece = " ".join(words[:lo])
        runs.append((piece, count(piece)))
        words = words[lo:]
    return runs


def chunk_sections(sections: Sequence[Section], count: Callable[[str], int], max_tokens: int,
                   overlap: int) -> list[ChunkRow]:
    """Chunks of at most max_tokens (plus joins); each keeps its section's heading and page."""
    chunks: list[ChunkRow] = []
    for section in sections:
        units = _units(section.text, count, max_tokens)
        current: list[tuple[str, int]] = []
        for unit in units:
            if current and sum(n for _, n in current) + unit[1] > max_tokens:
                chunks.append(_row(section, current))
                carried: list[tuple[str, int]] = []
                for previous in reversed(current):  # overlap: the tail of the previous chunk
                    if sum(n for _, n in carried) + previous[1] > overlap:
                        break
                    carried.insert(0, previous)
                current = carried if sum(n for _, n in carried) + unit[1] <= max_tokens else []
            current.append(unit)
        if current:
            chunks.append(_row(section, current))
    return chunks


def _row(section: Section, units: list[tuple[str, int]]) -> ChunkRow:
    return ChunkRow(heading=section.heading, page=section.page, text="\n\n".join(t for t, _ in units),
                    tokens=sum(n for _, n in units))
