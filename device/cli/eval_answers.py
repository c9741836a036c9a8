"""`phibox eval answers --bundle A --bundle B --data reviewed.jsonl`: each bundle's own engine answers
the reviewed questions, side by side (measures defined in rag/answers_eval.py).

Each bundle answers over an index made with its own embedder: its shipped index/documents.db when
it has one (`phibox export --docs`), else --docs ingested with its embedder into a scratch
database, else --db when that database's vectors come from the bundle's embedder. Answers are greedy
(temperature 0) and at most --max-tokens long, through the same engine as `phibox ask` and the kiosk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from phibox.device.errors import ConfigError

DEFAULT_MAX_TOKENS = 128
EVAL_FILE = Path("feedback") / "eval-answers.json"
"""Where --state saves the comparison (the admin page shows the latest one)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", action="append", required=True, metavar="DIR|VERSION",
                        help="unpacked bundle folder, or with --state a version installed there (4 or v4); "
                             "repeat to compare bundles side by side")
    parser.add_argument("--data", type=Path, required=True,
                        help="reviewed questions: `phibox feedback export/merge` JSONL (reviewed lines count) or "
                             "question/answer/context lines")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--docs", type=Path, default=None,
                       help="manuals to index for bundles that ship no index (each with its own embedder)")
    where.add_argument("--db", type=Path, default=None,
                       help="documents database to answer from (its vectors must come from each bundle's embedder)")
    parser.add_argument("--k", type=int, default=5, help="a retrieval hit is a marked passage in the top K (default 5)")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                        help=f"longest answer in tokens (default {DEFAULT_MAX_TOKENS})")
    parser.add_argument("--backend", choices=("gguf", "onnx"), default=None,
                        help="runtime (default: gguf if the bundle has it, else onnx)")
    parser.add_argument("--state", type=Path, default=None,
                        help=f"device state directory: resolves --bundle VERSION, saves <state>/{EVAL_FILE}")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def bundle_dir(value: str, state: Path | None) -> Path:
    """A folder, or with --state a version number (``4`` or ``v4``) installed there."""
    version = value.lower().removeprefix("v")
    if state is not None and version.isdigit() and not Path(value).is_dir():
        from phibox.device.lifecycle.state import StateDir

        folder = StateDir(state).bundle_dir(int(version))
        if not folder.is_dir():
            raise ConfigError(f"no bundle version {version} in {state}/bundles: `phibox status --state {state}` "
                              "lists the installed ones")
        return folder
    path = Path(value)
    if path.is_file():
        raise ConfigError(f"{path} is a bundle file: unpack it (tar -xf) or install it with `phibox bundle install`, "
                          "then pass the folder")
    return path


def run(args: argparse.Namespace) -> int:
    from phibox.device.provenance import utc_now
    from phibox.device.rag import answers_eval as ae

    if args.k < 1 or args.max_tokens < 1:
        raise ConfigError("--k and --max-tokens must be at least 1")
    rows, unreviewed = ae.load_reviewed(args.data)
    labels: list[str] = []
    out_rows: list[dict[str, Any]] = [
        {"question": r.question, "reference": r.answer, "not_covered": r.not_covered, "line": r.line, "results": {}}
        for r in rows]
    with tempfile.TemporaryDirectory(prefix="phibox-eval-answers-") as scratch:
        for n, value in enumerate(args.bundle):
            folder = bundle_dir(value, args.state)
            labels.append(answer_with_bundle(folder, rows, out_rows, labels, args, Path(scratch) / str(n)))
    report = {"bundles": labels, "data": str(args.data), "k": args.k, "unreviewed_left_out": unreviewed,
              "rows": out_rows, "summary": {label: ae.summary(out_rows, label) for label in labels},
              "created_at": utc_now()}
    if args.state is not None:
        from phibox.device.fsutil import atomic_write

        target = args.state / EVAL_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, json.dumps(report, indent=2, ensure_ascii=False).encode())
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_table(report)
        if args.state is not None:
            print(f"saved to {args.state / EVAL_FILE} (the admin page's Feedback tab shows it)")
    return 0


