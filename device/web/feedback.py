"""Ratings: the kiosk's POST /api/feedback, and the admin Feedback page (/admin/feedback): counts by
bundle version, the list with its filters, reviews into Q&A, the training export as JSONL, and the
latest `phibox eval answers` comparison when one was saved in the state directory.

The kiosk's ratings name an answer by the ``answer_id`` of its done event (answers.py). Neither
the question nor the correction is ever logged: the access log carries only the path and status.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template, request, session

from phibox.device.errors import PhiboxError
from phibox.device.rag import feedback
from phibox.device.web import admin, script_text
from phibox.device.web.answers import FeedbackInbox, Rating
from phibox.device.web.context import service, settings
from phibox.device.web.i18n import gettext as _
from phibox.device.web.i18n import ngettext
from phibox.device.web.kiosk import BadQuestion, recent_answers

kiosk_bp = Blueprint("feedback", __name__)
admin_bp = Blueprint("admin_feedback", __name__)
admin_bp.before_request(admin.guard)
admin_bp.after_request(admin.never_cache)
admin_bp.register_error_handler(admin.UploadError, admin.upload_error)
EVAL_ANSWERS = Path("feedback") / "eval-answers.json"
"""Where `phibox eval answers --state DIR` saves its latest comparison, under the state directory."""
PAGE_SIZE = 200


def inbox() -> FeedbackInbox:
    return current_app.config["PHIBOX_FEEDBACK_INBOX"]


@kiosk_bp.errorhandler(BadQuestion)
def refused(exc: BadQuestion) -> tuple[Response, int]:
    return jsonify(error=str(exc)), exc.status


def _wrong_passage(raw: Any, shown: int) -> str | None:
    if raw is None or raw == "":
        return None
    if raw == feedback.MISSING:
        return feedback.MISSING
    if isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw <= shown:
        return str(raw)
    raise BadQuestion(_('"passage" is the number of a passage shown (1 to %(n)d) or "missing".', n=shown), 400)


@kiosk_bp.post("/api/feedback")
def rate() -> tuple[Response, int]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadQuestion(_('Send JSON like {"answer_id": "...", "rating": "helpful"}.'), 400)
    rating = body.get("rating")
    if rating not in feedback.RATINGS:
        raise BadQuestion(_('"rating" is "helpful" or "not_helpful".'), 400)
    correction = body.get("correction") or ""
    if not isinstance(correction, str):
        raise BadQuestion(_('"correction" is text.'), 400)
    correction, limit = correction.strip(), settings().max_correction_chars
    if len(correction) > limit:
        raise BadQuestion(ngettext(
            "The text has %(num)d character; the limit is %(limit)d. Shorten it and send again.",
            "The text has %(num)d characters; the limit is %(limit)d. Shorten it and send again.",
            len(correction), limit=limit), 413)
    answer_id = body.get("answer_id")
    shown = recent_answers().get(answer_id) if isinstance(answer_id, str) else None
    if shown is None:
        raise BadQuestion(_("This answer is no longer known here (the kiosk keeps only recent answers): "
                            "ask the question again, then rate the new answer."), 404)
    wrong = _wrong_passage(body.get("passage"), len(shown.passages))
    stored = inbox().submit(Rating(answer_id, shown, rating, correction, wrong))
    return jsonify(saved=True, written=stored, message=_("Thank you: this helps make the answers better.")), \
        200 if stored else 202


# --- the admin page ---------------------------------------------------------------------------
def _eval_answers() -> dict[str, Any] | None:
    """The latest saved `phibox eval answers` comparison, or None."""
    st = service().state_dir
    path = st.root / EVAL_ANSWERS if st else None
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        rows = [{"bundle": label, **{k: (v if isinstance(v, int | float) else None) for k, v in stats.items()}}
                for label, stats in dict(data.get("summary", {})).items()]
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        current_app.logger.warning("%s is not a comparison phibox can show: %s", path, exc)
        return None
    return {"rows": rows, "created_at": str(data.get("created_at", ""))}


@admin_bp.get("/admin/feedback")
def page() -> str:
    rating = request.args.get("rating") if request.args.get("rating") in feedback.RATINGS else None
    source = request.args.get("source") or None
    reviewed = {"yes": True, "no": False}.get(request.args.get("reviewed", ""))
    docs = service().documents
    with docs.feedback() as conn:
        items = feedback.listing(conn, rating=rating, source=source, reviewed=reviewed, limit=PAGE_SIZE)
        counts, sources = feedback.counts_by_version(conn), feedback.sources(conn)
    return render_template("admin_feedback.html", items=items, counts=counts, sources=sources, rating=rating or "",
                           source=source or "", reviewed=request.args.get("reviewed", ""), csrf=session["csrf"],
                           comparison=_eval_answers(), page_size=PAGE_SIZE, script_text=script_text.admin_feedback(),
                           engine_text=script_text.kiosk()["engine"])


@admin_bp.post("/admin/feedback/<int:feedback_id>/review")
def review(feedback_id: int) -> tuple[Response, int]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return jsonify(error=_('Send JSON like {"answer": "...", "passages": [1]}.')), 400
    passages, answer = body.get("passages") or [], body.get("answer") or ""
    if not isinstance(answer, str) or not isinstance(passages, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in passages):
        return jsonify(error=_('"answer" is text and "passages" a list of passage numbers.')), 400
    try:
        with service().documents.feedback() as conn:
            row = feedback.review(conn, feedback_id, answer, passages, not_covered=bool(body.get("not_covered")))
    except feedback.FeedbackError as exc:
        return jsonify(error=str(exc)), 404 if "no feedback" in str(exc) else 400
    except PhiboxError as exc:
        return jsonify(error=str(exc)), 503
    return jsonify(item=row.to_dict(), message=_("Saved as a reviewed answer.")), 200


@admin_bp.get("/admin/feedback/export.jsonl")
def export() -> Response:
    """The training export (rag/feedback.py's training_lines), as `phibox feedback export` writes it."""
    reviewed_only = request.args.get("reviewed_only") in ("1", "yes", "on")
    since = None
    if request.args.get("since"):
        try:
            since = datetime.fromisoformat(request.args["since"])
        except ValueError:
            return jsonify(error=_("since is a date like 2025-01-31.")), 400
    with service().documents.feedback() as conn:
        result = feedback.training_export(conn, since, reviewed_only)
    body = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in result.lines)
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    return Response(body, mimetype="application/x-ndjson", headers={
        "Content-Disposition": f'attachment; filename="feedback-{stamp}.jsonl"',
        "X-Phibox-Skipped": str(result.skipped)})
