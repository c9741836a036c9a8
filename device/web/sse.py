"""Server-Sent Events: framing, headers, and the engine's events as a kiosk stream."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from phibox.device.engine import Answer, Answering
from phibox.device.rag.retrieve import Hit

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE = ": waiting\n\n"
"""An SSE comment: written while the model works, so a vanished client is noticed on the next write."""


def sse(event: str, data: Any) -> str:
    """One Server-Sent Event; data is JSON (so model text can never break the framing)."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def passage_json(n: int, hit: Hit) -> dict[str, Any]:
    return {"n": n, "source": hit.source, "title": hit.title, "heading": hit.heading, "page": hit.page,
            "text": hit.text, "chunk_id": hit.chunk_id, "score": hit.score}


def passages_json(hits: list[Hit]) -> list[dict[str, Any]]:
    return [passage_json(n, h) for n, h in enumerate(hits, 1)]


def done_json(answer: Answer) -> dict[str, Any]:
    return {"text": answer.text, "covered": answer.covered, "finish_reason": answer.finish_reason,
            "cached": answer.cached,
            "citations": [passage_json(n, answer.passages[n - 1]) for n in answer.cited],
            "timings": asdict(answer.timings)}


def kiosk_stream(answering: Answering, remember: Callable[[Answer], str] | None = None) -> Iterator[str]:
    """The kiosk's answer stream: passages, token…, done (or error). The passages event says
    ``covered``: false means the manuals do not cover the question and the passages are only the
    closest ones ("closest, probably not it"); the not-covered text follows, no model answer.
    ``remember`` keeps a finished answer and names it: its ``answer_id`` in done is what a rating sends."""
    for event in answering.events(keepalive_s=1.0):
        if event.kind == "waiting":
            yield KEEPALIVE
        elif event.kind == "passages":
            yield sse("passages", {"passages": passages_json(event.data), "covered": answering.covered,
                                   "retrieval_ms": answering.timings.retrieval_ms})
        elif event.kind == "token":
            yield sse("token", {"text": event.data})
        elif event.kind == "error":
            yield sse("error", {"error": event.data})
        else:
            done = done_json(event.data)
            if remember is not None and event.data.finish_reason != "cancelled":
                done["answer_id"] = remember(event.data)
            yield sse("done", done)
