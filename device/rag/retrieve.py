"""Hybrid retrieval: sqlite-vec KNN and FTS5 BM25, fused by weighted reciprocal rank.

Vectors find paraphrases; keywords find part numbers and fault codes the embedder blurs. A hit
counts only when its cosine similarity reaches ``min_similarity`` or its keywords matched, so a
question the manuals do not cover gets no passages rather than the least bad ones.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from phibox.device.config import EngineConfig
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.store import DocumentStore

_WORD = re.compile(r"[\w][\w\-./]*", re.UNICODE)
STOPWORDS = frozenset(
    "a about after all also an and any are as at be been before but by can could did do does doing each for from "
    "get got had has have how i if in into is it its just let may me might must my need no not of off often on or "
    "our out shall should so some than that the their them then there these they this those to too up use very "
    "was we were what when where which who why will with would you your".split()
)
"""Words too common to count as a keyword match (they would match every manual)."""


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    source: str
    title: str
    heading: str
    page: int | None
    text: str
    score: float
    """Fused reciprocal-rank score (higher is better)."""
    similarity: float | None
    """Cosine similarity to the question, when vector search found this chunk."""
    bm25: float | None
    """FTS5 BM25 score (lower is better), when keyword search found this chunk."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    retrieval_ms: float


def fts_query(question: str) -> str:
    """An FTS5 MATCH expression: every word as a quoted term, any of them may match."""
    terms = {t.strip(".-/").lower() for t in _WORD.findall(question)}
    terms = {t for t in terms if (len(t) > 1 or t.isdigit()) and t not in STOPWORDS}
    return " OR ".join(f'"{t.replace(chr(34), "")}"' for t in sorted(terms))


def search(store: DocumentStore, embedder: OnnxEmbedder | None, question: str, cfg: EngineConfig,
           keyword_only: bool = False) -> SearchResult:
    """Hybrid search; keyword_only (no embedder, or vectors being rebuilt for a new one) uses FTS5 alone."""
    started = time.perf_counter()
    with store.snapshot():  # one view of the index, even while an embedder switch commits
        hits = _search(store, embedder, question, cfg, keyword_only)
    return SearchResult(hits, (time.perf_counter() - started) * 1000)


def _search(store: DocumentStore, embedder: OnnxEmbedder | None, question: str, cfg: EngineConfig,
            keyword_only: bool) -> list[Hit]:
    conn = store.conn
    vec_rows: list[tuple[int, float]] = []
    if not keyword_only:
        if embedder is None:
            raise ValueError("hybrid search needs an embedder")
        store.check_embedder(embedder.spec)
        vector = embedder.embed_queries([question])[0]
        vec_rows = store.nearest(vector, cfg.candidates)
    query = fts_query(question)
    fts_rows = conn.execute(
        "SELECT rowid, bm25(chunk_fts) AS score FROM chunk_fts WHERE chunk_fts MATCH ? ORDER BY score LIMIT ?",
        (query, cfg.candidates)).fetchall() if query else []
    fused: dict[int, float] = {}
    similarity = {int(r): 1.0 - float(d) ** 2 / 2.0 for r, d in vec_rows}  # unit vectors: L2 → cosine
    bm25 = {int(r): float(s) for r, s in fts_rows}
    for rank, (rowid, _) in enumerate(vec_rows, start=1):
        if similarity[int(rowid)] >= cfg.min_similarity:
            fused[int(rowid)] = fused.get(int(rowid), 0.0) + cfg.vector_weight / (cfg.rrf_k + rank)
    for rank, (rowid, _) in enumerate(fts_rows, start=1):
        fused[int(rowid)] = fused.get(int(rowid), 0.0) + cfg.keyword_weight / (cfg.rrf_k + rank)
    best = sorted(fused.items(), key=lambda kv: kv[1], reverse=True)[: cfg.k]
    return [_hit(store, cid, score, similarity.get(cid), bm25.get(cid)) for cid, score in best]


def _hit(store: DocumentStore, chunk_id: int, score: float, sim: float | None, bm: float | None) -> Hit:
    source, title, heading, page, text = store.conn.execute(
        "SELECT d.source, d.title, c.heading, c.page, c.text FROM chunks c JOIN documents d ON d.id = c.document_id "
        "WHERE c.id = ?", (chunk_id,)).fetchone()
    return Hit(chunk_id, source, title, heading, page, text, round(score, 6),
               None if sim is None else round(sim, 4), None if bm is None else round(bm, 4))
