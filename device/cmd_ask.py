"""`phibox ask "question"`: the answer streamed in the terminal, then the sources it cites."""

from __future__ import annotations

import argparse
import sys

from device.cmd_common import add_location_arguments, load_embedder, open_parts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question")
    add_location_arguments(parser)
    parser.add_argument("--backend", choices=("gguf", "onnx"), default=None,
                        help="runtime (default: gguf if the bundle has it, else onnx)")
    parser.add_argument("--max-tokens", type=int, default=None, help="longest answer in tokens")


def load_backend(bundle, name: str | None, cfg):
    from device.backends import LlamaCppBackend, OnnxGenaiBackend

    name = name or ("gguf" if "gguf" in bundle.manifest.formats else "onnx")
    if name == "gguf":
        return LlamaCppBackend(bundle.gguf_path(), cfg.context_window, cfg.thread_count)
    return OnnxGenaiBackend(bundle.onnx_dir(), cfg.thread_count)


def run(args: argparse.Namespace) -> int:
    from device.answer import Engine

    bundle, store, cfg = open_parts(args, readonly_db=True)
    backend = load_backend(bundle, args.backend, cfg)
    try:
        engine = Engine(store, load_embedder(bundle, cfg), backend, cfg)
        answer = None
        for event in engine.answer(args.question, max_new_tokens=args.max_tokens):
            if event.kind == "token":
                sys.stdout.write(event.data)
                sys.stdout.flush()
            elif event.kind == "done":
                answer = event.data
    finally:
        backend.close()
        store.close()
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
