"""`phibox bundle verify|inspect|install|rollback|allow|trust`: check, show, install and roll back bundles."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from phibox.device.bundle import Manifest, load_trusted_keys
from phibox.device.cli.common import refuse_while_serving
from phibox.device.errors import ConfigError
from phibox.device.lifecycle.bundle_tar import read_manifest, verify_tar
from phibox.device.lifecycle.state import StateDir

ACTIONS = {
    "verify": "check the signature and every file of FILE (needs --key)",
    "inspect": "show what FILE holds",
    "install": "verify, unpack, activate and health-check FILE on this device (--state)",
    "rollback": "activate the previous kept bundle (--state); a fleet pull then skips the version left",
    "allow": "let a fleet pull bring back version FILE (a number) that failed or was rolled back (--state)",
    "trust": "add the public key FILE to the device's trusted keys (--state)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=tuple(ACTIONS), help="; ".join(f"{k}: {v}" for k, v in ACTIONS.items()))
    parser.add_argument("file", type=Path, nargs="?",
                        help="a .phibox bundle file (a .pub key for trust, a version number for allow)")
    parser.add_argument("--state", type=Path, default=None, help="device state directory (default $PHIBOX_STATE_DIR "
                        "or /var/lib/phibox)")
    parser.add_argument("--allow-downgrade", action="store_true", help="install: accept an older version")
    parser.add_argument("--skip-health-check", action="store_true", help="install: activate without loading the model")
    parser.add_argument("--keep", type=int, default=2, help="install: bundles to keep for rollback (default 2)")
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
    if args.action in ("install", "rollback", "allow", "trust"):
        return _device_action(args)
    if args.file is None:
        raise ConfigError(f"`phibox bundle {args.action}` needs a bundle FILE")
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


def _allow(state: StateDir, given: Path | None) -> int:
    from phibox.device.lifecycle import installer

    if given is None or not str(given).isdigit():
        raise ConfigError("`phibox bundle allow VERSION`: give the version number (see `phibox status`)")
    version = int(str(given))
    blocked = state.blocked()
    if not installer.allow(state, version):
        listed = ", ".join(f"v{v}" for v in blocked) or "none"
        raise ConfigError(f"version {version} is not blocked on this device (blocked: {listed})")
    print(f"version {version} may be pulled again (it was blocked: {blocked[version]['reason']})")
    return 0


def _device_action(args: argparse.Namespace) -> int:
    import shutil

    from phibox.device import paths
    from phibox.device.bundle import key_id, load_public_key
    from phibox.device.config import EngineConfig
    from phibox.device.lifecycle import installer
    from phibox.device.lifecycle.health import check_bundle

    state = StateDir(args.state or paths.state_dir()).init()
    cfg = EngineConfig()

    def health(folder: Path) -> None:
        check_bundle(folder, state.db, cfg)

    if args.action == "trust":
        if args.file is None:
            raise ConfigError("`phibox bundle trust` needs the admin's .pub file")
        kid = key_id(load_public_key(args.file))
        state.keys.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.file, state.keys / f"{kid}.pub")
        print(f"trusted key {kid} ({state.keys / (kid + '.pub')})")
        return 0
    if args.action == "allow":
        return _allow(state, args.file)
    if args.action == "rollback":
        refuse_while_serving(state, "roll back")
        version = installer.rollback(state, None if args.skip_health_check else health)
        print(f"rolled back: version {version} is active")
        return 0
    if args.file is None:
        raise ConfigError("`phibox bundle install` needs a bundle FILE")
    refuse_while_serving(state, "install")
    result = installer.install(args.file, state, health_check=None if args.skip_health_check else health,
                               allow_downgrade=args.allow_downgrade, keep=args.keep)
    print(f"installed and activated {result.manifest.name} v{result.version}"
          f"{'' if result.previous is None else f' (previous: v{result.previous}, kept for rollback)'}")
    _sync_index(state)
    return 0


def _sync_index(state: StateDir) -> None:
    """After an install on the command line: merge the bundle's prebuilt manuals index, as the running
    server does; a changed embedder is reported (the server re-embeds by itself, the shell asks)."""
    from phibox.device.config import EngineConfig
    from phibox.device.documents import Documents
    from phibox.device.installed import InstalledBundle
    from phibox.device.lifecycle.activation import index_action, prebuilt_index
    from phibox.device.rag.embedder import OnnxEmbedder

    bundle = InstalledBundle.open(state.current.resolve())
    documents = Documents(state.db)
    try:
        embedder = OnnxEmbedder(bundle.embedder_dir)
        action = index_action(documents, bundle, embedder.spec)
        if action == "adopt":
            merged = documents.adopt(prebuilt_index(bundle), embedder, EngineConfig())
            print(f"documents index {state.db}: the bundle's {merged['bundle_documents']} manuals merged in, "
                  "the device's own kept")
        elif action == "reembed":
            print(f"note: the bundle's embedder differs from the one that indexed {state.db}: run "
                  f"`phibox ingest MANUALS --reembed --db {state.db}`, or let `phibox serve` re-embed it "
                  "in the background")
    finally:
        documents.close()
