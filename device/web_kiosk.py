"""The kiosk page and its API: /, /api/search, /api/ask (Server-Sent Events)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, render_template, request, stream_with_context

from device.answer import NOT_COVERED, parse_citations
from device.app import job_events, sse
from device.errors import PhiboxError
from device.retrieve import Hit
from device.serve_config import ServeConfig
from device.service import DeviceService, NotReadyError
from device.worker import Job, QueueFullError

bp = Blueprint("kiosk", __name__)


class BadQuestion(PhiboxError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def service() -> DeviceService:
    return current_app.config["PHIBOX_SERVICE"]


def settings() -> ServeConfig:
    return current_app.config["PHIBOX_SERVE"]


def check_question(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise BadQuestion("the question is empty: type what you want to know", 400)
    question = raw.strip()
    limit = settings().max_question_chars
    if len(question) > limit:
        raise BadQuestion(f"the question has {len(question)} characters; the limit is {limit}", 413)
    g.question = question
    return question


def passage_json(n: int, hit: Hit) -> dict[str, Any]:
    return {"n": n, "source": hit.source, "title": hit.title, "heading": hit.heading, "page": hit.page,
            "text": hit.text, "chunk_id": hit.chunk_id, "score": hit.score}


@bp.errorhandler(BadQuestion)
def bad_question(exc: BadQuestion) -> tuple[Response, int]:
    return jsonify(error=str(exc)), exc.status


def unavailable(message: str, reason: str) -> tuple[Response, int, dict[str, str]]:
    service().metrics.rejections.labels(reason).inc()
    retry = str(settings().retry_after_s)
    return jsonify(error=message, retry_after=int(retry)), 503, {"Retry-After": retry}


@bp.get("/")
def page() -> str:
    q = request.args.get("q", "").strip()
    passages, error = [], ""
    if q:  # works without JavaScript: a plain form GET shows the passages
        try:
            passages = [passage_json(n, h) for n, h in enumerate(service().search(check_question(q)).hits, 1)]
        except PhiboxError as exc:
            error = str(exc)
    return render_template("kiosk.html", q=q, passages=passages, error=error, demo=settings().demo,
                           max_chars=settings().max_question_chars, model=service().model_id)


@bp.get("/api/search")
def api_search() -> Response | tuple[Response, int, dict[str, str]]:
    question = check_question(request.args.get("q"))
    k = request.args.get("k", type=int)
    try:
        result = service().search(question, k)
    except NotReadyError as exc:
        return unavailable(str(exc), "loading")
    return jsonify(passages=[passage_json(n, h) for n, h in enumerate(result.hits, 1)],
                   retrieval_ms=round(result.retrieval_ms, 2), model_state=service().state)


@bp.post("/api/ask")
def api_ask() -> Response | tuple[Response, int] | tuple[Response, int, dict[str, str]]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return jsonify(error='send JSON like {"question": "..."}'), 400
    question = check_question(body.get("question"))
    svc = service()
    try:
        result = svc.search(question)
        if not result.hits:
            return Response(_not_covered(), mimetype="text/event-stream", headers=_sse_headers())
        prepared = svc.prepare_rag(question, result.hits, svc.engine.max_new_tokens)
        job = svc.submit(Job(prepared.prompt, svc.engine.max_new_tokens, svc.engine.temperature))
    except NotReadyError as exc:
        return unavailable(str(exc), "loading")
    except QueueFullError:
        return unavailable("busy: every place in the queue is taken; showing the passages instead", "queue_full")
    passages = [passage_json(n, h) for n, h in enumerate(prepared.passages, 1)]
    stream = _stream(job, passages, result.retrieval_ms, prepared.prompt_tokens)
    return Response(stream_with_context(stream), mimetype="text/event-stream", headers=_sse_headers())


def _sse_headers() -> dict[str, str]:
    return {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _not_covered():
    yield sse("passages", {"passages": [], "retrieval_ms": 0})
    yield sse("token", {"text": NOT_COVERED})
    yield sse("done", {"text": NOT_COVERED, "covered": False, "citations": [], "timings": {}})


def _stream(job: Job, passages: list[dict[str, Any]], retrieval_ms: float, prompt_tokens: int):
    yield sse("passages", {"passages": passages, "retrieval_ms": round(retrieval_ms, 2)})
    for event in job_events(job):
        if event is None:
            yield ": waiting\n\n"
            continue
        kind, data = event
        if kind == "token":
            yield sse("token", {"text": data})
        elif kind == "error":
            yield sse("error", {"error": data})
        else:
            cited = parse_citations(data.text, len(passages))
            first_ms = None if data.first_token_s is None else round(data.first_token_s * 1000, 1)
            yield sse("done", {
                "text": data.text.strip(), "covered": True, "finish_reason": data.finish_reason,
                "citations": [passages[n - 1] for n in cited],
                "timings": {"retrieval_ms": round(retrieval_ms, 2), "prompt_tokens": prompt_tokens,
                            "queue_wait_ms": round(data.queue_wait_s * 1000, 1),
                            "first_token_ms": first_ms,
                            "tokens_per_s": None if data.tokens_per_s is None else round(data.tokens_per_s, 2)},
            })
