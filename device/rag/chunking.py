"""Splitting sections into chunks measured in embedder tokens, following the document's blocks.

- Prose (paragraphs, lists) splits along paragraphs, then sentences and list items, then words.
- A table that fits a chunk is never split; a larger one splits by rows, each piece under the
  table's header row so it can be read alone. A code block that fits stays whole; a larger one
  splits at lines.
- Each chunk after the first of a section opens with the last ``overlap`` tokens or fewer of the
  previous chunk, cut at a sentence or word boundary (or whole lines of code), even when the
  previous paragraph is longer than ``overlap``. The only exception: a table or code block that
  fits a chunk but not beside the overlap starts its chunk alone. A table's rows are never carried
  as a fragment without their header.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from itertools import islice
from typing import NamedTuple

from phibox.device.rag.markdown import Block
from phibox.device.rag.readers import Section
from phibox.device.rag.store import ChunkRow

Count = Callable[[str], int]

_SENTENCE = re.compile(  # after a sentence (not after a list item's number), or before a list item
    r"(?<=[.!?;:])(?<!^\d[.)])(?<!^\d\d[.)])(?<!^\d\d\d[.)])\s+(?=[A-Z0-9(\"'])|\n(?=[ \t]*(?:[-*+]|\d{1,3}[.)])[ \t])",
    re.MULTILINE)
_WORD = re.compile(r"\s+")
_LINE = re.compile(r"\n")


class _Unit(NamedTuple):
    text: str
    tokens: int
    kind: str
    glue: str = "\n\n"
    """What joins it to the piece before it in a chunk: a blank line between blocks and paragraphs,
    a space (a newline in code) inside a split paragraph."""


def chunk_sections(sections: Sequence[Section], count: Count, max_tokens: int, overlap: int) -> list[ChunkRow]:
    """Chunks of at most max_tokens (plus the blank lines joining their pieces); each keeps its
    section's heading and page."""
    if not 0 <= overlap < max_tokens:
        raise ValueError(f"chunk overlap {overlap} must be at least 0 and below the chunk size {max_tokens}")
    chunks: list[ChunkRow] = []
    for section in sections:
        blocks = section.blocks or tuple(Block("prose", p) for p in re.split(r"\n\s*\n", section.text))
        current: list[_Unit] = []
        for unit in (u for block in blocks for u in _units(block, count, max_tokens, overlap)):
            if current and sum(u.tokens for u in current) + unit.tokens > max_tokens:
                chunks.append(_row(section, current))
                carried = _tail(current, count, overlap)
                current = carried if sum(u.tokens for u in carried) + unit.tokens <= max_tokens else []
            current.append(unit)
        if current:
            chunks.append(_row(section, current))
    return chunks


def _units(block: Block, count: Count, max_tokens: int, overlap: int) -> list[_Unit]:
    """A block as pieces to pack: whole when it fits (prose: fits beside the overlap), else split."""
    text = block.text.strip("\n")
    if not text.strip():
        return []
    n = count(text)
    if block.kind == "table":
        return [_Unit(text, n, "table")] if n <= max_tokens else _table_pieces(text, count, max_tokens)
    room = max_tokens - overlap
    if block.kind == "code":
        if n <= max_tokens:
            return [_Unit(text, n, "code")]
        return [_Unit(p, count(p), "code", glue or "\n\n") for p, glue in _finer(_runs(text, count, room, _LINE),
                                                                            count, room, _WORD)]
    out: list[_Unit] = []
    for paragraph in (p.strip() for p in re.split(r"\n\s*\n", text)):
        if not paragraph:
            continue
        sentences = [(paragraph, "")] if count(paragraph) <= room else _split(paragraph, _SENTENCE)
        out.extend(_Unit(p, count(p), "prose", glue or "\n\n") for p, glue in _finer(sentences, count, room, _WORD))
    return out


def _split(text: str, boundary: re.Pattern[str]) -> list[tuple[str, str]]:
    """(piece, the source's separator before it) at every boundary."""
    pieces, start, glue = [], 0, ""
    for match in boundary.finditer(text):
        if match.start() > start:
            pieces.append((text[start:match.start()], glue))
            start, glue = match.end(), match.group()
    return [*pieces, (text[start:], glue)]


