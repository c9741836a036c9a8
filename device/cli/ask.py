"""`phibox ask "question"`: the answer streamed in the terminal, then the sources it cites.

It answers through the same engine, worker and model slot as the kiosk server."""

from __future__ import annotations

import argparse
import json
import sys

from phibox.device.cli.common import add_location_arguments, open_parts, start_engine, stop_engine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question")
    add_location_arguments(parser)
    parser.add_argument("--backend", choices=("gguf", "onnx"), default=None,
                        help="runtime (default: gguf if the bundle has it, else onnx)")
    parser.add_argument("--max-tokens", type=int, default=None, help="longest answer in tokens")
    parser.add_argument("--json", action="store_true", help="print the whole answer as JSON at the end")


def run(args: argparse.Namespace) -> int:
    from phibox.device.engine import Answer, Options

    bundle, documents, cfg = open_parts(args)
    engine = start_engine(bundle, documents, cfg, args.backend)
    answer: Answer | None = None
    try:
        for event in engine.ask(args.question, Options(max_new_tokens=args.max_tokens)).events():
            if event.kind == "token" and not args.json:
                sys.stdout.write(event.data)
                sys.stdout.flush()
            elif event.kind == "error":
                print(f"\nphibox: error: {event.data}", file=sys.stderr)
                return 1
            elif event.kind == "done":
                answer = event.data
    finally:
        stop_engine(engine)
    if args.json:
        print(json.dumps(answer.to_dict() if answer else None, ensure_ascii=False, indent=2))
        return 0
    print()
    if answer is None or not answer.covered:
        return 0
    cited = answer.cited_hits() or answer.passages
    print("\nSources" + ("" if answer.cited_hits() else " (retrieved; the answer cites none)") + ":")
    for n, hit in zip(answer.cited or range(1, len(cited) + 1), cited, strict=False):
        page = f", page {hit.page}" if hit.page is not None else ""
        print(f"  [{n}] {hit.source}{' — ' + hit.heading if hit.heading else ''}{page}")
    t = answer.timings
    print(f"\n(retrieval {t.retrieval_ms:.0f} ms, prompt {t.prompt_tokens} tokens, first token "
          f"{(t.first_token_ms or 0):.0f} ms, {t.tokens_per_s or 0:.1f} tokens/s)")
    return 0
