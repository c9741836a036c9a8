"""THE answer path: question → retrieval → budgeted prompt → job on the worker → events.

The kiosk's /api/ask, the OpenAI API, `phibox ask` and `phibox bench` all answer through
``Engine``, so what a benchmark measures is what a technician gets. ``Engine.ask`` does the quick
part at once (retrieval, the prompt, a place in the worker's queue) and returns an ``Answering``
whose ``events()`` come in the order a kiosk shows them: the passages, the answer's text as it
streams, then ``done`` with the passages it cites and the timings. When the model cannot take the
question (loading, failed, queue full) ``Unavailable`` carries the passages found, so a
technician always gets them. When the relevance decision (rag/relevance.py) says the manuals do
not cover the question, the model is not asked: the closest passages come (``covered`` False, for
the page's "closest, probably not it"), then the not-covered text.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from phibox.device.answer_cache import AnswerCache, CachedAnswer, cache_key
from phibox.device.config import EngineConfig
from phibox.device.documents import Documents
from phibox.device.errors import PhiboxError
from phibox.device.observe import Observer
from phibox.device.prompt import NOT_COVERED, render_chat
from phibox.device.rag.budget import fit_prompt
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.relevance import Calibration
from phibox.device.rag.retrieve import Hit, SearchResult, search
from phibox.device.rag.store import EmbedderMismatchError
from phibox.device.runtime.backend import ContextOverflowError, UnsupportedOptionError
from phibox.device.runtime.slot import ModelSlot, NoModelError
from phibox.device.runtime.worker import GenerationWorker, GenStats, Job, QueueFullError

NO_MANUALS = ("No manuals are indexed on this device yet, so there is nothing to answer from. An admin adds them "
              "in /admin or with `phibox ingest`.")
_CITE = re.compile(r"\[(\d+)\]")
REPLAY_WORDS = 4
"""Words per event when a cached answer is replayed."""
MIN_PROMPT_TOKENS = 64
"""The smallest RAG prompt worth sending (the config's own floor for prompt_token_budget)."""


class Unavailable(PhiboxError):
    """The model cannot take the question now; the passages retrieval found come with it."""

    def __init__(self, message: str, reason: str, passages: Sequence[Hit] = (), retrieval_ms: float = 0.0) -> None:
        super().__init__(message)
        self.reason = reason
        """loading (no model yet, or it failed to load) or queue_full."""
        self.passages = list(passages)
        self.retrieval_ms = retrieval_ms


@dataclass(frozen=True)
class Options:
    """How one answer is generated; None means the engine's configured default."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    min_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    logit_bias: dict[int, float] | None = None
    reuse_prefix: bool | None = None
    """Keep the evaluated prompt prefix (the shared system prompt) from the previous answer."""


@dataclass
class Timings:
    retrieval_ms: float = 0.0
    prompt_tokens: int = 0
    queue_wait_ms: float | None = None
    first_token_ms: float | None = None
    generated_tokens: int = 0
    tokens_per_s: float | None = None
    total_ms: float = 0.0


@dataclass
class Answer:
    text: str
    covered: bool
    """False when no passage was relevant enough and the model was not asked."""
    passages: list[Hit]
    cited: list[int] = field(default_factory=list)
    """1-based numbers of the passages the answer cites with [n]."""
    timings: Timings = field(default_factory=Timings)
    finish_reason: str = "stop"
    """stop, length (max_new_tokens reached) or cancelled."""
    cached: bool = False
    """A repeated question: the earlier answer to the same question from the same passages, replayed."""

    def cited_hits(self) -> list[Hit]:
        return [self.passages[n - 1] for n in self.cited]

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "covered": self.covered, "cited": self.cited, "finish_reason": self.finish_reason,
                "cached": self.cached,
                "passages": [h.to_dict() for h in self.passages], "timings": asdict(self.timings)}


@dataclass(frozen=True)
class Event:
    kind: str
    """passages | token | waiting (nothing new yet: a chance to notice a vanished client) | error | done"""
    data: Any


def parse_citations(text: str, n_passages: int) -> list[int]:
    """[n] markers in order of first use, only those naming a passage that was given."""
    seen: list[int] = []
    for match in _CITE.finditer(text):
        n = int(match.group(1))
        if 1 <= n <= n_passages and n not in seen:
            seen.append(n)
    return seen


class Answering:
    """One question on its way: the passages now, the answer as the worker produces it."""

    def __init__(self, passages: list[Hit], timings: Timings, started: float, job: Job | None,
                 not_covered: str = NOT_COVERED, replay: CachedAnswer | None = None,
                 keep: Callable[[Answer], None] | None = None) -> None:
        self.passages, self.timings, self.started, self.job = passages, timings, started, job
        self.not_covered, self.replay, self.keep = not_covered, replay, keep

    @property
    def covered(self) -> bool:
        """False when the manuals do not cover the question: the passages are only the closest ones."""
        return self.job is not None or self.replay is not None

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel.set()

    def events(self, keepalive_s: float | None = None) -> Iterator[Event]:
        """passages, tokens, then done (or error); ``waiting`` every keepalive_s while nothing comes.
        Leaving early, for any reason (a client gone, Ctrl-C), cancels the generation."""
        yield Event("passages", self.passages)
        if self.replay is not None:
            yield from self._replayed(self.replay)
            return
        if self.job is None:
            yield Event("token", self.not_covered)
            self.timings.total_ms = _ms_since(self.started)
            yield Event("done", Answer(self.not_covered, False, self.passages, [], self.timings))
            return
        try:
            for kind, data in self.job.stream(keepalive_s):
                if kind == "token":
                    yield Event("token", data)
                elif kind == "waiting":
                    yield Event("waiting", None)
                elif kind == "error":
                    yield Event("error", data)
                    return
                else:
                    answer = self._answer(data)
                    if self.keep is not None and answer.finish_reason in ("stop", "length"):
                        self.keep(answer)
                    yield Event("done", answer)
                    return
        finally:
            self.job.cancel.set()

    def _replayed(self, replay: CachedAnswer) -> Iterator[Event]:
        """The earlier answer as a stream of a few words at a time, at once."""
        words = re.findall(r"\S+\s*", replay.text)
        self.timings.first_token_ms = _ms_since(self.started)
        for i in range(0, len(words), REPLAY_WORDS):
            yield Event("token", "".join(words[i:i + REPLAY_WORDS]))
        self.timings.generated_tokens = replay.tokens
        self.timings.total_ms = _ms_since(self.started)
        yield Event("done", Answer(replay.text, True, self.passages, parse_citations(replay.text, len(self.passages)),
                                   self.timings, replay.finish_reason, cached=True))

    def _answer(self, stats: GenStats) -> Answer:
        t = self.timings
        t.queue_wait_ms = round(stats.queue_wait_s * 1000, 1)
        t.first_token_ms = None if stats.first_token_s is None else round(stats.first_token_s * 1000, 1)
        t.generated_tokens = stats.tokens
        t.tokens_per_s = None if stats.tokens_per_s is None else round(stats.tokens_per_s, 2)
        t.total_ms = _ms_since(self.started)
        text = stats.text.strip()
        return Answer(text, True, self.passages, parse_citations(text, len(self.passages)), t, stats.finish_reason)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


class Engine:
    """Everything the device needs to answer: the documents, the embedder, the model slot and the
    worker that generates. The running device replaces ``embedder`` and the slot's model on a
    bundle switch; the engine itself stays."""

    def __init__(self, documents: Documents, slot: ModelSlot, worker: GenerationWorker, cfg: EngineConfig,
                 observer: Observer, embedder: OnnxEmbedder | None = None) -> None:
        self.documents, self.slot, self.worker, self.cfg, self.observer = documents, slot, worker, cfg, observer
        self.embedder = embedder
        self.relevance: Calibration | None = None
        """The active bundle's relevance calibration (None: defaults from the embedder's floor); set
        with the embedder on a bundle switch."""
        self.answers = AnswerCache(cfg.answer_cache_size)
        """Finished answers for repeated questions, keyed by the model slot's generation among others."""
        self.model_note = "the model is still loading"
        """Why the slot is empty, for the technician (the running device sets it)."""

    # --- retrieval ---------------------------------------------------------------------------
    def search(self, question: str, k: int | None = None) -> SearchResult:
        """The best passages for question; keyword search alone while vectors are being rebuilt."""
        if self.embedder is None:
            raise Unavailable("the manuals index is still loading; try again in a few seconds", "loading")
        cfg = self.cfg.with_overrides(k=k, candidates=max(self.cfg.candidates, k or 0))
        store, embedder, calibration = self.documents.reader(), self.embedder, self.relevance
        if calibration is not None and calibration.embedder_id not in ("", embedder.spec.id):
            calibration = None  # mid-switch: the new embedder with the old bundle's calibration
        try:
            result = search(store, embedder, question, cfg, calibration=calibration)
        except EmbedderMismatchError:  # vectors are being rebuilt for a new embedder: keywords only
            result = search(store, None, question, cfg, keyword_only=True, calibration=calibration)
        self.observer.retrieval(result.retrieval_ms / 1000)
        return result

    # --- answers -----------------------------------------------------------------------------
    def ask(self, question: str, options: Options | None = None) -> Answering:
        """Retrieve, fit the prompt and queue the generation; Unavailable carries the passages."""
        opts = options or Options()
        started = time.perf_counter()
        if not self.documents.exists():  # a fresh device: say so, rather than "not covered" or an error
            return Answering([], Timings(), started, None, NO_MANUALS)
        result = self.search(question)
        timings = Timings(retrieval_ms=round(result.retrieval_ms, 2))
        if not result.covered:  # the closest passages, and no model call
            return Answering(result.hits, timings, started, None)
        max_new = opts.max_new_tokens or self.cfg.max_new_tokens
        try:
            with self.slot.acquire() as backend:
                self._check_options(backend.name, opts)
                budget = min(self.cfg.prompt_token_budget, backend.context_window - max_new)
                if budget < MIN_PROMPT_TOKENS:
                    raise ContextOverflowError(
                        f"max_tokens {max_new} leaves no room for the question and passages in the "
                        f"{backend.context_window}-token context: ask for at most "
                        f"{backend.context_window - MIN_PROMPT_TOKENS}, or raise context_window")
                prompt, used, timings.prompt_tokens = fit_prompt(question, result.hits, backend.count_tokens, budget)
                model = self.slot.generation
        except NoModelError as exc:
            raise self._unavailable(result) from exc
        if not self._cacheable(opts):
            return Answering(used, timings, started, self._submit(prompt, max_new, opts, used, result.retrieval_ms))
        key = cache_key(question, [(h.chunk_id, h.text) for h in used], max_new, model)
        found = self.answers.get(key)
        self.observer.answer_cache(found is not None)
        if found is not None:
            return Answering(used, timings, started, None, replay=found)
        job = self._submit(prompt, max_new, opts, used, result.retrieval_ms)
        return Answering(used, timings, started, job, keep=lambda answer: self.answers.put(
            key, CachedAnswer(answer.text, answer.finish_reason, answer.timings.generated_tokens)))

    def chat(self, messages: list[dict[str, str]], options: Options | None = None) -> Answering:
        """A chat as given, without retrieval (the OpenAI API's -norag model)."""
        opts = options or Options()
        started = time.perf_counter()
        prompt = render_chat(messages, add_generation_prompt=True)
        max_new = opts.max_new_tokens or self.cfg.max_new_tokens
        try:
            with self.slot.acquire() as backend:
                self._check_options(backend.name, opts)
                n = backend.count_tokens(prompt)
                window = backend.context_window
        except NoModelError as exc:
            raise Unavailable(self.model_note, "loading") from exc
        if n + max_new > window:
            raise ContextOverflowError(f"{n} prompt tokens + max_tokens {max_new} exceed the {window}-token context")
        job = self._submit(prompt, max_new, opts, [], 0.0)
        return Answering([], Timings(prompt_tokens=n), started, job)

    def _cacheable(self, opts: Options) -> bool:
        """Greedy answers with default options are what the model would say again."""
        temperature = self.cfg.temperature if opts.temperature is None else opts.temperature
        return temperature == 0 and not opts.logit_bias and not opts.stop and not opts.min_new_tokens

    def _check_options(self, runtime: str, opts: Options) -> None:
        if opts.logit_bias and runtime != "gguf":
            raise UnsupportedOptionError("logit_bias needs the gguf backend")

    def _submit(self, prompt: str, max_new: int, opts: Options, passages: list[Hit], retrieval_ms: float) -> Job:
        temperature = self.cfg.temperature if opts.temperature is None else opts.temperature
        job = Job(prompt, max_new, temperature, list(opts.stop), opts.logit_bias, opts.min_new_tokens,
                  reuse_prefix=self.cfg.reuse_prefix if opts.reuse_prefix is None else opts.reuse_prefix)
        try:
            return self.worker.submit(job)
        except QueueFullError as exc:
            raise Unavailable("busy: every place in the queue is taken; showing the passages instead", "queue_full",
                              passages, retrieval_ms) from exc

    def _unavailable(self, result: SearchResult) -> Unavailable:
        self.observer.rejected("loading")
        return Unavailable(self.model_note, "loading", result.hits, result.retrieval_ms)
