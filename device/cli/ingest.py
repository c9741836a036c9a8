"""`phibox ingest PATH...`: index manuals (.md .txt .html .pdf) into the documents database.

`phibox export --docs` runs this same command to build a bundle's prebuilt index (with
``--embedder`` and ``--for-bundle``), so a shipped index is made by the device's own ingestion."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from phibox.device.cli.common import add_location_arguments, open_parts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", type=Path, nargs="+", help="files or folders of manuals")
    add_location_arguments(parser)
    parser.add_argument("--embedder", type=Path, default=None,
                        help="embedder folder (model.onnx + embedder.json) instead of the bundle's")
    parser.add_argument("--prune", action="store_true", help="drop documents that vanished from the given folders")
    parser.add_argument("--reembed", action="store_true", help="rebuild all vectors with the bundle's embedder")
    parser.add_argument("--for-bundle", action="store_true",
                        help="leave a single self-contained file (no WAL), to ship inside a bundle")
    parser.add_argument("--json", action="store_true", help="print the report and counts as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from phibox.device.config import EngineConfig
    from phibox.device.documents import Documents
    from phibox.device.errors import ConfigError
    from phibox.device.rag.embedder import OnnxEmbedder

    if args.embedder is not None:
        if args.db is None:
            raise ConfigError("`phibox ingest --embedder DIR` needs --db FILE: the database to fill")
        cfg = EngineConfig().with_overrides(threads=args.threads)
        documents, embedder = Documents(args.db), OnnxEmbedder(args.embedder, threads=cfg.thread_count)
    else:
        bundle, documents, cfg = open_parts(args)
        embedder = OnnxEmbedder(bundle.embedder_dir, threads=cfg.thread_count)
    try:
        report = documents.ingest(args.paths, embedder, cfg, prune=args.prune, reembed=args.reembed,
                                  progress=not (args.no_progress or args.json))
        counts = documents.counts()
    finally:
        documents.close()
    if args.for_bundle:
        documents.make_standalone()
    if args.json:
        print(json.dumps({"added": report.added, "updated": report.updated, "unchanged": report.unchanged,
                          "pruned": report.pruned, "failed": report.failed, "chunks": report.chunks,
                          "counts": counts}, ensure_ascii=False, indent=2))
        return 0
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
