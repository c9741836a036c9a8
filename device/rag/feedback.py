"""Technicians' verdicts on answers, kept in documents.db's ``feedback`` table (store migration 4).

A kiosk rating is written at once in its own short SQLite transaction, never under the documents
writer lock (documents.py): a re-index holds that lock for minutes but commits one document at a
time, so a rating waits at most for one document's transaction (SQLite's busy timeout), not the
whole job. Adopting a bundle's index, re-embedding and re-indexing touch only the documents,
chunks and vector tables: the feedback rows stay.

Connections come from ``Documents.feedback()`` (documents.py). Rows hold what the technician saw
(question, answer, the passages as shown with their chunk ids and sources, bundle, backend,
timings) and the verdict; an admin may review a row into a Q&A (``review``). ``training_lines``
turns rows into the JSONL that `phibox train --data` reads (``training_export`` also counts the
rows skipped).
No names are stored; nothing here logs question or correction text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from phibox.device.errors import PhiboxError
from phibox.device.prompt import NOT_COVERED
from phibox.device.rag import db

RATINGS = ("helpful", "not_helpful")
MISSING = "missing"
"""wrong_passage value: the passage that answers the question was not among those shown."""

SCHEMA = """
CREATE TABLE feedback(
    id INTEGER PRIMARY KEY,
    answer_id TEXT NOT NULL UNIQUE,       -- the kiosk's random id of the answer rated (re-rating updates)
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    passages TEXT NOT NULL,               -- JSON: the passages as shown, 1-based order
    covered INTEGER NOT NULL,
    cached INTEGER NOT NULL,
    bundle_name TEXT NOT NULL,
    bundle_version INTEGER NOT NULL,
    backend TEXT NOT NULL,
    timings TEXT NOT NULL,                -- JSON
    rating TEXT NOT NULL CHECK (rating IN ('helpful', 'not_helpful')),
    correction TEXT NOT NULL DEFAULT '',
    wrong_passage TEXT,                   -- a shown passage's number, 'missing', or NULL
    reviewed INTEGER NOT NULL DEFAULT 0,
    reviewed_answer TEXT NOT NULL DEFAULT '',
    reviewed_passages TEXT NOT NULL DEFAULT '[]',  -- JSON: 1-based numbers of the shown passages that answer it
    reviewed_not_covered INTEGER NOT NULL DEFAULT 0,
    reviewed_at TEXT
);
CREATE INDEX feedback_by_version ON feedback(bundle_name, bundle_version);
CREATE INDEX feedback_by_time ON feedback(created_at)
"""


class FeedbackError(PhiboxError):
    """A feedback row that does not exist, or a review that does not fit its row."""


def create_table(conn: db.Connection) -> None:
    """Store migration 4 (rag/store.py)."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ShownAnswer:
    """An answer as the kiosk showed it: what a rating row records besides the verdict."""

    question: str
    answer: str
    passages: list[dict[str, Any]]
    """Each: chunk_id, source, title, heading, page, text, cited (whether the answer cites it), in the
    order shown ([1] first)."""
    covered: bool
    cached: bool
    bundle_name: str
    bundle_version: int
    backend: str
    timings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Feedback:
    id: int
    created_at: str
    updated_at: str
    question: str
    answer: str
    passages: list[dict[str, Any]]
    covered: bool
    cached: bool
    bundle_name: str
    bundle_version: int
    backend: str
    timings: dict[str, Any]
    rating: str
    correction: str
    wrong_passage: str | None
    reviewed: bool
    reviewed_answer: str
    reviewed_passages: list[int]
    reviewed_not_covered: bool
    reviewed_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_COLUMNS = ("id, created_at, updated_at, question, answer, passages, covered, cached, bundle_name, bundle_version, "
            "backend, timings, rating, correction, wrong_passage, reviewed, reviewed_answer, reviewed_passages, "
            "reviewed_not_covered, reviewed_at")


def _row(r: Sequence[Any]) -> Feedback:
    return Feedback(id=r[0], created_at=r[1], updated_at=r[2], question=r[3], answer=r[4], passages=json.loads(r[5]),
                    covered=bool(r[6]), cached=bool(r[7]), bundle_name=r[8], bundle_version=int(r[9]), backend=r[10],
                    timings=json.loads(r[11]), rating=r[12], correction=r[13], wrong_passage=r[14],
                    reviewed=bool(r[15]), reviewed_answer=r[16], reviewed_passages=json.loads(r[17]),
                    reviewed_not_covered=bool(r[18]), reviewed_at=r[19])


def record(conn: db.Connection, answer_id: str, shown: ShownAnswer, rating: str, correction: str = "",
           wrong_passage: str | None = None) -> int:
    """Store a rating of the answer answer_id, or update the row when that answer was rated before
    (a tap on Helpful, then Not helpful with a correction, ends as one row). Returns the row id."""
    if rating not in RATINGS:
        raise FeedbackError(f"rating must be one of {', '.join(RATINGS)}, not {rating!r}")
    now = _now()
    conn.execute(
        "INSERT INTO feedback(answer_id, created_at, updated_at, question, answer, passages, covered, cached, "
        "bundle_name, bundle_version, backend, timings, rating, correction, wrong_passage) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(answer_id) DO UPDATE SET updated_at = excluded.updated_at, rating = excluded.rating, "
        "correction = excluded.correction, wrong_passage = excluded.wrong_passage",
        (answer_id, now, now, shown.question, shown.answer, json.dumps(shown.passages, ensure_ascii=False),
         int(shown.covered), int(shown.cached), shown.bundle_name, int(shown.bundle_version), shown.backend,
         json.dumps(shown.timings), rating, correction, wrong_passage))
    return int(conn.execute("SELECT id FROM feedback WHERE answer_id = ?", (answer_id,)).fetchone()[0])


