"""Technicians' ratings: the feedback table (a real documents.db), the training export's rules, and
(further down) the kiosk's /api/feedback and the admin Feedback page."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from phibox.device.documents import Documents
from phibox.device.prompt import NOT_COVERED
from phibox.device.rag import db, feedback
from phibox.device.rag.store import MIGRATIONS, DocumentStore


def shown(question: str = "The press shows E42, what now?", *, version: int = 3, covered: bool = True,
          answer: str = "Check the hydraulic oil level [1].") -> feedback.ShownAnswer:
    passages = [{"chunk_id": 7, "source": "press.md", "title": "Press", "heading": "Press > Errors", "page": 3,
                 "text": "E42 low hydraulic pressure: check the oil level.", "cited": True},
                {"chunk_id": 9, "source": "pump.md", "title": "Pump", "heading": "Pump > Start", "page": None,
                 "text": "Start the pump with the green button.", "cited": False}]
    return feedback.ShownAnswer(question=question, answer=answer, passages=passages, covered=covered, cached=False,
                                bundle_name="plant7", bundle_version=version, backend="gguf",
                                timings={"total_ms": 812.5})


@pytest.fixture()
def documents(tmp_path: Path) -> Documents:
    return Documents(tmp_path / "documents.db")


def test_a_rating_is_stored_and_rating_again_updates_the_same_row(documents: Documents) -> None:
    with documents.feedback() as conn:
        first = feedback.record(conn, "a1", shown(), "helpful")
        again = feedback.record(conn, "a1", shown(), "not_helpful", correction="Check the pump first.",
                                wrong_passage="1")
        assert first == again
        rows = feedback.listing(conn)
    assert len(rows) == 1
    row = rows[0]
    assert (row.rating, row.correction, row.wrong_passage) == ("not_helpful", "Check the pump first.", "1")
    assert (row.bundle_name, row.bundle_version, row.backend) == ("plant7", 3, "gguf")
    assert [p["chunk_id"] for p in row.passages] == [7, 9] and row.passages[0]["source"] == "press.md"
    with documents.feedback() as conn, pytest.raises(feedback.FeedbackError, match="rating must be one of"):
        feedback.record(conn, "a2", shown(), "meh")


def test_listing_filters_by_rating_document_and_review(documents: Documents) -> None:
    with documents.feedback() as conn:
        feedback.record(conn, "a1", shown("q1"), "helpful")
        two = feedback.record(conn, "a2", shown("q2"), "not_helpful")
        assert [f.question for f in feedback.listing(conn, rating="not_helpful")] == ["q2"]
        assert len(feedback.listing(conn, source="pump.md")) == 2
        assert feedback.listing(conn, source="valve.md") == []
        assert feedback.sources(conn) == ["press.md", "pump.md"]
        feedback.review(conn, two, "Check the pump first.", [2])
        assert [f.question for f in feedback.listing(conn, reviewed=True)] == ["q2"]
        assert [f.question for f in feedback.listing(conn, reviewed=False)] == ["q1"]
        with pytest.raises(feedback.FeedbackError, match="from 1 to 2"):
            feedback.review(conn, two, "x", [3])
        with pytest.raises(feedback.FeedbackError, match="write the right answer"):
            feedback.review(conn, two, "  ")
        with pytest.raises(feedback.FeedbackError, match="no feedback #99"):
            feedback.get(conn, 99)


def test_counts_by_version_newest_first(documents: Documents) -> None:
    with documents.feedback() as conn:
        for i, rating in enumerate(["helpful", "not_helpful", "not_helpful", "helpful"]):
            feedback.record(conn, f"v3-{i}", shown(version=3), rating)
        for i, rating in enumerate(["helpful", "helpful", "helpful", "not_helpful"]):
            feedback.record(conn, f"v4-{i}", shown(version=4), rating)
        counts = feedback.counts_by_version(conn)
    assert [(c["version"], c["total"], c["helpful"], c["not_helpful"]) for c in counts] == [(4, 4, 3, 1), (3, 4, 2, 2)]
    assert counts[0]["helpful_rate"] == 0.75 and counts[1]["helpful_rate"] == 0.5


def test_training_lines_rules(documents: Documents) -> None:
    with documents.feedback() as conn:
        helpful = feedback.record(conn, "h", shown("helpful q"), "helpful")
        reviewed = feedback.record(conn, "r", shown("reviewed q"), "not_helpful", correction="the pump")
        feedback.review(conn, reviewed, "Start the pump first [2].", [2])
        refused = feedback.record(conn, "n", shown("not covered q"), "not_helpful")
        feedback.review(conn, refused, "", not_covered=True)
        feedback.record(conn, "s", shown("skipped q"), "not_helpful", correction="wrong")
        export = feedback.training_export(conn)
        reviewed_only = feedback.training_lines(conn, reviewed_only=True)
        later = feedback.training_lines(conn, since=datetime.now(UTC) + timedelta(days=1))
    by_q = {line["question"]: line for line in export.lines}
    assert set(by_q) == {"helpful q", "reviewed q", "not covered q"} and export.skipped == 1
    assert by_q["helpful q"]["answer"] == "Check the hydraulic oil level [1]."
    assert by_q["helpful q"]["feedback"]["answer_passages"] == [1]
    assert by_q["reviewed q"]["answer"] == "Start the pump first [2]."
    assert by_q["reviewed q"]["feedback"]["answer_passages"] == [2] and by_q["reviewed q"]["feedback"]["reviewed"]
    assert by_q["not covered q"]["answer"] == NOT_COVERED and by_q["not covered q"]["feedback"]["not_covered"]
    assert by_q["helpful q"]["context"][0] == {"source": "press.md", "heading": "Press > Errors", "page": 3,
                                               "text": "E42 low hydraulic pressure: check the oil level."}
    line = by_q["helpful q"]
    assert set(line) == {"question", "answer", "context", "feedback"}
    assert set(line["feedback"]) == {"id", "bundle", "version", "rating", "reviewed", "not_covered",
                                     "answer_passages", "created_at"}
    assert line["feedback"]["id"] == helpful and line["feedback"]["version"] == 3
    datetime.fromisoformat(line["feedback"]["created_at"])
    assert {q["question"] for q in reviewed_only} == {"reviewed q", "not covered q"}
    assert later == []


def test_schema_3_database_gains_the_feedback_table_in_place(tmp_path: Path) -> None:
    path = tmp_path / "documents.db"
    conn = db.connect(path)
    conn.isolation_level = None
    for version, migration in enumerate(MIGRATIONS[:3], start=1):  # what phibox wrote before schema 4
        migration(conn)
        conn.execute(f"PRAGMA user_version = {version}")
    conn.execute("INSERT INTO meta VALUES ('kept', 'yes')")
    conn.close()
    documents = Documents(path)
    with documents.feedback() as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 4
        feedback.record(conn, "a1", shown(), "helpful")
        assert conn.execute("SELECT value FROM meta WHERE key = 'kept'").fetchone()[0] == "yes"
    store = DocumentStore.open(path)  # the writer's open after the rating's migration: nothing to do
    store.close()


def test_a_rating_during_a_held_writer_lock_is_stored_at_once(documents: Documents) -> None:
    """A re-index holds the writer lock for minutes: the rating does not wait for it."""
    done: list[float] = []
    with documents.writing() as store:  # the long job: lock held, a document being committed
        def rate() -> None:
            start = time.perf_counter()
            with documents.feedback() as conn:
                feedback.record(conn, "during", shown(), "not_helpful", correction="check the pump")
            done.append(time.perf_counter() - start)

        with store.transaction():
            store.conn.execute("INSERT INTO meta VALUES ('job', 'one document')")
            worker = threading.Thread(target=rate)
            worker.start()
            time.sleep(0.3)  # the rating waits for this one document's transaction, no longer
        worker.join(timeout=5)
        assert done and done[0] < 4
        with documents.feedback() as conn:
            assert feedback.listing(conn)[0].correction == "check the pump"
