"""OpenAI-compatible API: GET /v1/models and POST /v1/chat/completions (streaming or not).

Extensions: ``min_tokens`` (as in vLLM: no end of turn before that many tokens) and ``rag``.
Two model ids: ``phibox-<bundle>`` answers from the manuals (RAG: the last user message is the
question; citations come back in an extra ``citations`` field, the passages in ``passages`` and
``covered``: false when the manuals do not cover the question, the message is then the not-covered
text, no model ran, usage counts no completion tokens and the passages are only the closest ones)
and ``phibox-<bundle>-norag`` runs the chat as given. A request may also say ``"rag": false``.
Errors use OpenAI's error format.

Bounded for a plant LAN: a key from `phibox admin new-api-key` (required when the server listens
beyond loopback, see ServeConfig.api_keys); max_tokens and min_tokens up to `max_api_tokens`; a
RAG question up to `max_question_chars` and all messages together up to `max_chat_chars`; one
job at a time per client (its key, or its address when it has none), so one LAN client can't fill
the queue the kiosk page needs (programs on the appliance itself, on loopback without a key, are
not limited); a job whose client went away is cancelled, streaming or not.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context

from phibox.device.engine import Answer, Answering, Options, Unavailable
from phibox.device.prompt import ROLES
from phibox.device.rag.budget import QuestionTooLongError
from phibox.device.runtime.backend import ContextOverflowError, UnsupportedOptionError
from phibox.device.web import auth
from phibox.device.web.context import bearer_token, is_loopback, service, settings
from phibox.device.web.sse import HEADERS, KEEPALIVE, passage_json, passages_json

bp = Blueprint("openai", __name__, url_prefix="/v1")
MAX_MESSAGES = 64


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.kind, self.headers = status, param, code, kind, headers or {}


@bp.errorhandler(ApiError)
def api_error(exc: ApiError) -> tuple[Response, int, dict[str, str]]:
    body = {"error": {"message": str(exc), "type": exc.kind, "param": exc.param, "code": exc.code}}
    return jsonify(body), exc.status, exc.headers


class ClientJobs:
    """Which /v1 clients have a job queued or running: one each."""

    def __init__(self) -> None:
        self.busy: set[str] = set()
        self.lock = threading.Lock()

    def take(self, client: str | None) -> None:
        """Hold client's one job (None: the appliance itself, not limited)."""
        if client is None:
            return
        with self.lock:
            if client in self.busy:
                raise ApiError(429, "this client already has a question queued or being answered: wait for it "
                                    "(one at a time per client)", kind="rate_limit_error", code="one_job_per_client",
                               headers={"Retry-After": str(settings().retry_after_s)})
            self.busy.add(client)

    def release(self, client: str | None) -> None:
        if client is None:
            return
        with self.lock:
            self.busy.discard(client)


@bp.before_request
def check_key() -> None:
    """/v1 needs an API key when the settings say so; g.client names who asks (key, else address)."""
    key = bearer_token()
    state = service().state_dir
    name = auth.api_key_name(state, key) if key and state is not None else None
    if settings().api_keys_required and name is None:
        raise ApiError(401, "a valid API key is required (Authorization: Bearer KEY): an admin makes one on the "
                            "device with `phibox admin new-api-key --name NAME`", code="invalid_api_key")
    local = is_loopback(request.remote_addr)
    g.client = f"key:{name}" if name else None if local else f"addr:{request.remote_addr}"


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
    if len(messages) > MAX_MESSAGES:
        raise ApiError(413, f"{len(messages)} messages; at most {MAX_MESSAGES}", param="messages",
                       code="context_length_exceeded")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ApiError(400, f"messages[{i}] needs a role ({'/'.join(ROLES)}) and string content", param="messages")
    cfg = settings()
    total = sum(len(m["content"]) for m in messages)
    if total > cfg.max_chat_chars:
        raise ApiError(413, f"the messages hold {total} characters; the limit is {cfg.max_chat_chars} "
                            "(max_chat_chars)", param="messages", code="context_length_exceeded")
    engine = service().cfg
    max_tokens = _param(body, "max_tokens", int, None) or _param(body, "max_completion_tokens", int, None)
    max_tokens = max_tokens or min(engine.max_new_tokens, cfg.max_api_tokens)
    if not 1 <= max_tokens <= cfg.max_api_tokens:
        raise ApiError(400, f"'max_tokens' must be between 1 and {cfg.max_api_tokens} on this device "
                            "(max_api_tokens)", param="max_tokens")
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


