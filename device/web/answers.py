"""The kiosk's memory of recent answers (so a rating can name one by ``answer_id``) and the inbox
that writes ratings to the feedback table (rag/feedback.py).

Each finished answer gets a random, unguessable id in the SSE ``done`` event; the last
``RecentAnswers.limit`` answers stay in memory with what a feedback row needs. Nothing of them is
written anywhere unless the technician rates one. A rating is written at once; if the database is
locked longer than SQLite's busy timeout (a re-embed switches every vector in one transaction),
the inbox keeps it and a background thread writes it as soon as the lock is gone: a rating is
never dropped while the server runs.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass

from phibox.device.documents import Documents
from phibox.device.engine import Answer
from phibox.device.errors import DatabaseError
from phibox.device.rag import db, feedback
from phibox.device.web.sse import passage_json

log = logging.getLogger("phibox.feedback")


class RecentAnswers:
    """The last ``limit`` finished answers by id, thread-safe."""

    def __init__(self, limit: int = 500) -> None:
        self.limit = limit
        self._answers: OrderedDict[str, feedback.ShownAnswer] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, question: str, answer: Answer, bundle_name: str, bundle_version: int, backend: str) -> str:
        """Keep a finished answer; returns its new id."""
        passages = [{k: v for k, v in passage_json(n, hit).items() if k not in ("n", "score")}
                    | {"cited": n in answer.cited} for n, hit in enumerate(answer.passages, 1)]
        shown = feedback.ShownAnswer(
            question=question, answer=answer.text, passages=passages, covered=answer.covered, cached=answer.cached,
            bundle_name=bundle_name, bundle_version=bundle_version, backend=backend, timings=asdict(answer.timings))
        answer_id = secrets.token_urlsafe(18)
        with self._lock:
            self._answers[answer_id] = shown
            while len(self._answers) > self.limit:
                self._answers.popitem(last=False)
        return answer_id

    def get(self, answer_id: str) -> feedback.ShownAnswer | None:
        with self._lock:
            return self._answers.get(answer_id)


@dataclass(frozen=True)
class Rating:
    answer_id: str
    shown: feedback.ShownAnswer
    rating: str
    correction: str
    wrong_passage: str | None


class FeedbackInbox:
    """Writes ratings to documents.db in arrival order; what the lock holds back waits here."""

    RETRY_S = 1.0

    def __init__(self, documents: Documents) -> None:
        self.documents = documents
        self._pending: list[Rating] = []
        self._lock = threading.Lock()
        self._retrying = False

    def submit(self, rating: Rating) -> bool:
        """Store a rating; True when it is in the database now, False when it waits for the lock."""
        with self._lock:
            self._pending.append(rating)
        if self.flush():
            return True
        self._start_retrying()
        return False

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self) -> bool:
        """Write what waits; True when nothing waits any more."""
        with self._lock:
            try:
                with self.documents.feedback() as conn:
                    while self._pending:
                        self._write(conn, self._pending[0])
                        self._pending.pop(0)
            except (DatabaseError, db.sqlite_module().OperationalError) as exc:
                log.warning("a rating waits for the documents database (%s); %d waiting", type(exc).__name__,
                            len(self._pending))
                return False
            return True

    @staticmethod
    def _write(conn: db.Connection, r: Rating) -> None:
        feedback.record(conn, r.answer_id, r.shown, r.rating, r.correction, r.wrong_passage)

    def _start_retrying(self) -> None:
        with self._lock:
            if self._retrying:
                return
            self._retrying = True

        def retry() -> None:
            while not self.flush():
                time.sleep(self.RETRY_S)
            with self._lock:
                self._retrying = False
            if self.pending():  # one came in between the last flush and the flag
                self._start_retrying()

        threading.Thread(target=retry, name="feedback-retry", daemon=True).start()
