"""Checkpoints a killed run resumes from: adapter, optimizer, scheduler, RNG and history.

A checkpoint is written to ``step-NNNNNN.partial`` and renamed into place only when complete, so
a kill -9 at any moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from phibox.device.fsutil import fsync_dir

PREFIX = "step-"


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint."""

    step: int = 0
    eval_loss_before: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    """One entry per optimizer step: step, loss, lr, tokens_per_s; eval entries carry eval_loss."""
    resumed_from: list[int] = field(default_factory=list)
    """Steps this run was resumed from (empty for a run that never stopped)."""
    tokens_seen: int = 0
    train_seconds: float = 0.0


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(PREFIX) and not p.name.endswith(".partial")]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX) :]))


def latest(root: Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def save(root: Path, model: Any, optimizer: Any, scheduler: Any, state: TrainState, keep: int) -> Path:
    """Write a complete checkpoint for state.step, then prune to the newest ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{state.step:06d}"
    partial = root / f"{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    model.save_pretrained(partial / "adapter")
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    torch.save(scheduler.state_dict(), partial / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, partial / "rng.pt")
    (partial / "state.json").write_text(json.dumps(asdict(state), indent=1))
    _fsync_tree(partial)
    if final.exists():
        shutil.rmtree(final)
    os.rename(partial, final)
    fsync_dir(root)
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(ckpt: Path, optimizer: Any, scheduler: Any) -> TrainState:
    """Restore optimizer, scheduler and RNG from a checkpoint; returns its TrainState."""
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
    rng = torch.load(ckpt / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    return TrainState(**json.loads((ckpt / "state.json").read_text()))


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(Path(dirpath) / name, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(dirpath))
