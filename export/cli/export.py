"""`phibox export`: a merged checkpoint → one signed bundle file any phibox device accepts."""

from __future__ import annotations

import argparse
from pathlib import Path

from phibox.device.rag.embedder import POOLINGS
from phibox.export.embedder import DEFAULT_SIMILARITY_FLOOR, MAX_TOKENS, EmbedderOptions
from phibox.export.parity import Thresholds
from phibox.export.pipeline import FORMATS, ExportConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("merged", type=Path, help="folder written by `phibox merge` (or any Phi-3 checkpoint)")
    parser.add_argument("--key", type=Path, required=True, help="private key from `phibox keygen`")
    parser.add_argument("--out", type=Path, required=True, help="bundle file to write, e.g. plant7-v3.phibox")
    parser.add_argument("--version", type=int, required=True, help="bundle version; each new bundle needs a higher one")
    parser.add_argument("--name", default=None, help="bundle name (default: the --out file name up to -v<N>)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma list of gguf,onnx (default both)")
    parser.add_argument("--quant", default="Q4_K_M", help="GGUF quantization: Q4_K_M, Q4_0 or Q8_0")
    parser.add_argument("--onnx-block-size", type=int, default=32, help="ONNX int4 block size (16-256)")
    parser.add_argument("--onnx-accuracy-level", type=int, default=4, help="ONNX int4 accuracy level (0-4)")
    parser.add_argument("--embedder", type=Path, default=None,
                        help="sentence-transformers or Hugging Face folder of the embedder (default all-MiniLM-L6-v2)")
    parser.add_argument("--embedder-pooling", choices=sorted(POOLINGS), default=None,
                        help="how token vectors become one (default: the folder's Pooling module; "
                             "required for a plain Hugging Face folder)")
    parser.add_argument("--embedder-query-prefix", default=None,
                        help="put before questions, e.g. 'query: ' for e5 (default: the folder's prompts, else none)")
    parser.add_argument("--embedder-passage-prefix", default=None,
                        help="put before passages, e.g. 'passage: ' for e5 (default: the folder's prompts, else none)")
    parser.add_argument("--embedder-similarity-floor", type=float, default=None,
                        help=f"cosine below which a passage is off the question (default {DEFAULT_SIMILARITY_FLOOR})")
    parser.add_argument("--embedder-max-tokens", type=int, default=None,
                        help=f"longest text the device embeds (default: the model's limit, at most {MAX_TOKENS})")
    parser.add_argument("--docs", type=Path, default=None,
                        help="folder of manuals to index into a prebuilt documents database in the bundle")
    parser.add_argument("--eval-retrieval", type=Path, default=None, metavar="EVAL.jsonl",
                        help="questions over --docs (some with \"document\": null) to calibrate the relevance "
                             "decision on; shipped as retrieval/relevance.json")
    parser.add_argument("--parity-prompts", type=Path, default=None,
                        help='JSONL of {"prompt": ...} or {"messages": ...} lines (default: built-in prompts)')
    parser.add_argument("--min-top1", type=float, default=Thresholds.min_top1, help="gate: top-1 agreement at least")
    parser.add_argument("--max-kl", type=float, default=Thresholds.max_kl, help="gate: mean KL divergence at most")


def default_name(out: Path) -> str:
    stem = out.stem
    head, sep, tail = stem.rpartition("-v")
    return head if sep and tail.isdigit() and head else stem


def embedder_options(args: argparse.Namespace) -> EmbedderOptions:
    return EmbedderOptions(pooling=args.embedder_pooling, query_prefix=args.embedder_query_prefix,
                           passage_prefix=args.embedder_passage_prefix,
                           similarity_floor=args.embedder_similarity_floor, max_tokens=args.embedder_max_tokens)


def run(args: argparse.Namespace) -> int:
    from phibox.export.build import export_bundle

    cfg = ExportConfig(
        name=args.name or default_name(args.out), version=args.version,
        formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()), quant=args.quant,
        onnx_block_size=args.onnx_block_size, onnx_accuracy_level=args.onnx_accuracy_level,
        embedder_dir=args.embedder, embedder=embedder_options(args), parity_prompts=args.parity_prompts, docs=args.docs,
        eval_retrieval=args.eval_retrieval,
        thresholds=Thresholds(min_top1=args.min_top1, max_kl=args.max_kl),
    )
    out = export_bundle(args.merged, args.key, args.out, cfg)
    print(f"bundle: {out} ({out.stat().st_size / 1e6:.1f} MB)")
    print(f"check it: phibox bundle verify {out} --key {args.key.with_suffix('.pub')}")
    return 0
