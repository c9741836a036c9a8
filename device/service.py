"""The running device: bundle, embedder, model and generation worker, loaded in the background.

Search works as soon as the embedder is loaded (about a second); answers once the model is.
State: loading → ready, or degraded (the model failed to load: search still works).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from device.answer import fit_prompt
from device.backends import Backend, LlamaCppBackend, OnnxGenaiBackend
from device.config import EngineConfig
from device.embedder import OnnxEmbedder
from device.errors import PhiboxError
from device.installed import InstalledBundle
from device.metrics import Metrics
from device.retrieve import Hit, SearchResult, search
from device.serve_config import ServeConfig
from device.store import DocumentStore
from device.worker import GenerationWorker, Job

log = logging.getLogger("phibox.service")


class NotReadyError(PhiboxError):
    """The model is still loading, or failed to load."""


@dataclass(frozen=True)
class Prepared:
    prompt: str
    passages: list[Hit]
    prompt_tokens: int


class DeviceService:
    def __init__(self, bundle_dir: Path, db_path: Path, serve: ServeConfig, engine: EngineConfig,
                 metrics: Metrics) -> None:
        self.bundle = InstalledBundle.open(bundle_dir)
        self.db_path, self.serve, self.engine, self.metrics = db_path, serve, engine, metrics
        self.embedder: OnnxEmbedder | None = None
        self.backend: Backend | None = None
        self.state = "loading"
        self.error = ""
        self.started_at = time.time()
        self.ready = threading.Event()
        """Set once loading ends, either way."""
        self.worker = GenerationWorker(lambda: self.backend, serve.queue_size, metrics)

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, background: bool = True) -> None:
        self.worker.start()
        if background:
            threading.Thread(target=self._load, name="phibox-load", daemon=True).start()
        else:
            self._load()

    def _load(self) -> None:
        try:
            self.embedder = OnnxEmbedder(self.bundle.embedder_dir, threads=self.engine.thread_count)
            self.backend = self._load_backend()
            self.state = "ready"
            self.metrics.model_ready.set(1)
            log.info("model %s loaded (%s)", self.model_id, self.backend.name)
        except Exception as exc:  # any load failure degrades to search-only, never crashes the kiosk
            self.state, self.error = "degraded", f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", self.error)
        finally:
            self.ready.set()

    def _load_backend(self) -> Backend:
        name = self.serve.backend or ("gguf" if "gguf" in self.bundle.manifest.formats else "onnx")
        if name == "gguf":
            return LlamaCppBackend(self.bundle.gguf_path(), self.engine.context_window, self.engine.thread_count)
        return OnnxGenaiBackend(self.bundle.onnx_dir(), self.engine.thread_count)

    def close(self) -> None:
        self.worker.stop()
        if self.backend is not None:
            self.backend.close()

    # --- what the routes use -----------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return f"phibox-{self.bundle.manifest.name}"

    def search(self, question: str, k: int | None = None) -> SearchResult:
        if self.embedder is None:
            raise NotReadyError("the manuals index is still loading; try again in a few seconds")
        cfg = self.engine.with_overrides(k=k, candidates=max(self.engine.candidates, k or 0))
        store = DocumentStore.open(self.db_path, readonly=True)
        try:
            result = search(store, self.embedder, question, cfg)
        finally:
            store.close()
        self.metrics.retrieval.observe(result.retrieval_ms / 1000)
        return result

    def require_model(self) -> Backend:
        if self.backend is None:
            if self.state == "degraded":
                raise NotReadyError(f"the model could not be loaded ({self.error}); passages still work")
            raise NotReadyError("the model is still loading")
        return self.backend

    def prepare_rag(self, question: str, hits: list[Hit], max_new_tokens: int) -> Prepared:
        backend = self.require_model()
        budget = min(self.engine.prompt_token_budget, backend.context_window - max_new_tokens)
        prompt, used, n = fit_prompt(question, hits, backend, budget)
        return Prepared(prompt, used, n)

    def submit(self, job: Job) -> Job:
        self.require_model()
        return self.worker.submit(job)
