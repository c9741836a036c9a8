"""`phibox eval retrieval EVAL.jsonl`: hit@1, hit@5 and MRR of retrieval on known questions, and the
precision and recall of "not covered"; with --calibrate OUT.json, the relevance decision fitted on
the set (export ships that file in the bundle).

`phibox eval answers --bundle A --bundle B --data reviewed.jsonl`: bundles' answers to reviewed
questions side by side (cli/eval_answers.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from phibox.device.cli.common import add_location_arguments, load_embedder, open_parts
from phibox.device.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from phibox.device.cli import eval_answers

    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    eval_answers.add_arguments(sub.add_parser(
        "answers", help="compare bundles' answers to reviewed questions (retrieval hit, citations, token F1)",
        description="compare bundles' answers to reviewed questions (retrieval hit, citations, token F1)"))
    add_retrieval_arguments(sub.add_parser(
        "retrieval", help="hit@1, hit@5, MRR and 'not covered' precision/recall on known questions",
        description="hit@1, hit@5, MRR and 'not covered' precision/recall on known questions"))


def add_retrieval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("eval_file", type=Path,
                        help='JSONL of {"question", "document", "section"}; "document": null marks a question '
                             "the manuals do not cover")
    add_location_arguments(parser)
    parser.add_argument("--embedder", type=Path, default=None,
                        help="embedder folder (model.onnx + embedder.json) instead of the bundle's; needs --db")
    parser.add_argument("--relevance", type=Path, default=None,
                        help="relevance calibration to evaluate (default: the bundle's retrieval/relevance.json, "
                             "or defaults from the embedder's similarity floor)")
    parser.add_argument("--calibrate", type=Path, default=None, metavar="OUT.json",
                        help="fit the relevance decision on this set, write it to OUT.json and report with it")
    parser.add_argument("--min-answerable", type=float, default=None,
                        help="with --calibrate: share of answerable questions that must stay covered (default 0.95)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    if args.what == "answers":
        from phibox.device.cli import eval_answers

        return eval_answers.run(args)
    return run_retrieval(args)


def run_retrieval(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from phibox.device.documents import Documents
    from phibox.device.rag import evaluate as ev
    from phibox.device.rag.embedder import OnnxEmbedder
    from phibox.device.rag.relevance import Calibration, calibration_for

    rows = ev.load_eval(args.eval_file)
    if args.embedder is not None:
        if args.db is None:
            raise ConfigError("`phibox eval retrieval --embedder DIR` needs --db FILE: the index to evaluate")
        from phibox.device.config import EngineConfig

        cfg = EngineConfig().with_overrides(threads=args.threads)
        documents, embedder = Documents(args.db), OnnxEmbedder(args.embedder, threads=cfg.thread_count)
        calibration = Calibration.for_embedder(embedder.spec)
    else:
        bundle, documents, cfg = open_parts(args)
        embedder = load_embedder(bundle, cfg)
        calibration = calibration_for(bundle.root, embedder.spec)
    if args.relevance is not None:
        calibration = Calibration.load(args.relevance)
    try:
        measured = ev.measure(rows, documents.reader(), embedder, cfg, calibration.cosine_floor)
    finally:
        documents.close()
    loo = None
    if args.calibrate is not None:
        min_answerable = ev.MIN_ANSWERABLE if args.min_answerable is None else args.min_answerable
        base = Calibration.for_embedder(embedder.spec)
        fitted = ev.fit(measured, base, min_answerable)
        loo = ev.leave_one_out(measured, base, min_answerable)
        calibration = replace(fitted, fitted=ev.provenance(args.eval_file, measured, fitted, min_answerable, loo))
        calibration.save(args.calibrate)
    elif args.min_answerable is not None:
        raise ConfigError("--min-answerable applies to --calibrate only")
    rep = ev.report(measured, calibration)
    if args.json:
        print(json.dumps(_as_json(rep, calibration, loo, args.calibrate), indent=2, ensure_ascii=False))
        return 0
    _print_table(rep, calibration, loo, args.calibrate)
    return 0


def _as_json(rep: Any, calibration: Any, loo: Any, written: Path | None) -> dict[str, Any]:
    from dataclasses import asdict

    return {"overall": rep.overall.as_dict(), "not_covered": rep.not_covered.as_dict(),
            "by_document": {d: s.as_dict() for d, s in sorted(rep.by_document.items())},
            "calibration": asdict(calibration), "calibration_file": None if written is None else str(written),
            "leave_one_out": None if loo is None else loo.as_dict(),
            "misses": rep.misses, "questions": rep.questions}


def _pct(x: float | None) -> str:
    return "  -  " if x is None else f"{x:5.2f}"


def _print_table(rep: Any, cal: Any, loo: Any, written: Path | None) -> None:
    print(f"{'document':<28} {'questions':>9} {'hit@1':>6} {'hit@5':>6} {'MRR':>6}")
    for name, scores in [*sorted(rep.by_document.items()), ("ALL (answerable)", rep.overall)]:
        d = scores.as_dict()
        print(f"{name:<28} {d['questions']:>9} {d['hit@1']:>6.2f} {d['hit@5']:>6.2f} {d['mrr']:>6.2f}")
    nc = rep.not_covered
    print(f"\nnot covered: {nc.true_pos + nc.false_neg} unanswerable, {nc.true_pos + nc.false_pos} refused: "
          f"precision {_pct(nc.precision)}  recall {_pct(nc.recall)}  answerable kept {_pct(nc.answerable_kept)}")
    if loo is not None:
        print(f"leave-one-out: precision {_pct(loo.precision)}  recall {_pct(loo.recall)}  "
              f"answerable kept {_pct(loo.answerable_kept)}")
    print(f"decision: covered iff cosine margin (floor {cal.cosine_floor}) + {cal.coverage_weight} x coverage "
          f"+ {cal.agreement_weight} x agreement >= {cal.threshold}")
    if written is not None:
        print(f"calibration written to {written}")
    for miss in rep.misses:
        wanted = f"{miss['document']} / {miss['section']}" if miss["document"] else "not covered"
        print(f"  {miss['why']}: {miss['question']!r} -> {miss['got']} (wanted {wanted}, score {miss['score']})")
