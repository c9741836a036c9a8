"""`phibox demo`: the whole pipeline on the tiny stand-in Phi-3 and the sample manuals, then the kiosk.

tiny Phi-3 → `phibox train` (QLoRA on demo/qa.jsonl) → `phibox merge` → `phibox export` (GGUF + ONNX,
signed with a demo key it makes, the manuals indexed into the bundle) → installed into a demo state
directory → `phibox serve` on http://127.0.0.1:8080. A second run reuses what the first built
(a stamp of the inputs decides) and starts in seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import shutil
from pathlib import Path

from device.errors import PhiboxError

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
TRAIN_CONFIG = ROOT / "train" / "configs" / "tiny-test.toml"
STEPS = 160


def inputs_digest() -> str:
    """Changes when the demo data, the training recipe or the tiny model recipe change."""
    from train.tiny_phi3 import TinySpec, recipe_key

    digest = hashlib.sha256(recipe_key(TinySpec()).encode())
    for path in sorted([*DEMO.rglob("*"), TRAIN_CONFIG]):
        if path.is_file():
            digest.update(path.relative_to(ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    digest.update(str(STEPS).encode())
    return digest.hexdigest()[:16]


def _run(argv: list[str]) -> None:
    from device.cli import main

    if main(argv) != 0:
        raise PhiboxError(f"the demo build failed at: phibox {' '.join(argv[:2])}")


def build(out: Path) -> dict[str, str]:
    """Build (or reuse) the demo bundle and state directory under out; returns where things are."""
    from device import admin_auth, installer
    from device.installed import InstalledBundle
    from device.state import StateDir
    from device.swap import replace_db
    from train.tiny_phi3 import ensure_tiny_phi3

    stamp = out / "stamp.json"
    state = StateDir(out / "state")
    password_file = out / "admin-password.txt"
    digest = inputs_digest()
    if stamp.is_file() and json.loads(stamp.read_text()).get("inputs") == digest and state.active_version():
        print(f"reusing the demo built in {out} (inputs unchanged)")
        return {"state": str(state.root), "password": password_file.read_text().strip()}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    print("[demo 1/5] tiny Phi-3 (built once, cached)")
    base = ensure_tiny_phi3()
    print(f"[demo 2/5] phibox train: QLoRA on {DEMO / 'qa.jsonl'} ({STEPS} steps)")
    _run(["train", "--base", str(base), "--data", str(DEMO / "qa.jsonl"), "--out", str(out / "run"),
          "--config", str(TRAIN_CONFIG), "--max-steps", str(STEPS)])
    print("[demo 3/5] phibox merge")
    _run(["merge", str(out / "run"), "--out", str(out / "merged")])
    print("[demo 4/5] phibox export (GGUF + ONNX, manuals indexed), signed with a demo key")
    (out / "keys").mkdir()
    _run(["keygen", "--out", str(out / "keys" / "demo.key")])
    bundle = out / "plant-demo-v1.phibox"
    _run(["export", str(out / "merged"), "--key", str(out / "keys" / "demo.key"), "--out", str(bundle),
          "--version", "1", "--docs", str(DEMO / "manuals")])
    print("[demo 5/5] install into the demo state directory")
    state.init()
    shutil.copyfile(out / "keys" / "demo.pub", state.keys / "demo.pub")
    installer.install(bundle, state)
    replace_db(state.db, InstalledBundle.open(state.current.resolve()).root / "index" / "documents.db")
    password = secrets.token_urlsafe(12)
    admin_auth.set_password(state.root, password)
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    stamp.write_text(json.dumps({"inputs": digest}))
    return {"state": str(state.root), "password": password}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path(".demo"), help="where the demo is built (default .demo)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--build-only", action="store_true", help="build the demo, do not serve it")


def run(args: argparse.Namespace) -> int:
    from device import serve_cmd

    info = build(args.out)
    if args.build_only:
        print(f"demo built in {args.out}")
        return 0
    print(f"\nphibox demo: http://127.0.0.1:{args.port}/   admin: http://127.0.0.1:{args.port}/admin  "
          f"(password: {info['password']})")
    print("The demo runs a tiny stand-in model: its words are not meaningful; the retrieved passages are.\n")
    serve_args = argparse.Namespace(config=None, state=info["state"], bundle=None, db=None, host="127.0.0.1",
                                    port=args.port, queue_size=None, backend=None, threads=None, demo=True)
    return serve_cmd.run(serve_args)
