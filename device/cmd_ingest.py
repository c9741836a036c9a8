"""`phibox ingest PATH...`: index manuals (.md .txt .html .pdf) into the documents database."""

from __future__ import annotations

import argparse
from pathlib import Path

from device.cmd_common import add_location_arguments, load_embedder, open_parts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", type=Path, nargs="+", help="files or folders of manuals")
    add_location_arguments(parser)
    parser.add_argument("--prune", action="store_true", help="drop documents that vanished from the given folders")
    parser.add_argument("--reembed", action="store_true", help="rebuild all vectors with the bundle's embedder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from device.ingest import ingest

    bundle, store, cfg = open_parts(args, readonly_db=False)
    try:
        report = ingest(args.paths, store, load_embedder(bundle, cfg), cfg, prune=args.prune, reembed=args.reembed,
                        progress=not args.no_progress)
        counts = store.counts()
    finally:
        store.close()
    print(f"added {len(report.added)}, updated {len(report.updated)}, unchanged {len(report.unchanged)}, "
          f"pruned {len(report.pruned)}, failed {len(report.failed)}; {report.chunks} new chunks")
    if report.reembedded:
        print(f"re-embedded {report.reembedded} chunks")
    for path, note in report.notes:
        print(f"note: {path}: {note}")
    for path, reason in report.failed:
        print(f"skipped: {path}: {reason}")
    print(f"database: {counts['documents']} documents, {counts['chunks']} chunks, {counts['vectors']} vectors")
    return 0
