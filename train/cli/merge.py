"""`phibox merge`: fold a run's adapter into the full-precision base."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a finished `phibox train` run folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the merged checkpoint")
    parser.add_argument("--base", type=Path, default=None, help="base model folder, if it moved since training")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the base's own)")


def run(args: argparse.Namespace) -> int:
    from phibox.train.merge import merge

    out = merge(args.run_dir, args.out, base_dir=args.base, dtype=args.dtype)
    print(f"merged checkpoint: {out}")
    print(f"next: phibox export {out} --key admin.key --out BUNDLE.phibox")
    return 0
