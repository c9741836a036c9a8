"""`phibox search "question"`: the passages retrieval finds, best first."""

from __future__ import annotations

import argparse
import json

from device.cmd_common import add_location_arguments, load_embedder, open_parts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question")
    add_location_arguments(parser)
    parser.add_argument("--k", type=int, default=None, help="how many passages (default 4)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from device.retrieve import search

    bundle, store, cfg = open_parts(args, readonly_db=True)
    cfg = cfg.with_overrides(k=args.k, candidates=max(cfg.candidates, args.k or 0))
    try:
        result = search(store, load_embedder(bundle, cfg), args.question, cfg)
    finally:
        store.close()
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
