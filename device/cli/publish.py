"""`phibox publish BUNDLE --key admin.key --dir FOLDER`: put a bundle in a fleet channel folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="a .phibox file signed with --key")
    parser.add_argument("--key", type=Path, required=True, help="the admin's private key (signs channel.json)")
    parser.add_argument("--dir", type=Path, required=True, help="the folder a web server serves to the fleet")


def run(args: argparse.Namespace) -> int:
    from phibox.device.lifecycle.channel import publish

    channel = publish(args.bundle, args.key, args.dir)
    print(f"published {channel.name} v{channel.version} in {args.dir} ({channel.file}, {channel.size / 1e6:.1f} MB)")
    print("devices pick it up with: phibox pull <URL of that folder>")
    return 0
