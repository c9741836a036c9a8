"""Small training sets for the tiny Phi-3: facts keyed by fault code, phrased several ways."""

from __future__ import annotations

import json
from pathlib import Path

FACTS = {
    "E12": "Tighten the conveyor belt to 45 Nm.",
    "E27": "Replace the labeller glue nozzle.",
    "E31": "Bleed air from the press pump.",
    "E44": "Drain the compressor condensate.",
    "E58": "Reset the filler level sensor.",
    "E63": "Clean the capper torque clutch.",
}
TRAIN_PHRASINGS = (
    "What do I do for fault {c}?",
    "The machine shows {c}. What now?",
    "Fault {c} is on the screen, help?",
)
HELD_OUT_PHRASING = "How do I fix {c}?"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def memorizable(folder: Path) -> tuple[Path, Path]:
    """(train.jsonl, eval.jsonl): three phrasings per fact to learn, a fourth held out."""
    train = [{"question": t.format(c=c), "answer": a} for c, a in FACTS.items() for t in TRAIN_PHRASINGS]
    held_out = [{"question": HELD_OUT_PHRASING.format(c=c), "answer": a} for c, a in FACTS.items()]
    return write_jsonl(folder / "train.jsonl", train), write_jsonl(folder / "eval.jsonl", held_out)
