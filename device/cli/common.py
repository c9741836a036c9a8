"""Shared command-line plumbing for the device commands: where the bundle and database are, and
the engine a command answers with (the same one the server runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from phibox.device.config import EngineConfig
from phibox.device.documents import Documents
from phibox.device.engine import Engine
from phibox.device.errors import ConfigError
from phibox.device.installed import InstalledBundle, default_bundle_dir, default_db_path
from phibox.device.lifecycle.state import StateDir
from phibox.device.observe import NullObserver
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.relevance import calibration_for
from phibox.device.runtime.slot import ModelSlot
from phibox.device.runtime.worker import GenerationWorker


def add_location_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=None,
                        help="documents database (default: documents.db in the device's state directory)")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="unpacked bundle folder (default: the device's active bundle)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")


def open_parts(args: argparse.Namespace) -> tuple[InstalledBundle, Documents, EngineConfig]:
    cfg = EngineConfig().with_overrides(threads=args.threads)
    bundle = InstalledBundle.open(args.bundle or default_bundle_dir())
    return bundle, Documents(args.db or default_db_path()), cfg


def load_embedder(bundle: InstalledBundle, cfg: EngineConfig) -> OnnxEmbedder:
    return OnnxEmbedder(bundle.embedder_dir, threads=cfg.thread_count)


def start_engine(bundle: InstalledBundle, documents: Documents, cfg: EngineConfig, backend: str | None,
                 with_model: bool = True) -> Engine:
    """The engine with this bundle's embedder and (with_model) its model loaded and a worker running.
    Stop it with ``stop_engine``."""
    from phibox.device.runtime.loader import load_backend

    slot = ModelSlot()
    worker = GenerationWorker(slot, queue_size=1, observer=NullObserver())
    engine = Engine(documents, slot, worker, cfg, NullObserver(), load_embedder(bundle, cfg))
    engine.relevance = calibration_for(bundle.root, engine.embedder.spec)
    if with_model:
        slot.replace(load_backend(bundle, cfg, backend))
        worker.start()
    return engine


def stop_engine(engine: Engine) -> None:
    if engine.worker.thread.is_alive():
        engine.worker.stop()
    engine.slot.close()
    engine.documents.close()


def refuse_while_serving(state: StateDir, action: str) -> None:
    """A bundle change from the shell would leave a running kiosk on the old model (and could prune
    the folder it runs from): the running server must do it, live."""
    server = state.running_server()
    if server is not None:
        url = server["url"]
        raise ConfigError(
            f"the kiosk server (pid {server['pid']}) runs from {state.root}: {action} through it, live — "
            f"`phibox push FILE --to {url} --token-file TOKEN` or the admin page at {url}/admin — "
            "or stop the server first")
