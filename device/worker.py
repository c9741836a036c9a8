"""One generation at a time: a single worker thread and a bounded FIFO queue in front of it.

Requests submit a Job and read its events (token pieces, then done or error). A full queue is an
immediate QueueFullError (the HTTP layer answers 503 + Retry-After); a cancelled job (the client
went away) is skipped if still queued, or stopped between tokens if running, and the next starts.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from device.backends import Backend
from device.errors import PhiboxError
from device.metrics import Metrics


class QueueFullError(PhiboxError):
    """Every place in the generation queue is taken."""


@dataclass
class GenStats:
    text: str
    finish_reason: str
    """stop (end of turn or a stop string) or length (max_new_tokens reached)."""
    pieces: int
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
    cancel: threading.Event = field(default_factory=threading.Event)
    events: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)
    submitted: float = field(default_factory=time.monotonic)


class GenerationWorker:
    def __init__(self, backend_getter: Callable[[], Backend | None], queue_size: int, metrics: Metrics) -> None:
        self.backend_getter = backend_getter
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self.metrics = metrics
        self.heartbeat = time.monotonic()
        """Last time the worker loop made progress; a systemd watchdog reads it."""
        self.busy = threading.Event()
        self.current_backend: Backend | None = None
        """The backend of the generation under way (a swapped-out model is closed only after it)."""
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
            self.metrics.rejections.labels("queue_full").inc()
            raise QueueFullError(f"all {self.jobs.maxsize} places in the queue are taken") from exc
        self.metrics.queue_depth.set(self.depth())
        return job

    def _loop(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            try:
                job = self.jobs.get(timeout=1.0)
            except queue.Empty:
                continue
            self.metrics.queue_depth.set(self.depth())
            if job is None:
                return
            if job.cancel.is_set():
                job.events.put(("error", "cancelled"))
                continue
            self.busy.set()
            self.metrics.generating.set(1)
            try:
                self._run(job)
            except PhiboxError as exc:
                job.events.put(("error", str(exc)))
            except Exception as exc:  # the worker must survive any one bad generation
                job.events.put(("error", f"generation failed: {type(exc).__name__}: {exc}"))
            finally:
                self.busy.clear()
                self.metrics.generating.set(0)

    def _run(self, job: Job) -> None:
        backend = self.backend_getter()
        if backend is None:
            raise PhiboxError("no model is loaded")
        self.current_backend = backend
        try:
            self._generate(job, backend)
        finally:
            self.current_backend = None

    def _generate(self, job: Job, backend: Backend) -> None:
        started = time.monotonic()
        wait = started - job.submitted
        self.metrics.queue_wait.observe(wait)
        text, pieces, first = "", 0, None
        finish = "length"
        for piece in backend.generate(job.prompt, job.max_new_tokens, job.temperature, job.cancel,
                                      logit_bias=job.logit_bias, min_new_tokens=job.min_tokens):
            self.heartbeat = time.monotonic()
            if first is None:
                first = time.monotonic() - started
                self.metrics.ttft.observe(first)
            pieces += 1
            candidate = text + piece
            cut = min((candidate.find(s) for s in job.stop if s and s in candidate), default=-1)
            if cut >= 0:
                piece, finish = candidate[:cut][len(text):], "stop"
                if piece:
                    job.events.put(("token", piece))
                text = candidate[:cut]
                break
            text = candidate
            job.events.put(("token", piece))
        else:
            finish = "length" if pieces >= job.max_new_tokens else "stop"
        rate = None
        if first is not None and pieces > 1:
            rate = (pieces - 1) / max(time.monotonic() - started - first, 1e-9)
            self.metrics.tokens_per_s.observe(rate)
        if job.cancel.is_set():
            finish = "cancelled"
        job.events.put(("done", GenStats(text, finish, pieces, first, rate, wait)))