def _finer(pieces: list[tuple[str, str]], count: Count, limit: int,
           boundary: re.Pattern[str]) -> list[tuple[str, str]]:
    """Pieces over limit split again at a finer boundary; each keeps the separator before it."""
    out: list[tuple[str, str]] = []
    for piece, glue in pieces:
        if count(piece) <= limit:
            out.append((piece, glue))
        else:
            runs = _runs(piece, count, limit, boundary)
            out.extend([(runs[0][0], glue), *runs[1:]])
    return out


def _runs(text: str, count: Count, limit: int, boundary: re.Pattern[str]) -> list[tuple[str, str]]:
    """(piece, the source's separator before it): the longest prefixes of text that end at a
    boundary and fit limit tokens, in order; a prefix with no boundary that fits comes back whole
    (a single long word or line)."""
    runs: list[tuple[str, str]] = []
    glue, most = "", 2 * limit + 16  # a piece of limit tokens holds fewer words or lines: look no further
    while text:
        cuts = [(m.start(), m.end()) for m in islice(boundary.finditer(text, 1), most)]
        if len(cuts) < most and count(text) <= limit:
            runs.append((text, glue))
            break
        lo, hi = 0, len(cuts)  # cuts[:lo] fit; find the last cut whose prefix fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(text[:cuts[mid - 1][0]]) <= limit:
                lo = mid
            else:
                hi = mid - 1
        end, start = cuts[max(lo, 1) - 1] if cuts else (len(text), len(text))
        runs.append((text[:end], glue))
        text, glue = text[start:], text[end:start]
    return runs


def _table_pieces(text: str, count: Count, max_tokens: int) -> list[_Unit]:
    """A table too large for one chunk, as runs of rows under a copy of its header row."""
    lines = text.splitlines()
    header, rows = "\n".join(lines[:2]), lines[2:]
    pieces: list[_Unit] = []
    run: list[str] = []
    for row in rows:
        candidate = "\n".join([header, *run, row])
        if run and count(candidate) > max_tokens:
            piece = "\n".join([header, *run])
            pieces.append(_Unit(piece, count(piece), "table"))
            run = []
            candidate = "\n".join([header, row])
        if not run and count(candidate) > max_tokens:  # one row larger than a chunk: words, no header
            words = _runs(row, count, max_tokens, _WORD)
            pieces.extend(_Unit(w, count(w), "prose", glue or "\n\n") for w, glue in words)
            continue
        run.append(row)
    if run or not pieces:
        piece = "\n".join([header, *run])
        pieces.append(_Unit(piece, count(piece), "table"))
    return pieces


def _tail(units: list[_Unit], count: Count, budget: int) -> list[_Unit]:
    """The end of a chunk, at most budget tokens: whole pieces from the end, then the end of the
    piece before them cut at a sentence or word boundary (code: whole lines; tables: not cut)."""
    carried: list[_Unit] = []
    for unit in reversed(units):
        if unit.tokens <= budget:
            carried.insert(0, unit)
            budget -= unit.tokens
            continue
        piece = _suffix(unit, count, budget)
        if piece is not None:
            carried.insert(0, piece)
        break
    return carried


def _suffix(unit: _Unit, count: Count, budget: int) -> _Unit | None:
    if unit.kind == "table" or budget <= 0:
        return None
    boundaries = [_LINE] if unit.kind == "code" else [_SENTENCE, _WORD]
    for boundary in boundaries:
        starts = [m.end() for m in boundary.finditer(unit.text) if m.end() < len(unit.text)]
        lo, hi = 0, len(starts)  # the earliest start whose suffix fits budget
        while lo < hi:
            mid = (lo + hi) // 2
            if count(unit.text[starts[mid]:]) <= budget:
                hi = mid
            else:
                lo = mid + 1
        if lo < len(starts):
            text = unit.text[starts[lo]:]
            n = count(text)
            if n * 2 >= budget or boundary is boundaries[-1]:
                return _Unit(text, n, unit.kind, unit.glue)
    return None


def _row(section: Section, units: list[_Unit]) -> ChunkRow:
    text = units[0].text + "".join(u.glue + u.text for u in units[1:])
    return ChunkRow(heading=section.heading, page=section.page, text=text, tokens=sum(u.tokens for u in units))