def _options(req: dict[str, Any]) -> Options:
    return Options(max_new_tokens=req["max_tokens"], temperature=req["temperature"], min_new_tokens=req["min_tokens"],
                   stop=tuple(req["stop"]), logit_bias=req["logit_bias"])


def _start(req: dict[str, Any]) -> Answering:
    """The answer under way, through the engine: RAG on the last user message, or the chat as given."""
    engine = service().engine
    if not req["rag"]:
        return engine.chat(req["messages"], _options(req))
    question = next((m["content"] for m in reversed(req["messages"]) if m["role"] == "user"), "").strip()
    if not question:
        raise ApiError(400, "RAG needs a user message to answer", param="messages")
    limit = settings().max_question_chars
    if len(question) > limit:
        raise ApiError(413, f"the question has {len(question)} characters; the limit is {limit}",
                       param="messages", code="context_length_exceeded")
    return engine.ask(question, _options(req))


@bp.post("/chat/completions")
def chat_completions() -> Response:
    req = parse_request(request.get_json(silent=True))
    jobs: ClientJobs = current_app.config["PHIBOX_CLIENT_JOBS"]
    client: str | None = g.client
    jobs.take(client)
    streaming = False
    try:
        answering = _open(req)
        if not req["stream"]:
            return _complete(req, answering)
        response = Response(stream_with_context(_stream(req, answering)), mimetype="text/event-stream",
                            headers=HEADERS)
        response.call_on_close(lambda: jobs.release(client))  # when the server closes the stream, ended or not
        streaming = True
        return response
    finally:
        if not streaming:
            jobs.release(client)


def _open(req: dict[str, Any]) -> Answering:
    retry = {"Retry-After": str(settings().retry_after_s)}
    try:
        return _start(req)
    except Unavailable as exc:
        code = "queue_full" if exc.reason == "queue_full" else "model_not_ready"
        raise ApiError(503, str(exc), kind="server_error", code=code, headers=retry) from exc
    except UnsupportedOptionError as exc:
        raise ApiError(400, str(exc), param="logit_bias") from exc
    except (QuestionTooLongError, ContextOverflowError) as exc:
        raise ApiError(400, str(exc), param="messages", code="context_length_exceeded") from exc


def _complete(req: dict[str, Any], answering: Answering) -> Response:
    """A non-streaming answer; cancelled when the client hangs up while waiting for it."""
    gone = request.environ.get("waitress.client_disconnected")
    answer: Answer | None = None
    for event in answering.events(keepalive_s=1.0):
        if gone is not None and gone():
            answering.cancel()
            return Response(status=499)  # nobody reads it: the client closed the connection
        if event.kind == "error":
            raise ApiError(500, event.data, kind="server_error")
        if event.kind == "done":
            answer = event.data
    if answer is None:
        raise ApiError(500, "the generation ended without an answer", kind="server_error")
    return jsonify(_completion(req, answer, answering.timings.prompt_tokens))


def _finish(answer: Answer) -> str:
    return "length" if answer.finish_reason == "length" else "stop"


def _completion(req: dict[str, Any], answer: Answer, prompt_tokens: int) -> dict[str, Any]:
    completion_tokens = (answer.timings.generated_tokens or 0) if answer.covered else 0
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": req["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                     "finish_reason": _finish(answer)}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "citations": [passage_json(n, answer.passages[n - 1]) for n in answer.cited],
        "passages": passages_json(answer.passages),
        "covered": answer.covered,
        "cached": answer.cached,
    }


def _chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None, **extra: Any) -> str:
    body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _stream(req: dict[str, Any], answering: Answering):
    cid, model = f"chatcmpl-{uuid.uuid4().hex}", req["model"]
    yield _chunk(cid, model, {"role": "assistant", "content": ""}, None)
    for event in answering.events(keepalive_s=1.0):
        if event.kind == "waiting":
            yield KEEPALIVE
        elif event.kind == "token":
            yield _chunk(cid, model, {"content": event.data}, None)
        elif event.kind == "error":
            yield _chunk(cid, model, {}, "stop", error={"message": event.data, "type": "server_error"})
        elif event.kind == "done":
            answer: Answer = event.data
            cited = [passage_json(n, answer.passages[n - 1]) for n in answer.cited]
            yield _chunk(cid, model, {}, _finish(answer), citations=cited, passages=passages_json(answer.passages),
                         covered=answer.covered, cached=answer.cached)
    yield "data: [DONE]\n\n"
