"""`phibox demo`: the whole pipeline on the tiny stand-in Phi-3 and the sample manuals, then the kiosk.

tiny Phi-3 → `phibox train` (QLoRA on demo/qa.jsonl) → `phibox merge` → `phibox export` (GGUF + ONNX,
signed with a demo key it makes, the manuals indexed into the bundle and the relevance decision
calibrated on demo/eval.jsonl) → `phibox bundle install` into a
demo state directory → `phibox serve` on http://127.0.0.1:8080. Each step is the `phibox` command a
user would type, run as its own process: the stages meet only through the files they write. A
second run reuses what the first built (a stamp of the inputs decides) and starts in seconds.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from phibox.device.errors import PhiboxError

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
TRAIN_CONFIG = ROOT / "train" / "configs" / "tiny-test.toml"
STEPS = 160


def inputs_digest() -> str:
    """Changes when the demo data, the training recipe or the tiny model recipe change."""
    from phibox.train.tiny_phi3 import TinySpec, recipe_key

    digest = hashlib.sha256(recipe_key(TinySpec()).encode())
    for path in sorted([*DEMO.rglob("*"), TRAIN_CONFIG]):
        if path.is_file():
            digest.update(path.relative_to(ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    digest.update(str(STEPS).encode())
    return digest.hexdigest()[:16]


def phibox_command(argv: list[str]) -> list[str]:
    """The command line that runs `phibox ARGV...` with this Python."""
    return [sys.executable, "-m", "phibox.device.cli", *argv]


def _run(argv: list[str]) -> None:
    if subprocess.run(phibox_command(argv)).returncode != 0:
        raise PhiboxError(f"the demo build failed at: phibox {' '.join(argv[:2])}")


def build(out: Path) -> dict[str, str]:
    """Build (or reuse) the demo bundle and state directory under out; returns where things are."""
    from phibox.train.tiny_phi3 import ensure_tiny_phi3

    stamp = out / "stamp.json"
    state = out / "state"
    password_file = out / "admin-password.txt"
    digest = inputs_digest()
    if stamp.is_file() and json.loads(stamp.read_text()).get("inputs") == digest and (state / "current").is_symlink():
        print(f"reusing the demo built in {out} (inputs unchanged)")
        return {"state": str(state), "password": password_file.read_text().strip()}
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
    print("[demo 4/5] phibox export (GGUF + ONNX, manuals indexed, relevance calibrated), signed with a demo key")
    (out / "keys").mkdir()
    _run(["keygen", "--out", str(out / "keys" / "demo.key")])
    bundle = out / "plant-demo-v1.phibox"
    _run(["export", str(out / "merged"), "--key", str(out / "keys" / "demo.key"), "--out", str(bundle),
          "--version", "1", "--docs", str(DEMO / "manuals"), "--eval-retrieval", str(DEMO / "eval.jsonl")])
    print("[demo 5/5] phibox bundle install into the demo state directory (its manuals index comes along)")
    _run(["bundle", "trust", str(out / "keys" / "demo.pub"), "--state", str(state)])
    _run(["bundle", "install", str(bundle), "--state", str(state)])
    password = secrets.token_urlsafe(12)
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    _run(["admin", "set-password", "--state", str(state), "--password-file", str(password_file)])
    stamp.write_text(json.dumps({"inputs": digest}))
    return {"state": str(state), "password": password}