def get(conn: db.Connection, feedback_id: int) -> Feedback:
    row = conn.execute(f"SELECT {_COLUMNS} FROM feedback WHERE id = ?", (feedback_id,)).fetchone()
    if row is None:
        raise FeedbackError(f"no feedback #{feedback_id}: it may have been deleted; reload the list")
    return _row(row)


def listing(conn: db.Connection, rating: str | None = None, source: str | None = None,
            reviewed: bool | None = None, limit: int = 200, offset: int = 0) -> list[Feedback]:
    """Newest first; filtered by rating, by a document source among the passages shown, reviewed or not."""
    where, args = ["1"], []
    if rating:
        where.append("rating = ?")
        args.append(rating)
    if reviewed is not None:
        where.append("reviewed = ?")
        args.append(int(reviewed))
    if source:
        where.append("EXISTS (SELECT 1 FROM json_each(passages) WHERE json_extract(value, '$.source') = ?)")
        args.append(source)
    rows = conn.execute(f"SELECT {_COLUMNS} FROM feedback WHERE {' AND '.join(where)} "
                        "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?", (*args, limit, offset)).fetchall()
    return [_row(r) for r in rows]


def sources(conn: db.Connection) -> list[str]:
    """Every document source among the passages of rated answers (for a filter)."""
    rows = conn.execute("SELECT DISTINCT json_extract(value, '$.source') FROM feedback, json_each(feedback.passages) "
                        "ORDER BY 1").fetchall()
    return [r[0] for r in rows if r[0]]


def review(conn: db.Connection, feedback_id: int, answer: str, passages: Sequence[int] = (),
           not_covered: bool = False) -> Feedback:
    """Make a row a reviewed Q&A: the right answer and the shown passages (1-based) that hold it, or
    "not covered by the manuals" (the device's refusal is then the answer to learn)."""
    row = get(conn, feedback_id)
    numbers = sorted({int(n) for n in passages})
    if any(not 1 <= n <= len(row.passages) for n in numbers):
        raise FeedbackError(f"passage numbers must be from 1 to {len(row.passages)} (the passages shown), "
                            f"not {numbers}")
    if not not_covered and not answer.strip():
        raise FeedbackError("write the right answer, or mark the question as not covered by the manuals")
    conn.execute("UPDATE feedback SET reviewed = 1, reviewed_answer = ?, reviewed_passages = ?, "
                 "reviewed_not_covered = ?, reviewed_at = ? WHERE id = ?",
                 ("" if not_covered else answer.strip(), json.dumps([] if not_covered else numbers),
                  int(not_covered), _now(), feedback_id))
    return get(conn, feedback_id)


def counts_by_version(conn: db.Connection) -> list[dict[str, Any]]:
    """Per bundle (name, version), newest version first: total, helpful, not_helpful, helpful_rate
    (None when no ratings)."""
    rows = conn.execute("SELECT bundle_name, bundle_version, COUNT(*), SUM(rating = 'helpful'), "
                        "SUM(rating = 'not_helpful') FROM feedback GROUP BY bundle_name, bundle_version "
                        "ORDER BY bundle_version DESC, bundle_name").fetchall()
    return [{"bundle": name, "version": int(version), "total": total, "helpful": helpful,
             "not_helpful": not_helpful, "helpful_rate": helpful / total if total else None}
            for name, version, total, helpful, not_helpful in rows]


@dataclass
class TrainingExport:
    lines: list[dict[str, Any]]
    skipped: int
    """Unreviewed not-helpful rows: a verdict without the right answer is no training example."""


def training_export(conn: db.Connection, since: datetime | None = None, reviewed_only: bool = False) -> TrainingExport:
    """The rows as `phibox train --data` examples (question, answer, context as shown) plus provenance:
    reviewed rows teach the reviewed answer (the device's refusal when marked not covered);
    unreviewed helpful rows teach the answer as shown (left out with reviewed_only); unreviewed
    not-helpful rows are skipped and counted."""
    args: list[Any] = []
    where = "1"
    if since is not None:
        where = "created_at >= ?"
        args.append((since if since.tzinfo else since.replace(tzinfo=UTC)).astimezone(UTC).isoformat(
            timespec="seconds"))
    lines, skipped = [], 0
    for row in (_row(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM feedback WHERE {where} ORDER BY id", args)):
        if row.reviewed:
            answer = NOT_COVERED if row.reviewed_not_covered else row.reviewed_answer
            answer_passages = [] if row.reviewed_not_covered else row.reviewed_passages
        elif row.rating == "helpful" and not reviewed_only:  # the answer as shown, its citations
            answer = row.answer if row.covered else NOT_COVERED
            answer_passages = [n for n, p in enumerate(row.passages, 1) if p.get("cited")]
        else:
            skipped += row.rating == "not_helpful"
            continue
        lines.append({
            "question": row.question, "answer": answer,
            "context": [{"source": p.get("source", ""), "heading": p.get("heading", ""), "page": p.get("page"),
                         "text": p.get("text", "")} for p in row.passages],
            "feedback": {"id": row.id, "bundle": row.bundle_name, "version": row.bundle_version,
                         "rating": row.rating, "reviewed": row.reviewed,
                         "not_covered": row.reviewed_not_covered if row.reviewed else not row.covered,
                         "answer_passages": answer_passages, "created_at": row.created_at},
        })
    return TrainingExport(lines, skipped)


def training_lines(conn: db.Connection, since: datetime | None = None, reviewed_only: bool = False
                   ) -> list[dict[str, Any]]:
    """The JSONL rows of the training export (see training_export, which also counts the skipped rows)."""
    return training_export(conn, since, reviewed_only).lines
