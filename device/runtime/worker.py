"""One generation at a time: a single worker thread and a bounded FIFO queue in front of it.

Each job holds the model slot's current model for exactly as long as it generates, so a model
replaced meanwhile finishes this answer and is closed after it; the next job runs on the new one.

Requests submit a Job and read its events (token pieces, then done or error). A full queue is an
immediate QueueFullError (the HTTP layer answers 503 + Retry-After); a cancelled job (the client
went away) is skipped if still queued, or stopped between tokens if running, and the next starts.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from phibox.device.errors import PhiboxError
from phibox.device.observe import Observer
from phibox.device.runtime.backend import Backend
from phibox.device.runtime.slot import ModelSlot

MODEL_WAIT_S = 60.0
"""How long a queued job waits for a model being switched in (loading Phi-3-mini takes seconds);
well under the unit's WatchdogSec, since the worker's heartbeat pauses meanwhile."""


class QueueFullError(PhiboxError):
    """Every place in the generation queue is taken."""


@dataclass
class GenStats:
    text: str
    finish_reason: str
    """stop (end of turn or a stop string) or length (max_new_tokens reached)."""
    tokens: int
    """Tokens the model generated for the answer (the end-of-turn token not counted)."""
    first_token_s: float | None
    tokens_per_s: float | None
    queue_wait_s: float


@dataclass
class Job:
    prompt: str
    max_new_tokens: int
    temperature: float = 0.0
    stop: list[str] = field(default_factory=list)
    logit_bias: dict[int, float] | None = None
    min_tokens: int = 0
    reuse_prefix: bool = True
    cancel: threading.Event = field(default_factory=threading.Event)
    events: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)
    submitted: float = field(default_factory=time.monotonic)

    def stream(self, keepalive_s: float | None = None) -> Iterator[tuple[str, Any]]:
        """The job's events as they come (token, then done or error); ("waiting", None) every
        keepalive_s while nothing comes."""
        while True:
            try:
                kind, data = self.events.get(timeout=keepalive_s)
            except queue.Empty:
                yield "waiting", None
                continue
            yield kind, data
            if kind in ("done", "error"):
                return


class GenerationWorker:
    def __init__(self, slot: ModelSlot, queue_size: int, observer: Observer) -> None:
        self.slot = slot
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self.observer = observer
        self.heartbeat = time.monotonic()
        """Last time the worker loop made progress; a systemd watchdog reads it."""
        self.busy = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="phibox-generation", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def depth(self) -> int:
        return self.jobs.qsize()

    def submit(self, job: Job) -> Job:
        try:
            self.jobs.put_nowait(job)
        except queue.Full as exc:
            self.observer.rejected("queue_full")
            raise QueueFullError(f"all {self.jobs.maxsize} places in the queue are taken") from exc
        self.observer.queue_depth(self.depth())
        return job

    def _loop(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            try:
                job = self.jobs.get(timeout=1.0)
            except queue.Empty:
                continue
            self.observer.queue_depth(self.depth())
            if job is None:
                return
            if job.cancel.is_set():
                job.events.put(("error", "cancelled"))
                continue
            self.busy.set()
            self.observer.generating(True)
            try:
                self._run(job)
            except PhiboxError as exc:
                job.events.put(("error", str(exc)))
            except Exception as exc:  # the worker must survive any one bad generation
                job.events.put(("error", f"generation failed: {type(exc).__name__}: {exc}"))
            finally:
                self.busy.clear()
                self.observer.generating(False)

    def _run(self, job: Job) -> None:
        # A job queued just before a drained switch waits for the new model rather than failing.
        with self.slot.acquire(wait_s=MODEL_WAIT_S) as backend:
            self._generate(job, backend)

    def _generate(self, job: Job, backend: Backend) -> None:
        started = time.monotonic()
        wait = started - job.submitted
        self.observer.queue_wait(wait)
        text, tokens, first = "", 0, None
        finish = "length"
        for piece in backend.generate(job.prompt, job.max_new_tokens, job.temperature, job.cancel,
                                      reuse_prefix=job.reuse_prefix, logit_bias=job.logit_bias,
                                      min_new_tokens=job.min_tokens):
            self.heartbeat = time.monotonic()
            tokens += 1  # the backend yields once per token
            if first is None:
                first = time.monotonic() - started
                self.observer.first_token(first)
            if not piece:
                continue
            candidate = text + piece
            # the text so far holds no stop string: look only where a new one could end
            found = (candidate.find(s, max(0, len(text) - len(s) + 1)) for s in job.stop if s)
            cut = min((i for i in found if i >= 0), default=-1)
            if cut >= 0:
                piece, finish = candidate[:cut][len(text):], "stop"
                if piece:
                    job.events.put(("token", piece))
                text = candidate[:cut]
                break
            text = candidate
            job.events.put(("token", piece))
        else:
            finish = "length" if tokens >= job.max_new_tokens else "stop"
        ended = time.monotonic()
        rate = None
        if first is not None and tokens > 1:
            rate = (tokens - 1) / max(ended - started - first, 1e-9)
            self.observer.decode_rate(rate)
        if job.cancel.is_set():
            finish = "cancelled"
        job.events.put(("done", GenStats(text, finish, tokens, first, rate, wait)))
