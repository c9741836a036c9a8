"""Shared command-line plumbing for the device commands: where the bundle and database are."""

from __future__ import annotations

import argparse
from pathlib import Path

from device.config import EngineConfig
from device.embedder import OnnxEmbedder
from device.installed import InstalledBundle, default_bundle_dir, default_db_path
from device.store import DocumentStore


def add_location_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=None,
                        help="documents database (default: documents.db in the device's state directory)")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="unpacked bundle folder (default: the device's active bundle)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")


def open_parts(args: argparse.Namespace, readonly_db: bool) -> tuple[InstalledBundle, DocumentStore, EngineConfig]:
    cfg = EngineConfig().with_overrides(threads=args.threads)
    bundle = InstalledBundle.open(args.bundle or default_bundle_dir())
    store = DocumentStore.open(args.db or default_db_path(), readonly=readonly_db)
    return bundle, store, cfg


def load_embedder(bundle: InstalledBundle, cfg: EngineConfig) -> OnnxEmbedder:
    return OnnxEmbedder(bundle.embedder_dir, threads=cfg.thread_count)
