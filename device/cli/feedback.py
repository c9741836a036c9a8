"""`phibox feedback export|merge`: the kiosk's ratings and reviewed answers as training data.

export reads one device's documents.db (read-only: a running kiosk is not disturbed) and writes
the JSONL lines `phibox train --data` reads; merge joins the exports of many kiosks into one file,
one line per question (rules in rag/feedback_merge.py). Nothing leaves a device by itself: an
admin runs export on each device and carries the files away.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from phibox.device.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ex = sub.add_parser("export", help="write this device's feedback as training JSONL",
                        description="write this device's feedback as training JSONL (question, answer, context "
                                    "as shown, and a \"feedback\" provenance object)")
    ex.add_argument("--state", type=Path, default=None,
                    help="device state directory (default: $PHIBOX_STATE_DIR or /var/lib/phibox)")
    ex.add_argument("--db", type=Path, default=None, help="documents database instead of <state>/documents.db")
    ex.add_argument("--out", type=Path, required=True, help="JSONL file to write, e.g. kiosk1.jsonl")
    ex.add_argument("--since", type=_date, default=None, metavar="DATE",
                    help="only feedback given at or after DATE (2025-03-01 or 2025-03-01T08:00, UTC)")
    ex.add_argument("--reviewed-only", action="store_true",
                    help="only answers an admin reviewed (leave out unreviewed 'helpful' ones)")
    mg = sub.add_parser("merge", help="join exports from several kiosks, one line per question",
                        description="join exports from several kiosks: one line per question (case, spaces and "
                                    "trailing punctuation ignored), the reviewed answer kept, newest first")
    mg.add_argument("files", type=Path, nargs="+", help="JSONL files from `phibox feedback export`")
    mg.add_argument("--out", type=Path, required=True, help="merged JSONL file to write")


def _date(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: write 2025-03-01 or 2025-03-01T08:00") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def run(args: argparse.Namespace) -> int:
    return export(args) if args.action == "export" else merge(args)


def export(args: argparse.Namespace) -> int:
    from phibox.device import paths
    from phibox.device.lifecycle.state import StateDir
    from phibox.device.rag import feedback
    from phibox.device.rag.feedback_merge import write_jsonl
    from phibox.device.rag.store import DocumentStore

    db_path = args.db or StateDir(args.state or paths.state_dir()).db
    if not db_path.is_file():
        raise ConfigError(f"{db_path} does not exist: pass --state DIR of a device (the folder holding documents.db)")
    store = DocumentStore.open(db_path, readonly=True)
    try:
        has_table = store.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'feedback'").fetchone()
        if not has_table:
            raise ConfigError(f"{db_path} has no feedback table yet: no kiosk has rated an answer with this "
                              "phibox version (start `phibox serve` once to update the database)")
        result = feedback.training_export(store.conn, args.since, args.reviewed_only)
        left_out = (len(feedback.training_export(store.conn, args.since, False).lines) - len(result.lines)
                    if args.reviewed_only else 0)
    finally:
        store.close()
    write_jsonl(args.out, result.lines)
    reviewed = sum(1 for line in result.lines if line["feedback"]["reviewed"])
    refusals = sum(1 for line in result.lines if line["feedback"]["not_covered"])
    print(f"wrote {len(result.lines)} line(s) to {args.out}: {reviewed} reviewed, "
          f"{len(result.lines) - reviewed} unreviewed 'helpful', {refusals} 'not covered'")
    print(f"skipped {result.skipped} unreviewed 'not helpful' rating(s): without a reviewed answer they teach nothing"
          + (f"; left out {left_out} unreviewed 'helpful' answer(s) (--reviewed-only)" if left_out else ""))
    if not result.lines:
        print("nothing to train on yet: review 'not helpful' answers on the admin page's Feedback tab")
    return 0


def merge(args: argparse.Namespace) -> int:
    from phibox.device.rag.feedback_merge import merge as merge_files
    from phibox.device.rag.feedback_merge import write_jsonl

    if args.out.resolve() in {f.resolve() for f in args.files}:
        raise ConfigError(f"--out {args.out} is one of the inputs: write the merged file somewhere else")
    result = merge_files(args.files)
    write_jsonl(args.out, result.lines)
    print(f"read {result.read} line(s) from {len(result.files)} file(s); dropped {result.duplicates} duplicate(s); "
          f"wrote {len(result.lines)} to {args.out}")
    if result.conflicts:
        print(f"{len(result.conflicts)} question(s) had different answers (kept the reviewed, newest one):")
        for question in result.conflicts[:10]:
            print(f"  {question}")
    return 0
