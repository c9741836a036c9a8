"""The health check after an activation: the model loads and generates, retrieval answers."""

from __future__ import annotations

from pathlib import Path

from device.config import EngineConfig
from device.errors import PhiboxError
from device.prompt import render_chat

PROBE = render_chat([{"role": "user", "content": "Health check: say OK."}])


class HealthCheckError(PhiboxError):
    """The activated bundle cannot serve."""


def check_bundle(bundle_dir: Path, db_path: Path, cfg: EngineConfig, backend_name: str | None = None) -> None:
    """Load the bundle's embedder and model, generate a few tokens, and query the documents index."""
    from device.backends import LlamaCppBackend, OnnxGenaiBackend
    from device.embedder import OnnxEmbedder
    from device.installed import InstalledBundle
    from device.retrieve import search
    from device.store import DocumentStore

    bundle = InstalledBundle.open(bundle_dir)
    try:
        embedder = OnnxEmbedder(bundle.embedder_dir, threads=cfg.thread_count)
        if embedder.embed(["health check"]).shape != (1, embedder.spec.dim):
            raise HealthCheckError("the embedder returned vectors of the wrong shape")
        name = backend_name or ("gguf" if "gguf" in bundle.manifest.formats else "onnx")
        backend = (LlamaCppBackend(bundle.gguf_path(), cfg.context_window, cfg.thread_count) if name == "gguf"
                   else OnnxGenaiBackend(bundle.onnx_dir(), cfg.thread_count))
    except PhiboxError:
        raise
    except Exception as exc:
        raise HealthCheckError(f"the model or embedder does not load: {type(exc).__name__}: {exc}") from exc
    try:
        pieces = list(backend.generate(PROBE, 4, 0.0))
        if not pieces:
            raise HealthCheckError("the model generated nothing for the probe prompt")
    finally:
        backend.close()
    if db_path.is_file():
        store = DocumentStore.open(db_path, readonly=True)
        try:
            if store.embedder() == (embedder.spec.id, embedder.spec.dim):
                search(store, embedder, "health check", cfg)
        finally:
            store.close()
