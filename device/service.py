"""The running device: its active bundle, the model slot and worker, the engine and the documents.

``DeviceService`` composes the rooms for `phibox serve`: it loads the embedder and model in the
background (search works as soon as the embedder is loaded, answers once the model is), switches
to a new bundle live (``activate``: load and health-check beside the old one, then one swap of
the slot; the answer under way finishes on the old model), and runs the admin's document tasks.
State: loading → ready, or degraded (the model failed to load: search still works).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

from phibox.device.config import EngineConfig
from phibox.device.documents import Documents
from phibox.device.engine import Engine
from phibox.device.errors import PhiboxError
from phibox.device.installed import InstalledBundle
from phibox.device.lifecycle import installer
from phibox.device.lifecycle.activation import index_action, prebuilt_index
from phibox.device.lifecycle.health import load_checked
from phibox.device.lifecycle.memory import MemoryPlan, peak_rss_bytes, plan, reset_peak_rss
from phibox.device.lifecycle.state import StateDir
from phibox.device.observe import Observer
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.relevance import calibration_for
from phibox.device.runtime.backend import Backend
from phibox.device.runtime.loader import choose_runtime, load_backend
from phibox.device.runtime.slot import ModelSlot
from phibox.device.runtime.worker import GenerationWorker

log = logging.getLogger("phibox.service")


class DeviceService:
    def __init__(self, bundle_dir: Path, db_path: Path, cfg: EngineConfig, observer: Observer,
                 state: StateDir | None = None, backend: str | None = None, queue_size: int = 4,
                 load_attempts: int = 1, load_retry_s: float = 10.0, memory_budget_mb: int = 0) -> None:
        self.bundle = InstalledBundle.open(bundle_dir)
        self.cfg, self.observer, self.backend_name = cfg, observer, backend
        self.state_dir = state
        """The device state directory, when serving from one (needed for admin installs)."""
        self.load_attempts, self.load_retry_s = load_attempts, load_retry_s
        self.memory_budget_mb = memory_budget_mb
        """0: take the budget from the system (MemAvailable, the cgroup's memory.max)."""
        self.last_plan: MemoryPlan | None = None
        """How the last live switch went: side by side or drain, the estimate and the room."""
        self.documents = Documents(db_path)
        self.slot = ModelSlot()
        self.worker = GenerationWorker(self.slot, queue_size, observer)
        self.engine = Engine(self.documents, self.slot, self.worker, cfg, observer)
        self.swap_lock = threading.Lock()
        """One activation at a time."""
        self.reembedding = threading.Event()
        self.ingest_status: dict[str, object] = {"running": False, "done": 0, "total": 0, "file": "",
                                                 "message": ""}
        self.reindex_lock = threading.Lock()
        self.reindex_again = False
        """A re-index asked for while one runs: one more run follows."""
        self.state = "loading"
        self.error = ""
        self.started_at = time.time()
        self.ready = threading.Event()
        """Set once loading ends, either way."""

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, background: bool = True) -> None:
        self.worker.start()
        if background:
            threading.Thread(target=self._load, name="phibox-load", daemon=True).start()
        else:
            self._load()

    def _load(self) -> None:
        """Load the embedder and model; on failure keep serving passages, retry with backoff, then fall
        back to the previous bundle (when serving a state directory that keeps one)."""
        for attempt in range(1, self.load_attempts + 1):
            if self.state == "ready":  # a bundle activated meanwhile (an admin push) already serves
                return
            try:
                if self.engine.embedder is None:
                    embedder = OnnxEmbedder(self.bundle.embedder_dir, threads=self.cfg.thread_count)
                    self.engine.relevance = calibration_for(self.bundle.root, embedder.spec)
                    self.engine.embedder = embedder
                self.slot.replace(load_backend(self.bundle, self.cfg, self.backend_name))
                self.state, self.error = "ready", ""
                self.observer.model_ready(True)
                log.info("model %s loaded (%s)", self.model_id, self.slot.backend.name if self.slot.backend else "-")
                return
            except Exception as exc:  # any load failure degrades to search-only, never crashes the kiosk
                self.state, self.error = "degraded", f"{type(exc).__name__}: {exc}"
                self.engine.model_note = f"the model could not be loaded ({self.error}); passages still work"
                log.error("model failed to load (try %d of %d): %s", attempt, self.load_attempts, self.error)
                self.record_event("model_load_failed", version=self.bundle.manifest.version, attempt=attempt,
                                  error=self.error)
            finally:
                self.ready.set()  # READY for systemd after the first try, either way: passages work
            if attempt < self.load_attempts:
                time.sleep(self.load_retry_s * 2 ** (attempt - 1))
        self._fall_back()

    def _fall_back(self) -> None:
        """The active bundle's model never loaded: go back to the previous kept bundle, health-checked."""
        state = self.state_dir
        if state is None or state.previous_version() is None or self.state == "ready":
            return
        failed = self.bundle.manifest.version
        try:
            restored = installer.rollback(state, self.activate, why="never loaded its model (the device fell back)")
        except Exception as exc:  # stays degraded (passages only); the admin sees why
            self.record_event("fallback_failed", version=failed, error=f"{type(exc).__name__}: {exc}")
            log.error("falling back from version %s failed: %s", failed, exc)
            return
        self.record_event("fell_back", failed=failed, restored=restored)
        log.warning("version %s never loaded; version %s is active again", failed, restored)

    def activate(self, folder: Path) -> None:
        """Switch to the bundle in folder: load and health-check it beside the running one, then swap.
        The installer calls this as its health check; if it raises, nothing was switched."""
        with self.swap_lock:
            bundle = InstalledBundle.open(folder)
            memplan = plan(bundle, self.cfg, choose_runtime(bundle, self.backend_name), self.memory_budget_mb)
            if self.slot.backend is None:  # nothing loaded (degraded): nothing to drain
                memplan = replace(memplan, way="side_by_side")
            reset_peak_rss()
            if memplan.way == "drain":
                embedder, backend = self._drain_and_load(bundle)
            else:
                embedder, backend = load_checked(bundle, self.cfg, self.backend_name)
            relevance = calibration_for(bundle.root, embedder.spec)  # a bad file fails the switch
            self.bundle, self.engine.embedder, self.engine.relevance = bundle, embedder, relevance
            self.slot.replace(backend)  # side by side: the old model closes after the answer that holds it
            self.state, self.error = "ready", ""
            self.observer.model_ready(True)
            self.last_plan = memplan
            self.record_event("model_switched", version=bundle.manifest.version, way=memplan.way,
                              estimate_mb=memplan.estimate_mb, available_mb=memplan.available_mb,
                              peak_rss_mb=peak_rss_bytes() >> 20)
            log.info("switched to %s v%s (%s)", bundle.manifest.name, bundle.manifest.version, memplan.way)
            action = index_action(self.documents, bundle, embedder.spec)
        if action == "adopt":
            merged = self.documents.adopt(prebuilt_index(bundle), embedder, self.cfg)
            self.record_event("index_merged", version=bundle.manifest.version, **merged)
        elif action == "reembed":
            threading.Thread(target=self.reembed, args=(embedder,), name="phibox-reembed", daemon=True).start()

    def _drain_and_load(self, bundle: InstalledBundle) -> tuple[OnnxEmbedder, Backend]:
        """The new model does not fit beside the old: let the answer under way finish, close the old
        model, load the new one (questions meanwhile get the passages); on failure load the old back."""
        old = self.bundle
        self.state = "updating"
        self.engine.model_note = "updating the model: here are the passages; answers are back in a minute"
        self.slot.drain()
        try:
            return load_checked(bundle, self.cfg, self.backend_name)
        except Exception:
            try:
                self.slot.replace(load_backend(old, self.cfg, self.backend_name))
                self.state = "ready"
            except Exception as exc:  # the old one does not load either: passages only, the admin sees why
                self.state, self.error = "degraded", f"{type(exc).__name__}: {exc}"
                self.engine.model_note = f"the model could not be loaded ({self.error}); passages still work"
            raise

    def reembed(self, embedder: OnnxEmbedder) -> None:
        """Rebuild the vectors for embedder (keyword search answers meanwhile)."""
        self.reembedding.set()
        try:
            n = self.documents.reembed(embedder, self.cfg)
            self.record_event("reembedded", chunks=n, embedder=embedder.spec.id)
        except Exception as exc:  # the old index keeps serving keyword search; the admin sees why
            self.record_event("reembed_failed", error=f"{type(exc).__name__}: {exc}")
            log.error("re-embedding failed: %s", exc)
        finally:
            self.reembedding.clear()

    def record_event(self, event: str, **detail: object) -> None:
        if self.state_dir is not None:
            self.state_dir.record(event, **detail)

    def close(self) -> None:
        self.worker.stop()
        self.slot.close()
        self.documents.close()

    @property
    def model_id(self) -> str:
        return f"phibox-{self.bundle.manifest.name}"

    # --- documents (admin area) --------------------------------------------------------------
    def reindex(self, folder: Path) -> None:
        """Ingest folder (pruning vanished files) with the active embedder; progress in ingest_status.
        Asked again while a run is under way (a second upload), it queues one more run instead of
        refusing, so every uploaded manual gets indexed."""
        status = self.ingest_status
        if self.engine.embedder is None:
            status["message"] = "the embedder is still loading; try again in a few seconds"
            return
        with self.reindex_lock:
            if status["running"]:
                self.reindex_again = True
                status["message"] = "queued: indexing again when the current run ends"
                return
            status.update(running=True, done=0, total=0, file="", message="")
        while True:
            self._reindex_once(folder)
            with self.reindex_lock:
                if not self.reindex_again:
                    status["running"] = False
                    return
                self.reindex_again = False

    def _reindex_once(self, folder: Path) -> None:
        status = self.ingest_status

        def on_file(done: int, total: int, name: str) -> None:
            status.update(done=done, total=total, file=name)

        try:  # waits for another writer (a `phibox ingest` on the shell) rather than dropping the run
            report = self.documents.ingest([folder], self.engine.embedder, self.cfg, prune=True, on_file=on_file)
            status.update(done=status["total"], message=f"added {len(report.added)}, updated {len(report.updated)}, "
                          f"removed {len(report.pruned)}, failed {len(report.failed)}")
            self.record_event("reindexed", added=len(report.added), failed=[f for f, _ in report.failed])
        except Exception as exc:  # reported to the admin page, the server keeps serving
            status["message"] = f"indexing failed: {type(exc).__name__}: {exc}"

    def delete_document(self, path: str) -> None:
        if not path:
            raise PhiboxError("say which document to delete")
        self.documents.delete(path)
        manuals = self.state_dir.root / "manuals" if self.state_dir else None
        if manuals is not None and Path(path).parent == manuals.resolve():
            Path(path).unlink(missing_ok=True)
        self.record_event("document_deleted", path=path)
