"""`phibox search "question"`: the passages retrieval finds, best first."""

from __future__ import annotations

import argparse
import json

from phibox.device.cli.common import add_location_arguments, open_parts, start_engine, stop_engine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question")
    add_location_arguments(parser)
    parser.add_argument("--k", type=int, default=None, help="how many passages (default 4)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    bundle, documents, cfg = open_parts(args)
    engine = start_engine(bundle, documents, cfg, None, with_model=False)
    try:
        result = engine.search(args.question, args.k)
    finally:
        stop_engine(engine)
    if args.json:
        print(json.dumps({"retrieval_ms": round(result.retrieval_ms, 2), "hits": [h.to_dict() for h in result.hits]},
                         ensure_ascii=False, indent=2))
        return 0
    if not result.hits:
        print("no passage in the manuals matches that question")
    for hit in result.hits:
        page = f" p.{hit.page}" if hit.page is not None else ""
        sim = f" cos={hit.similarity:.2f}" if hit.similarity is not None else ""
        kw = " keyword" if hit.bm25 is not None else ""
        snippet = " ".join(hit.text.split())[:160]
        print(f"{hit.source}\t{hit.heading or '-'}{page}\tscore={hit.score:.4f}{sim}{kw}\t{snippet}")
    return 0
