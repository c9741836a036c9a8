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
from device.state import StateDir
from device.store import DocumentStore, EmbedderMismatchError
from device.swap import LiveSwap
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
                 metrics: Metrics, state: StateDir | None = None) -> None:
        self.bundle = InstalledBundle.open(bundle_dir)
        self.db_path, self.serve, self.engine, self.metrics = db_path, serve, engine, metrics
        self.state_dir = state
        """The device state directory, when serving from one (needed for admin installs)."""
        self.swap_lock = threading.Lock()
        self.write_lock = threading.Lock()
        """One writer of the documents database at a time (ingest, delete, re-embed)."""
        self.live = LiveSwap(self)
        self.ingest_status: dict[str, object] = {"running": False, "done": 0, "total": 0, "file": "",
                                                 "message": ""}
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
        return self.load_backend_for(self.bundle)

    def load_backend_for(self, bundle: InstalledBundle) -> Backend:
        name = self.serve.backend or ("gguf" if "gguf" in bundle.manifest.formats else "onnx")
        if name not in bundle.manifest.formats:
            name = bundle.manifest.formats[0]
        if name == "gguf":
            return LlamaCppBackend(bundle.gguf_path(), self.engine.context_window, self.engine.thread_count)
        return OnnxGenaiBackend(bundle.onnx_dir(), self.engine.thread_count)

    def record_event(self, event: str, **detail: object) -> None:
        if self.state_dir is not None:
            self.state_dir.record(event, **detail)

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
            try:
                result = search(store, self.embedder, question, cfg)
            except EmbedderMismatchError:  # vectors are being rebuilt for a new embedder: keywords only
                result = search(store, None, question, cfg, keyword_only=True)
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

    # --- documents (admin area) --------------------------------------------------------------
    def documents(self) -> list[dict[str, object]]:
        if not self.db_path.is_file():
            return []
        store = DocumentStore.open(self.db_path, readonly=True)
        try:
            rows = store.conn.execute(
                "SELECT path, source, title, n_chunks, ingested_at FROM documents ORDER BY source").fetchall()
        finally:
            store.close()
        return [{"path": r[0], "source": r[1], "title": r[2], "chunks": r[3], "ingested_at": r[4]} for r in rows]

    def reindex(self, folder: Path) -> None:
        """Ingest folder (pruning vanished files) with the active embedder; progress in ingest_status."""
        from device.ingest import ingest

        if self.embedder is None or not self.write_lock.acquire(blocking=False):
            self.ingest_status["message"] = "busy: another indexing run is under way"
            return
        status = self.ingest_status
        status.update(running=True, done=0, total=0, file="", message="")

        def on_file(done: int, total: int, name: str) -> None:
            status.update(done=done, total=total, file=name)

        try:
            store = DocumentStore.open(self.db_path)
            try:
                report = ingest([folder], store, self.embedder, self.engine, prune=True, progress=False,
                                on_file=on_file)
            finally:
                store.close()
            status.update(done=status["total"], message=f"added {len(report.added)}, updated {len(report.updated)}, "
                          f"removed {len(report.pruned)}, failed {len(report.failed)}")
            self.record_event("reindexed", added=len(report.added), failed=[f for f, _ in report.failed])
        except Exception as exc:  # reported to the admin page, the server keeps serving
            status["message"] = f"indexing failed: {type(exc).__name__}: {exc}"
        finally:
            status["running"] = False
            self.write_lock.release()

    def delete_document(self, path: str) -> None:
        with self.write_lock:
            store = DocumentStore.open(self.db_path)
            try:
                if path not in {d["path"] for d in self.documents()}:
                    raise PhiboxError(f"no document {path!r} in the index")
                store.delete_document(path)
            finally:
                store.close()
        manuals = self.state_dir.root / "manuals" if self.state_dir else None
        if manuals is not None and Path(path).parent == manuals.resolve():
            Path(path).unlink(missing_ok=True)
        self.record_event("document_deleted", path=path)
