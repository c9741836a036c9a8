"""Live bundle activation in the running server, and keeping the documents index in step with the
bundle's embedder.

``LiveSwap.activate(folder)`` is the installer's health check when a bundle arrives through the
server: it loads the new embedder and model, makes the model generate, and only then switches
the service over. The generation under way finishes on the old model (closed afterwards);
queued questions run on the new one. If anything fails, nothing was switched and the installer
puts the `current` symlink back.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from device import db
from device.embedder import OnnxEmbedder
from device.health import PROBE, HealthCheckError
from device.ingest import _fill_missing_vectors
from device.installed import InstalledBundle
from device.store import DocumentStore

if TYPE_CHECKING:
    from device.backends import Backend
    from device.service import DeviceService

log = logging.getLogger("phibox.swap")


class LiveSwap:
    def __init__(self, service: DeviceService) -> None:
        self.service = service
        self.reembedding = threading.Event()

    def activate(self, folder: Path) -> None:
        svc = self.service
        bundle = InstalledBundle.open(folder)
        embedder = OnnxEmbedder(bundle.embedder_dir, threads=svc.engine.thread_count)
        backend = svc.load_backend_for(bundle)
        try:
            if not list(backend.generate(PROBE, 4, 0.0)):
                raise HealthCheckError("the new model generated nothing for the probe prompt")
        except Exception:
            backend.close()
            raise
        old = svc.backend
        with svc.swap_lock:
            svc.bundle, svc.embedder, svc.backend = bundle, embedder, backend
            svc.state, svc.error = "ready", ""
        svc.metrics.model_ready.set(1)
        log.info("switched to %s v%s", bundle.manifest.name, bundle.manifest.version)
        if old is not None:
            threading.Thread(target=self._retire, args=(old,), daemon=True).start()
        self.sync_index(bundle, embedder)

    def _retire(self, old: Backend) -> None:
        while self.service.worker.current_backend is old:
            time.sleep(0.1)
        old.close()

    def sync_index(self, bundle: InstalledBundle, embedder: OnnxEmbedder) -> None:
        """Use the bundle's prebuilt index if it has one; else re-embed in the background when the
        embedder changed (keyword search answers meanwhile; vectors of two embedders never mix)."""
        svc = self.service
        prebuilt = bundle.root / "index" / "documents.db"
        if prebuilt.is_file():
            replace_db(svc.db_path, prebuilt)
            return
        if not svc.db_path.is_file():
            return
        store = DocumentStore.open(svc.db_path, readonly=True)
        try:
            current = store.embedder()
        finally:
            store.close()
        if current is not None and current != (embedder.spec.id, embedder.spec.dim):
            threading.Thread(target=self.reembed, args=(embedder,), name="phibox-reembed", daemon=True).start()

    def reembed(self, embedder: OnnxEmbedder) -> None:
        svc = self.service
        self.reembedding.set()
        tmp = svc.db_path.with_name(svc.db_path.name + ".reembed")
        try:
            with svc.write_lock:
                tmp.unlink(missing_ok=True)
                source, target = db.connect(svc.db_path), db.connect(tmp)
                source.backup(target)
                source.close()
                target.close()
                store = DocumentStore.open(tmp)
                try:
                    store.bind_embedder(embedder.spec, reembed=True)
                    n = _fill_missing_vectors(store, embedder, svc.engine, progress=False)
                finally:
                    store.close()
                replace_db(svc.db_path, tmp)
            svc.record_event("reembedded", chunks=n, embedder=embedder.spec.id)
        except Exception as exc:  # the old index keeps serving keyword search; the admin sees why
            svc.record_event("reembed_failed", error=f"{type(exc).__name__}: {exc}")
            log.error("re-embedding failed: %s", exc)
        finally:
            tmp.unlink(missing_ok=True)
            self.reembedding.clear()


def replace_db(target: Path, source: Path) -> None:
    """Put source in target's place atomically; the old file's WAL is checkpointed first."""
    if target.is_file():
        conn = db.connect(target)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
    staging = target.with_name(target.name + ".incoming")
    shutil.copyfile(source, staging)
    with open(staging, "rb") as fh:
        os.fsync(fh.fileno())
    for suffix in ("-wal", "-shm"):  # empty after the checkpoint; the new file starts its own
        Path(str(target) + suffix).unlink(missing_ok=True)
    os.replace(staging, target)
