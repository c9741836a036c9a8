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


# --- the kiosk's /api/feedback and the admin Feedback page (Flask test client, a real model) ----------
@pytest.fixture(scope="module")
def app(lifecycle_files, admin_keys, tiny_bundle_dir: Path, tmp_path_factory):
    """plant7 v3 active over a state directory with the sample manuals; an admin password set."""
    import shutil

    from docs_kit import write_corpus

    from phibox.device.config import EngineConfig
    from phibox.device.lifecycle import installer
    from phibox.device.lifecycle.state import StateDir
    from phibox.device.rag.embedder import OnnxEmbedder
    from phibox.device.rag.ingest import ingest
    from phibox.device.service import DeviceService
    from phibox.device.web import auth
    from phibox.device.web.app import create_app
    from phibox.device.web.metrics import Metrics
    from phibox.device.web.settings import ServeConfig

    root = tmp_path_factory.mktemp("feedback")
    state = StateDir(root / "state").init()
    shutil.copy(admin_keys[1], state.keys / "admin.pub")
    installer.install(lifecycle_files["v3"], state)
    store = DocumentStore.open(state.db)
    ingest([write_corpus(root / "manuals")], store, OnnxEmbedder(tiny_bundle_dir / "embedder"), EngineConfig(),
           progress=False)
    store.close()
    auth.set_password(state, "a long admin password")
    service = DeviceService(state.bundle_dir(3), state.db, EngineConfig(max_new_tokens=8), Metrics(), state=state,
                            backend="gguf")
    service.start(background=False)
    application = create_app(service, ServeConfig(backend="gguf", max_correction_chars=50, recent_answers=3))
    yield application
    service.close()


def ask(client, question: str) -> dict:
    """Ask on the kiosk's API; the done event's data."""
    response = client.post("/api/ask", json={"question": question})
    assert response.status_code == 200, response.get_data(as_text=True)
    events = [block for block in response.get_data(as_text=True).split("\n\n") if block.startswith("event: done")]
    import json

    return json.loads(events[0].split("data: ", 1)[1])


def rows_of(app) -> list[feedback.Feedback]:
    with app.config["PHIBOX_SERVICE"].documents.feedback() as conn:
        return feedback.listing(conn)


def test_rating_an_answer_stores_what_the_technician_saw_and_a_second_tap_updates_it(app, caplog) -> None:
    import logging

    client = app.test_client()
    question = "The press shows E42 zebra-marker-7, what now?"
    with caplog.at_level(logging.DEBUG):
        done = ask(client, question)
        answer_id = done["answer_id"]
        assert len(answer_id) >= 20
        first = client.post("/api/feedback", json={"answer_id": answer_id, "rating": "helpful"})
        assert first.status_code == 200 and first.get_json()["saved"]
        again = client.post("/api/feedback", json={"answer_id": answer_id, "rating": "not_helpful",
                                                   "correction": "Check the oil first, zebra.", "passage": 1})
        assert again.status_code == 200
    mine = [r for r in rows_of(app) if r.question == question]
    assert len(mine) == 1
    row = mine[0]
    assert (row.rating, row.correction, row.wrong_passage) == ("not_helpful", "Check the oil first, zebra.", "1")
    assert (row.bundle_name, row.bundle_version, row.backend) == ("plant7", 3, "gguf")
    assert row.passages and row.passages[0]["source"] == "press.md" and row.passages[0]["chunk_id"] > 0
    assert row.answer == done["text"] and row.timings["retrieval_ms"] >= 0
    assert "zebra" not in caplog.text  # neither the question nor the correction in any log line
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "zebra" not in metrics and "/api/feedback" in metrics


def test_bad_ratings_get_the_apis_error_shapes(app) -> None:
    client = app.test_client()
    answer_id = ask(client, "How do I start the pump?")["answer_id"]
    cases = [
        (client.post("/api/feedback", data="rating=helpful"), 400, "Send JSON"),
        (client.post("/api/feedback", json={"answer_id": answer_id, "rating": "great"}), 400, "rating"),
        (client.post("/api/feedback", json={"answer_id": answer_id, "rating": "not_helpful", "correction": "x" * 51}),
         413, "limit is 50"),
        (client.post("/api/feedback", json={"answer_id": answer_id, "rating": "not_helpful", "passage": 99}),
         400, "passage"),
        (client.post("/api/feedback", json={"answer_id": "made-up", "rating": "helpful"}), 404, "ask the question"),
    ]
    for response, status, words in cases:
        assert response.status_code == status and words in response.get_json()["error"], response.get_json()
    missing = client.post("/api/feedback", json={"answer_id": answer_id, "rating": "not_helpful",
                                                 "passage": "missing"})
    assert missing.status_code == 200


