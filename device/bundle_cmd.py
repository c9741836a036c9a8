"""`phibox bundle verify|inspect FILE`: check a bundle's signature and files, or show what it holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from device.bundle import Manifest, load_trusted_keys
from device.bundle_tar import read_manifest, verify_tar
from device.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("verify", "inspect"), help="verify: signature and every file; inspect: show")
    parser.add_argument("file", type=Path, help="a .phibox bundle file")
    parser.add_argument("--key", type=Path, action="append", default=None,
                        help="trusted public key file or keys folder (repeatable); needed for verify")
    parser.add_argument("--json", action="store_true", help="inspect: print the whole manifest as JSON")


def describe(manifest: Manifest) -> str:
    lines = [
        f"{manifest.name} v{manifest.version}  (created {manifest.created_at}, "
        f"needs phibox ≥ {manifest.min_device_version})",
        f"base model: {manifest.base_model}",
        f"formats: {', '.join(manifest.formats)}; stop tokens: {' '.join(manifest.stop_tokens)}",
    ]
    if manifest.embedder:
        lines.append(f"embedder: {manifest.embedder.id} ({manifest.embedder.dim}-d)")
    for fmt, p in manifest.parity.items():
        lines.append(f"parity {fmt}: top-1 {p['top1_agreement']:.3f}, mean KL {p['mean_kl']:.4f}")
    lines.append(f"{len(manifest.files)} files, {sum(f.size for f in manifest.files) / 1e6:.1f} MB:")
    lines += [f"  {f.size / 1e6:>9.2f} MB  {f.role:<9} {f.path}" for f in manifest.files]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.action == "verify":
        if not args.key:
            raise ConfigError("`phibox bundle verify` needs --key ADMIN.pub (the key the device trusts)")
        manifest = verify_tar(args.file, load_trusted_keys(args.key))
        print(f"OK: {args.file} is {manifest.name} v{manifest.version}, signed by a trusted key, "
              f"{len(manifest.files)} files intact")
        return 0
    manifest_bytes, _ = read_manifest(args.file)
    manifest = Manifest.from_bytes(manifest_bytes)
    if args.json:
        print(json.dumps(json.loads(manifest_bytes), indent=2, ensure_ascii=False))
    else:
        print(describe(manifest))
        print("(signature not checked: use `phibox bundle verify FILE --key ADMIN.pub`)")
    return 0
