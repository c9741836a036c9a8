"""`phibox converter fetch|path`: set up or locate llama.cpp's GGUF converter (export boxes)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from phibox.export.llama_kit import ENV_SRC, fetch_kit, find_kit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=("fetch", "path"), help="fetch: set the converter up; path: print where it is"
    )
    parser.add_argument(
        "--from", dest="src", type=Path, default=None,
        help=f"a llama.cpp source folder or llama-cpp-python sdist to use instead of downloading (also ${ENV_SRC})",
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "fetch" and args.src is None and not os.environ.get(ENV_SRC):
        kit = fetch_kit()
    else:
        kit = find_kit(args.src)
    print(f"{kit.script} (llama-cpp-python {kit.llama_cpp_python})")
    return 0
