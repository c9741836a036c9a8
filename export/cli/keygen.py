"""`phibox keygen`: the admin's Ed25519 key pair for signing bundles."""

from __future__ import annotations

import argparse
from pathlib import Path

from phibox.device.bundle import generate_key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, required=True,
        help="private key file to write (mode 0600); the public key goes beside it as .pub",
    )


def run(args: argparse.Namespace) -> int:
    public_path, kid = generate_key(args.out)
    print(f"private key: {args.out} (keep it secret; it signs bundles)")
    print(f"public key:  {public_path} (key id {kid}); copy it into each device's keys/ folder")
    print(public_path.read_text().strip())
    return 0
