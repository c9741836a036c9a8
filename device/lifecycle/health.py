"""The health check of a bundle: its embedder embeds, its model loads and generates, retrieval answers.

``load_checked`` is used by both ways a bundle becomes active: the command line's install (which
closes the model again) and the running server's live activation (which keeps it).
"""

from __future__ import annotations

from pathlib import Path

from phibox.device.config import EngineConfig
from phibox.device.errors import PhiboxError
from phibox.device.installed import InstalledBundle
from phibox.device.prompt import render_chat
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.retrieve import search
from phibox.device.rag.store import DocumentStore
from phibox.device.runtime.backend import Backend
from phibox.device.runtime.loader import load_backend

PROBE = render_chat([{"role": "user", "content": "Health check: say OK."}])


class HealthCheckError(PhiboxError):
    """The activated bundle cannot serve."""


def load_checked(bundle: InstalledBundle, cfg: EngineConfig, backend_name: str | None = None
                 ) -> tuple[OnnxEmbedder, Backend]:
    """The bundle's embedder and model, loaded and each made to work once; HealthCheckError if not."""
    try:
        embedder = OnnxEmbedder(bundle.embedder_dir, threads=cfg.thread_count)
        if embedder.embed(["health check"]).shape != (1, embedder.spec.dim):
            raise HealthCheckError("the embedder returned vectors of the wrong shape")
        backend = load_backend(bundle, cfg, backend_name)
    except PhiboxError:
        raise
    except Exception as exc:
        raise HealthCheckError(f"the model or embedder does not load: {type(exc).__name__}: {exc}") from exc
    try:
        if not list(backend.generate(PROBE, 4, 0.0)):
            raise HealthCheckError("the model generated nothing for the probe prompt")
    except BaseException:
        backend.close()
        raise
    return embedder, backend


def check_bundle(bundle_dir: Path, db_path: Path, cfg: EngineConfig, backend_name: str | None = None) -> None:
    """Load the bundle's embedder and model, generate a few tokens, and query the documents index."""
    embedder, backend = load_checked(InstalledBundle.open(bundle_dir), cfg, backend_name)
    backend.close()
    if db_path.is_file():
        store = DocumentStore.open(db_path, readonly=True)
        try:
            if store.embedder() == (embedder.spec.id, embedder.spec.dim):
                search(store, embedder, "health check", cfg)
        finally:
            store.close()
