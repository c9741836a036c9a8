"""`phibox appliance build`: the offline install file for kiosks (build box, from a checkout)."""

from __future__ import annotations

import argparse
from pathlib import Path

from phibox.device.bundle import load_private_key
from phibox.export.appliance import build_appliance, read_manifest, source_root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("build",), help="build: write phibox-appliance-<version>-<platform>.tar")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the tar into")
    parser.add_argument("--key", type=Path, required=True,
                        help="the admin's private key (phibox keygen); kiosks check the tar with its .pub")
    parser.add_argument("--source", type=Path, default=None,
                        help="the phibox checkout to package (default: the one this phibox runs from)")
    parser.add_argument("--python", default=None, metavar="X.Y",
                        help="the kiosk's Python version (default: this Python's); wheels are for it only")
    parser.add_argument("--llama-wheel", type=Path, default=None,
                        help="a portable llama-cpp-python wheel built before (default: build or reuse the cached one)")


def run(args: argparse.Namespace) -> int:
    key = load_private_key(args.key)
    tar = build_appliance(args.out, key, source=args.source or source_root(), python=args.python,
                          llama_wheel=args.llama_wheel)
    manifest = read_manifest(tar)
    size_mb = tar.stat().st_size / 1e6
    wheels = sum(1 for name in manifest["files"] if name.startswith("wheels/"))
    req = manifest["requires"]
    print(f"{tar} ({size_mb:.0f} MB, {wheels} wheels)")
    print(f"  for {manifest['platform']}, Python {manifest['python']}, glibc >= {req['glibc']}, "
          f"libstdc++ GLIBCXX >= {req['glibcxx']}")
    print(f"  llama.cpp CPU variants: {', '.join(manifest['llama_cpp']['cpu_variants'])}")
    print(f"  on the kiosk: tar xf {tar.name} && cd {manifest['name']} && sudo ./install.sh --key admin.pub")
    return 0