def answer_with_bundle(folder: Path, rows: list[Any], out_rows: list[dict[str, Any]], labels: list[str],
                       args: argparse.Namespace, scratch: Path) -> str:
    """Answer every row with this bundle's engine; store the scores under its label; return the label."""
    from tqdm.auto import tqdm

    from phibox.device.cli.common import start_engine, stop_engine
    from phibox.device.config import EngineConfig
    from phibox.device.engine import Options
    from phibox.device.installed import InstalledBundle
    from phibox.device.rag import answers_eval as ae

    bundle = InstalledBundle.open(folder)
    label = f"{bundle.manifest.name} v{bundle.manifest.version}"
    if label in labels:
        label = f"{label} ({len(labels) + 1})"
    cfg = EngineConfig().with_overrides(threads=args.threads)
    documents = index_for(bundle, cfg, args, scratch)
    engine = start_engine(bundle, documents, cfg, args.backend)
    options = Options(max_new_tokens=args.max_tokens, temperature=0.0)
    try:
        for row, out in zip(tqdm(rows, desc=label, unit="question", disable=args.no_progress or args.json),
                            out_rows, strict=True):
            answer = None
            for event in engine.ask(row.question, options).events():
                if event.kind == "error":
                    raise ConfigError(f"{label} failed on {args.data}:{row.line}: {event.data}")
                if event.kind == "done":
                    answer = event.data
            out["results"][label] = ae.score(row, answer, args.k)
    finally:
        stop_engine(engine)
    return label


def index_for(bundle: Any, cfg: Any, args: argparse.Namespace, scratch: Path) -> Any:
    """The documents this bundle answers from, indexed with its own embedder."""
    from phibox.device.cli.common import load_embedder
    from phibox.device.documents import Documents
    from phibox.device.lifecycle.activation import prebuilt_index
    from phibox.device.rag.embedder import EmbedderSpec

    label = f"{bundle.manifest.name} v{bundle.manifest.version}"
    scratch.mkdir(parents=True)
    shipped = prebuilt_index(bundle)
    if args.db is not None:
        documents = Documents(args.db)
        spec = EmbedderSpec.load(bundle.embedder_dir)  # the spec only: no model loaded to compare ids
        if documents.embedder_id() != (spec.id, spec.dim):
            raise ConfigError(f"{args.db} was indexed with {documents.embedder_id()}, {label} embeds with "
                              f"{spec.id}: pass --docs MANUALS so each bundle gets its own index")
        return documents
    if shipped is not None:
        shutil.copy2(shipped, scratch / "documents.db")  # a copy: the bundle folder stays untouched
        return Documents(scratch / "documents.db")
    if args.docs is None:
        raise ConfigError(f"{label} ships no index (export it with --docs): pass --docs MANUALS to index them with "
                          "its embedder")
    documents = Documents(scratch / "documents.db")
    documents.ingest([args.docs], load_embedder(bundle, cfg), cfg, progress=False)
    return documents


def _num(x: float | None) -> str:
    return "   - " if x is None else f"{x:5.2f}"


def print_table(report: dict[str, Any]) -> None:
    """One column group (hit, cite, F1) per bundle; the averages last."""
    labels = report["bundles"]
    width = 17
    print(f"{'question':<44}" + "".join(f" | {lab[:width]:^{width}}" for lab in labels))
    print(f"{'':<44}" + " | hit   cite    F1" * len(labels))
    for row in report["rows"]:
        q = row["question"] if len(row["question"]) <= 42 else row["question"][:41] + "…"
        cells = [report_cells(row["results"][lab]) for lab in labels]
        print(f"{q + (' *' if row['not_covered'] else ''):<44}" + "".join(f" | {c}" for c in cells))
    print("-" * (44 + (width + 3) * len(labels)))
    cells = [report_cells(report["summary"][lab]) for lab in labels]
    print(f"{'mean (' + str(len(report['rows'])) + ' questions)':<44}" + "".join(f" | {c}" for c in cells))
    print(f"\nhit: a marked passage in the top {report['k']} (* not covered: the engine refused); cite: Jaccard of "
          "cited and marked passages; F1: SQuAD token F1 against the reviewed answer")


def report_cells(scores: dict[str, Any]) -> str:
    return f"{_num(scores['retrieval_hit'])} {_num(scores['citation_overlap'])} {_num(scores['token_f1'])}"
