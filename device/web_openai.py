"""OpenAI-compatible API: GET /v1/models and POST /v1/chat/completions (streaming or not).

Extensions: ``min_tokens`` (as in vLLM: no end of turn before that many tokens) and ``rag``.
Two model ids: ``phibox-<bundle>`` answers from the manuals (RAG: the last user message is the
question; citations come back in an extra ``citations`` field) and ``phibox-<bundle>-norag`` runs
the chat as given. A request may also say ``"rag": false``. Errors use OpenAI's error format.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from device.answer import NOT_COVERED, QuestionTooLongError, parse_citations
from device.app import job_events
from device.backends import ContextOverflowError
from device.prompt import ROLES, render_chat
from device.service import DeviceService, NotReadyError
from device.web_kiosk import passage_json
from device.worker import GenStats, Job, QueueFullError

bp = Blueprint("openai", __name__, url_prefix="/v1")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.kind, self.headers = status, param, code, kind, headers or {}


@bp.errorhandler(ApiError)
def api_error(exc: ApiError) -> tuple[Response, int, dict[str, str]]:
    body = {"error": {"message": str(exc), "type": exc.kind, "param": exc.param, "code": exc.code}}
    return jsonify(body), exc.status, exc.headers


def service() -> DeviceService:
    return current_app.config["PHIBOX_SERVICE"]


def model_ids() -> list[str]:
    base = service().model_id
    return [base, f"{base}-norag"]


@bp.get("/models")
def models() -> Response:
    created = int(service().started_at)
    return jsonify(object="list", data=[{"id": m, "object": "model", "created": created, "owned_by": "phibox"}
                                        for m in model_ids()])


def _param(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(name, default)
    if value is not None and not isinstance(value, kind):
        raise ApiError(400, f"'{name}' has the wrong type", param=name)
    return value


def parse_request(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model not in model_ids():
        raise ApiError(404, f"The model '{model}' does not exist; available: {', '.join(model_ids())}",
                       param="model", code="model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ApiError(400, f"messages[{i}] needs a role ({'/'.join(ROLES)}) and string content", param="messages")
    engine = service().engine
    max_tokens = _param(body, "max_tokens", int, None) or _param(body, "max_completion_tokens", int, None)
    max_tokens = max_tokens or engine.max_new_tokens
    if not 1 <= max_tokens <= 4096:
        raise ApiError(400, "'max_tokens' must be between 1 and 4096", param="max_tokens")
    temperature = _param(body, "temperature", (int, float), engine.temperature)
    if not 0 <= temperature <= 2:
        raise ApiError(400, "'temperature' must be between 0 and 2", param="temperature")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise ApiError(400, "'stop' must be a string or a list of up to 4 strings", param="stop")
    bias = _param(body, "logit_bias", dict, None)
    try:
        logit_bias = {int(k): float(v) for k, v in bias.items()} if bias else None
    except (TypeError, ValueError) as exc:
        raise ApiError(400, "'logit_bias' maps token ids to numbers", param="logit_bias") from exc
    min_tokens = _param(body, "min_tokens", int, 0) or 0
    if not 0 <= min_tokens <= max_tokens:
        raise ApiError(400, "'min_tokens' must be between 0 and max_tokens", param="min_tokens")
    rag = bool(body.get("rag", not model.endswith("-norag")))
    return {"model": model, "messages": messages, "stream": bool(body.get("stream", False)),
            "max_tokens": max_tokens, "temperature": float(temperature), "stop": stop, "logit_bias": logit_bias,
            "rag": rag, "min_tokens": min_tokens}


@bp.post("/chat/completions")
def chat_completions() -> Response:
    req = parse_request(request.get_json(silent=True))
    svc = service()
    citations: list[dict[str, Any]] = []
    passages: list[dict[str, Any]] = []
    try:
        backend = svc.require_model()
        if req["logit_bias"] and backend.name != "gguf":
            raise ApiError(400, "logit_bias needs the gguf backend", param="logit_bias")
        if req["rag"]:
            question = next((m["content"] for m in reversed(req["messages"]) if m["role"] == "user"), "").strip()
            if not question:
                raise ApiError(400, "RAG needs a user message to answer", param="messages")
            hits = svc.search(question).hits
            if not hits:
                return _respond(req, NOT_COVERED, "stop", 0, [], [], None)
            prepared = svc.prepare_rag(question, hits, req["max_tokens"])
            prompt, prompt_tokens = prepared.prompt, prepared.prompt_tokens
            passages = [passage_json(n, h) for n, h in enumerate(prepared.passages, 1)]
        else:
            prompt = render_chat(req["messages"], add_generation_prompt=True)
            prompt_tokens = backend.count_tokens(prompt)
            if prompt_tokens + req["max_tokens"] > backend.context_window:
                raise ApiError(400, f"{prompt_tokens} prompt tokens + max_tokens {req['max_tokens']} exceed the "
                               f"{backend.context_window}-token context", param="messages",
                               code="context_length_exceeded")
        job = svc.submit(Job(prompt, req["max_tokens"], req["temperature"], req["stop"], req["logit_bias"],
                             req["min_tokens"]))
    except NotReadyError as exc:
        raise ApiError(503, str(exc), kind="server_error", code="model_not_ready",
                       headers={"Retry-After": str(svc.serve.retry_after_s)}) from exc
    except QueueFullError as exc:
        raise ApiError(503, f"busy: {exc}", kind="server_error", code="queue_full",
                       headers={"Retry-After": str(svc.serve.retry_after_s)}) from exc
    except (QuestionTooLongError, ContextOverflowError) as exc:
        raise ApiError(400, str(exc), param="messages", code="context_length_exceeded") from exc
    if req["stream"]:
        return Response(stream_with_context(_stream(req, job, passages)), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    stats: GenStats | None = None
    for event in job_events(job, keepalive_s=5.0):
        if event is None:
            continue
        kind, data = event
        if kind == "error":
            raise ApiError(500, data, kind="server_error")
        if kind == "done":
            stats = data
    assert stats is not None
    citations = [passages[n - 1] for n in parse_citations(stats.text, len(passages))]
    return _respond(req, stats.text.strip(), _finish(stats), prompt_tokens, citations, passages, stats)


def _finish(stats: GenStats) -> str:
    return "length" if stats.finish_reason == "length" else "stop"


def _respond(req: dict[str, Any], text: str, finish: str, prompt_tokens: int, citations: list[dict[str, Any]],
             passages: list[dict[str, Any]], stats: GenStats | None) -> Response:
    completion_tokens = stats.pieces if stats else 0
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": req["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "citations": citations, "passages": passages,
    }
    if req["stream"]:  # the manuals did not cover it: still a valid stream
        return Response(_static_stream(req, body), mimetype="text/event-stream")
    return jsonify(body)


def _chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None, **extra: Any) -> str:
    import json

    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _static_stream(req: dict[str, Any], body: dict[str, Any]):
    cid, model = body["id"], req["model"]
    yield _chunk(cid, model, {"role": "assistant", "content": ""}, None)
    yield _chunk(cid, model, {"content": body["choices"][0]["message"]["content"]}, None)
    yield _chunk(cid, model, {}, "stop", citations=[], passages=[])
    yield "data: [DONE]\n\n"


def _stream(req: dict[str, Any], job: Job, passages: list[dict[str, Any]]):
    cid, model = f"chatcmpl-{uuid.uuid4().hex}", req["model"]
    yield _chunk(cid, model, {"role": "assistant", "content": ""}, None)
    for event in job_events(job):
        if event is None:
            yield ": waiting\n\n"
            continue
        kind, data = event
        if kind == "token":
            yield _chunk(cid, model, {"content": data}, None)
        elif kind == "error":
            yield _chunk(cid, model, {}, "stop", error={"message": data, "type": "server_error"})
        else:
            cited = [passages[n - 1] for n in parse_citations(data.text, len(passages))]
            yield _chunk(cid, model, {}, _finish(data), citations=cited, passages=passages)
    yield "data: [DONE]\n\n"
