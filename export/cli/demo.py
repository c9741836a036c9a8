"""`phibox demo`: build the demo (tiny model, sample manuals) and serve the kiosk."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from phibox.export.demo import build, phibox_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path(".demo"), help="where the demo is built (default .demo)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--build-only", action="store_true", help="build the demo, do not serve it")


def run(args: argparse.Namespace) -> int:
    info = build(args.out)
    if args.build_only:
        print(f"demo built in {args.out}")
        return 0
    print(f"\nphibox demo: http://127.0.0.1:{args.port}/   admin: http://127.0.0.1:{args.port}/admin  "
          f"(password: {info['password']})")
    print("The demo runs a tiny stand-in model: its words are not meaningful; the retrieved passages are.\n")
    command = phibox_command(["serve", "--state", info["state"], "--host", "127.0.0.1", "--port", str(args.port),
                              "--demo"])
    sys.stdout.flush()
    os.execv(command[0], command)  # the kiosk server takes this process's place (Ctrl-C stops it)
    return 0
