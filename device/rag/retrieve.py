"""Hybrid retrieval: sqlite-vec KNN and FTS5 BM25, fused by weighted reciprocal rank.

Vectors find paraphrases; keywords find part numbers and fault codes the embedder blurs. A
question's CJK text is searched as character bigrams in a second FTS5 table (cjk.py). Search always
returns the closest passages; whether they answer the question is relevance.py's decision
(``SearchResult.covered``), made from the best cosine, the question terms the top passages hold
and the agreement of the two lists. A question the manuals do not cover still shows its closest
passages ("closest, probably not it"), and the engine does not ask the model.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from phibox.device.config import EngineConfig
from phibox.device.rag import cjk, relevance
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.relevance import Calibration, Relevance
from phibox.device.rag.store import CJK_FTS, DocumentStore

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
    """The best passages, closest first; present even when the question is not covered."""
    retrieval_ms: float
    relevance: Relevance = relevance.NOTHING
    """Whether the hits answer the question, and the signals that decided it."""

    @property
    def covered(self) -> bool:
        return bool(self.hits) and self.relevance.covered


def _quoted(term: str) -> str:
    return f'"{term.replace(chr(34), "")}"'


def question_terms(question: str) -> list[str]:
    """The question's keywords for the word index: lower-case, no stopwords, no CJK (see cjk_terms)."""
    terms = {t.strip(".-/").lower() for t in _WORD.findall(cjk.strip(question))}
    return sorted(t for t in terms if (len(t) > 1 or t.isdigit()) and t not in STOPWORDS)


def fts_query(question: str) -> str:
    """An FTS5 MATCH expression: every word as a quoted term, any of them may match."""
    return " OR ".join(_quoted(t) for t in question_terms(question))


def search(store: DocumentStore, embedder: OnnxEmbedder | None, question: str, cfg: EngineConfig,
           keyword_only: bool = False, calibration: Calibration | None = None) -> SearchResult:
    """Hybrid search; keyword_only (no embedder, or vectors being rebuilt for a new one) uses FTS5 alone.
    calibration: the relevance decision's parameters (default: derived from the embedder's floor)."""
    started = time.perf_counter()
    if calibration is None:
        calibration = Calibration.for_embedder(embedder.spec) if embedder is not None else Calibration()
    with store.snapshot():  # one view of the index, even while an embedder switch commits
        hits, decision = _search(store, embedder, question, cfg, keyword_only, calibration)
    return SearchResult(hits, (time.perf_counter() - started) * 1000, decision)


def _search(store: DocumentStore, embedder: OnnxEmbedder | None, question: str, cfg: EngineConfig,
            keyword_only: bool, calibration: Calibration) -> tuple[list[Hit], Relevance]:
    conn = store.conn
    vec_rows: list[tuple[int, float]] = []
    if not keyword_only:
        if embedder is None:
            raise ValueError("hybrid search needs an embedder")
        store.check_embedder(embedder.spec)
        vector = embedder.embed_queries([question])[0]
        vec_rows = store.nearest(vector, cfg.candidates)
    words, grams = question_terms(question), cjk.bigrams(question) if store.has_cjk_index() else []
    keyword_lists = [_keyword_rows(conn, "chunk_fts", words, cfg.candidates),
                     _keyword_rows(conn, CJK_FTS, grams, cfg.candidates)]
    similarity = {int(r): 1.0 - float(d) ** 2 / 2.0 for r, d in vec_rows}  # unit vectors: L2 → cosine
    bm25 = {int(r): float(s) for r, s in keyword_lists[0]}
    fused: dict[int, float] = {}
    for weight, rows in ((cfg.vector_weight, vec_rows), *((cfg.keyword_weight, k) for k in keyword_lists)):
        for rank, (rowid, _) in enumerate(rows, start=1):
            if rows is vec_rows and similarity[int(rowid)] < calibration.cosine_floor:
                continue  # below the embedder's floor a vector rank is noise: keywords decide the order
            fused[int(rowid)] = fused.get(int(rowid), 0.0) + weight / (cfg.rrf_k + rank)
    ranked = sorted(fused.items(), key=lambda kv: kv[1], reverse=True)
    if not ranked:  # nothing reaches the floor and no keyword matched: still show the closest ones
        ranked = [(int(r), cfg.vector_weight / (cfg.rrf_k + i)) for i, (r, _) in enumerate(vec_rows, start=1)]
    if not ranked:
        return [], relevance.NOTHING
    top = [cid for cid, _ in ranked[: relevance.TOP]]
    keyword_top = [r for rows in keyword_lists for r in rows[: relevance.TOP]]
    stats = [*_term_stats(conn, "chunk_fts", words, top), *_term_stats(conn, CJK_FTS, grams, top)]
    n_chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
    agreement = relevance.agreement(_documents(conn, [int(r) for r, _ in vec_rows[: relevance.TOP]]),
                                    _documents(conn, [int(r) for r, _ in keyword_top]))
    best_cosine = max(similarity.values()) if similarity else None
    decision = relevance.decide(relevance.signals(best_cosine, calibration.cosine_floor, stats, n_chunks, agreement),
                                calibration)
    hits = [_hit(store, cid, score, similarity.get(cid), bm25.get(cid)) for cid, score in ranked[: cfg.k]]
    return hits, decision


def _keyword_rows(conn: Any, table: str, terms: list[str], limit: int) -> list[tuple[int, float]]:
    """(chunk id, BM25) of the chunks matching any of terms in table, best first."""
    if not terms:
        return []
    return [(int(r), float(s)) for r, s in conn.execute(
        f"SELECT rowid, bm25({table}) AS score FROM {table} WHERE {table} MATCH ? ORDER BY score LIMIT ?",
        (" OR ".join(_quoted(t) for t in terms), limit))]


def _term_stats(conn: Any, table: str, terms: list[str], top: list[int]) -> list[tuple[int, bool]]:
    """Per term: (chunks holding it, whether one of the top chunks does), counted by FTS5 itself
    (so stemming applies as in the search)."""
    marks = ",".join("?" * len(top))
    out = []
    for term in terms:
        df, found = conn.execute(
            f"SELECT count(*), coalesce(sum(rowid IN ({marks})), 0) FROM {table} WHERE {table} MATCH ?",
            (*top, _quoted(term))).fetchone()
        out.append((int(df), bool(found)))
    return out


def _documents(conn: Any, chunk_ids: list[int]) -> list[tuple[int, int]]:
    if not chunk_ids:
        return []
    return [(int(c), int(d)) for c, d in conn.execute(
        f"SELECT id, document_id FROM chunks WHERE id IN ({','.join('?' * len(chunk_ids))})", chunk_ids)]


def _hit(store: DocumentStore, chunk_id: int, score: float, sim: float | None, bm: float | None) -> Hit:
    source, title, heading, page, text = store.conn.execute(
        "SELECT d.source, d.title, c.heading, c.page, c.text FROM chunks c JOIN documents d ON d.id = c.document_id "
        "WHERE c.id = ?", (chunk_id,)).fetchone()
    return Hit(chunk_id, source, title, heading, page, text, round(score, 6),
               None if sim is None else round(sim, 4), None if bm is None else round(bm, 4))
