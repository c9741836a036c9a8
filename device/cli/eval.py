"""`phibox eval retrieval EVAL.jsonl`: hit@1, hit@5 and MRR of retrieval on known questions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from phibox.device.cli.common import add_location_arguments, load_embedder, open_parts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=("retrieval",), help="what to evaluate")
    parser.add_argument("eval_file", type=Path, help='JSONL of {"question", "document", "section"}')
    add_location_arguments(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from phibox.device.rag.evaluate import evaluate, load_eval

    rows = load_eval(args.eval_file)
    bundle, documents, cfg = open_parts(args)
    try:
        report = evaluate(rows, documents.reader(), load_embedder(bundle, cfg), cfg)
    finally:
        documents.close()
    if args.json:
        print(json.dumps({"overall": report.overall.as_dict(),
                          "by_document": {d: s.as_dict() for d, s in sorted(report.by_document.items())},
                          "misses": report.misses}, indent=2, ensure_ascii=False))
        return 0
    print(f"{'document':<28} {'questions':>9} {'hit@1':>6} {'hit@5':>6} {'MRR':>6}")
    for name, scores in [*sorted(report.by_document.items()), ("ALL", report.overall)]:
        d = scores.as_dict()
        print(f"{name:<28} {d['questions']:>9} {d['hit@1']:>6.2f} {d['hit@5']:>6.2f} {d['mrr']:>6.2f}")
    for miss in report.misses:
        print(f"  not first: {miss['question']!r} -> {miss['got']} (wanted {miss['document']} / {miss['section']})")
    return 0