def test_only_recent_answers_can_be_rated(app) -> None:
    client = app.test_client()
    oldest = ask(client, "What does E42 mean?")["answer_id"]
    for question in ("Pump start?", "Press pressure?", "Valve check?"):  # the app keeps the last 3
        ask(client, question)
    gone = client.post("/api/feedback", json={"answer_id": oldest, "rating": "helpful"})
    assert gone.status_code == 404


def test_a_rating_during_a_reindex_is_stored(app) -> None:
    """A re-index holds the documents writer lock; the technician's rating is stored meanwhile."""
    client = app.test_client()
    answer_id = ask(client, "Pump pressure during re-index?")["answer_id"]
    documents = app.config["PHIBOX_SERVICE"].documents
    with documents.writer_lock():
        response = client.post("/api/feedback", json={"answer_id": answer_id, "rating": "helpful"})
        assert response.status_code == 200 and response.get_json()["written"]
        assert any(r.question == "Pump pressure during re-index?" for r in rows_of(app))


def test_a_rating_held_back_by_a_long_transaction_is_written_when_it_ends(app) -> None:
    from phibox.device.rag import db as rag_db

    client = app.test_client()
    answer_id = ask(client, "Held back?")["answer_id"]
    documents = app.config["PHIBOX_SERVICE"].documents
    inbox = app.config["PHIBOX_FEEDBACK_INBOX"]
    blocker = rag_db.connect(documents.path)  # a re-embed switches all vectors in one long transaction
    blocker.isolation_level = None
    blocker.execute("PRAGMA busy_timeout = 0")
    blocker.execute("BEGIN IMMEDIATE")
    try:
        response = client.post("/api/feedback", json={"answer_id": answer_id, "rating": "not_helpful"})
        assert response.status_code == 202 and inbox.pending() == 1
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    deadline = time.time() + 10
    while inbox.pending() and time.time() < deadline:
        time.sleep(0.1)
    assert any(r.question == "Held back?" for r in rows_of(app))


def login(client) -> str:
    import re

    page = client.get("/admin/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert client.post("/admin/login", data={"csrf": csrf, "password": "a long admin password"}).status_code == 302
    return re.search(r'data-csrf="([^"]+)"', client.get("/admin/feedback").get_data(as_text=True)).group(1)


def test_admin_feedback_page_counts_by_version_reviews_and_exports(app) -> None:
    import json

    service = app.config["PHIBOX_SERVICE"]
    with service.documents.feedback() as conn:
        for i, rating in enumerate(["helpful", "not_helpful", "not_helpful"]):
            feedback.record(conn, f"v2-{i}", shown(f"old question {i}", version=2), rating)
    client = app.test_client()
    assert client.get("/admin/feedback").status_code == 302  # a session first
    csrf = login(client)
    page = client.get("/admin/feedback").get_data(as_text=True)
    assert page.index(">3<") < page.index(">2<") and "33 %" in page  # v3 above v2; v2: 1 of 3 helpful
    only_bad = client.get("/admin/feedback?rating=not_helpful&source=press.md").get_data(as_text=True)
    assert "old question 1" in only_bad and "old question 0" not in only_bad
    target = next(r for r in rows_of(app) if r.question == "old question 1")
    url = f"/admin/feedback/{target.id}/review"
    assert client.post(url, json={"answer": "Check the oil.", "passages": [1]}).status_code == 400  # no CSRF
    saved = client.post(url, json={"answer": "Check the oil [1].", "passages": [1]}, headers={"X-CSRF-Token": csrf})
    assert saved.status_code == 200 and saved.get_json()["item"]["reviewed"]
    bad = client.post(url, json={"answer": "x", "passages": [9]}, headers={"X-CSRF-Token": csrf})
    assert bad.status_code == 400 and "from 1 to 2" in bad.get_json()["error"]
    export = client.get("/admin/feedback/export.jsonl?reviewed_only=1")
    lines = [json.loads(line) for line in export.get_data(as_text=True).splitlines()]
    assert [line["question"] for line in lines] == ["old question 1"] and lines[0]["answer"] == "Check the oil [1]."
    assert "attachment" in export.headers["Content-Disposition"]


def test_the_latest_answers_comparison_is_shown(app) -> None:
    import json

    state = app.config["PHIBOX_SERVICE"].state_dir
    (state.root / "feedback").mkdir(exist_ok=True)
    (state.root / "feedback" / "eval-answers.json").write_text(json.dumps({
        "bundles": ["plant7 v3", "plant7 v4"], "rows": [], "created_at": "2025-05-01T10:00:00+00:00",
        "summary": {"plant7 v3": {"retrieval_hit": 0.5, "citation_overlap": 0.25, "token_f1": 0.4, "questions": 8},
                    "plant7 v4": {"retrieval_hit": 0.75, "citation_overlap": 0.5, "token_f1": 0.61, "questions": 8}}}))
    client = app.test_client()
    login(client)
    page = client.get("/admin/feedback").get_data(as_text=True)
    assert 'id="comparison"' in page and "plant7 v4" in page and "0.61" in page
