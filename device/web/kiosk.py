"""The kiosk page and its API: /, /api/search, /api/ask (Server-Sent Events through the engine).

/api/ask sends the passages as its first event, so the page asks once and retrieval runs once per
question. When the model cannot answer now (loading, failed, queue full) the 503 reply carries the
passages found, so the technician still reads them.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, render_template, request, stream_with_context

from phibox.device.engine import Answer, Engine, Unavailable
from phibox.device.errors import PhiboxError
from phibox.device.rag.budget import QuestionTooLongError
from phibox.device.web import script_text
from phibox.device.web.answers import RecentAnswers
from phibox.device.web.context import HttpError, service, settings
from phibox.device.web.i18n import gettext as _
from phibox.device.web.i18n import ngettext
from phibox.device.web.sse import HEADERS, kiosk_stream, passages_json

bp = Blueprint("kiosk", __name__)
MAX_K = 20


class BadQuestion(HttpError):
    """A question refused (empty, too long), with its HTTP status."""


def engine() -> Engine:
    return service().engine


def check_question(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise BadQuestion(_("The question is empty: type what you want to know."), 400)
    question = raw.strip()
    limit = settings().max_question_chars
    if len(question) > limit:
        raise BadQuestion(too_long(len(question), limit), 413)
    g.question = question
    return question


def too_long(chars: int, limit: int) -> str:
    return ngettext("The question has %(num)d character; the limit is %(limit)d. Shorten it and ask again.",
                    "The question has %(num)d characters; the limit is %(limit)d. Shorten it and ask again.",
                    chars, limit=limit)


def unavailable_text(reason: str) -> str:
    """Why the model can't answer now, in the page's language (the engine's reason, the service's state)."""
    if reason == "queue_full":
        return _("Busy: every place in the queue is taken. Here are the passages; ask again in a moment.")
    if reason == "loading" and service().state == "degraded":
        return _("The model could not be loaded: tell the admin (the admin page shows why). "
                 "Here are the passages meanwhile.")
    if reason == "loading" and service().state == "updating":
        return _("The model is being updated. Here are the passages; ask again in a moment.")
    if reason == "loading":
        return _("The model or the manuals index is still loading. Ask again in a few seconds.")
    return _("The answer engine cannot take questions now. Here are the passages; ask again later.")


@bp.errorhandler(BadQuestion)
def bad_question(exc: BadQuestion) -> tuple[Response, int]:
    return jsonify(error=str(exc)), exc.status


def unavailable(exc: Unavailable) -> tuple[Response, int, dict[str, str]]:
    retry = settings().retry_after_s
    title = ngettext("Best passages from the manuals (the answer engine is busy or loading; retry in %(num)d second)",
                     "Best passages from the manuals (the answer engine is busy or loading; retry in %(num)d seconds)",
                     retry)
    return (jsonify(error=unavailable_text(exc.reason), reason=exc.reason, retry_after=retry,
                    passages=passages_json(exc.passages), passages_title=title,
                    retrieval_ms=round(exc.retrieval_ms, 2)), 503, {"Retry-After": str(retry)})


@bp.get("/")
def page() -> str:
    q = request.args.get("q", "").strip()
    passages, error = [], ""
    if q:  # works without JavaScript: a plain form GET shows the passages
        try:
            passages = passages_json(engine().search(check_question(q)).hits)
        except PhiboxError as exc:
            error = unavailable_text(exc.reason) if isinstance(exc, Unavailable) else str(exc)
    return render_template("kiosk.html", q=q, passages=passages, error=error, demo=settings().demo,
                           max_chars=settings().max_question_chars, model=service().model_id,
                           script_text=script_text.kiosk())


@bp.get("/api/search")
def api_search() -> Response | tuple[Response, int, dict[str, str]]:
    question = check_question(request.args.get("q"))
    k = request.args.get("k", type=int)
    if "k" in request.args and (k is None or not 1 <= k <= MAX_K):
        return jsonify(error=f"k must be a whole number from 1 to {MAX_K}"), 400, {}
    try:
        result = engine().search(question, k)
    except Unavailable as exc:
        return unavailable(exc)
    return jsonify(passages=passages_json(result.hits), retrieval_ms=round(result.retrieval_ms, 2),
                   covered=result.covered, model_state=service().state)


@bp.post("/api/ask")
def api_ask() -> Response | tuple[Response, int] | tuple[Response, int, dict[str, str]]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return jsonify(error=_('Send JSON like {"question": "..."}.')), 400
    question = check_question(body.get("question"))
    try:
        answering = engine().ask(question)
    except Unavailable as exc:
        return unavailable(exc)
    except QuestionTooLongError as exc:
        raise BadQuestion(_("The question is too long for the model: ask it more briefly."), 413) from exc
    svc, recent = service(), recent_answers()
    manifest = svc.bundle.manifest
    backend = svc.slot.backend.name if svc.slot.backend else svc.backend_name or "-"

    def remember(answer: Answer) -> str:
        return recent.remember(question, answer, manifest.name, manifest.version, backend)

    return Response(stream_with_context(kiosk_stream(answering, remember)), mimetype="text/event-stream",
                    headers=HEADERS)


def recent_answers() -> RecentAnswers:
    return current_app.config["PHIBOX_RECENT_ANSWERS"]
