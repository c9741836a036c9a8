"""Chinese, Japanese and Korean text for keyword search: overlapping character bigrams.

FTS5's unicode61 tokenizer makes a whole run of CJK characters one token (there are no spaces),
so "压力下降" in a question never matches "液压压力下降时" in a manual. The trigram tokenizer
would need three characters per term, and Chinese words are mostly two (压力, 油温). So chunks'
CJK runs are indexed as their overlapping bigrams (压力 力下 下降) in a second FTS5 table, and a
question's CJK runs are cut the same way: any shared two-character word matches, as in Lucene's
CJK analyzer. A run of one character stays a unigram.
"""

from __future__ import annotations

import re
from typing import Any

TABLE = "chunk_cjk"
"""FTS5 table of the chunks' CJK character bigrams (schema 3), rowid = chunk id."""

_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+")


def runs(text: str) -> list[str]:
    """The runs of CJK characters in text."""
    return _CJK.findall(text)


def strip(text: str) -> str:
    """text with its CJK characters replaced by spaces (what the word index sees of a question)."""
    return _CJK.sub(" ", text)


def _grams(text: str) -> list[str]:
    return [g for run in runs(text) for g in ([run] if len(run) == 1 else [run[i:i + 2] for i in range(len(run) - 1)])]


def bigrams(text: str) -> list[str]:
    """Distinct bigrams (unigrams for one-character runs) of text's CJK runs, in order of first use."""
    return list(dict.fromkeys(_grams(text)))


def gram_text(text: str) -> str:
    """What the CJK index holds for a chunk: all its bigrams, separated by spaces ("" without CJK)."""
    return " ".join(_grams(text))


def create_index(conn: Any) -> None:
    """The CJK bigram table, filled from the chunks already in the database (store migration 3)."""
    conn.execute(f"CREATE VIRTUAL TABLE {TABLE} USING fts5(grams, tokenize = 'unicode61')")
    rows = conn.execute("SELECT c.id, d.title, c.heading, c.text FROM chunks c "
                        "JOIN documents d ON d.id = c.document_id").fetchall()
    for cid, title, heading, text in rows:
        index_chunk(conn, int(cid), " > ".join(p for p in (title, heading) if p), text)


def index_chunk(conn: Any, chunk_id: int, heading: str, text: str) -> None:
    """A chunk's row in the CJK index; only chunks with CJK text get one."""
    grams = gram_text(f"{heading}\n{text}")
    if grams:
        conn.execute(f"INSERT INTO {TABLE}(rowid, grams) VALUES (?, ?)", (chunk_id, grams))
