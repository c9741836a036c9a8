"""The parity gate: does each exported model still say what the merged model says?

Every fixed prompt is run through the merged (unquantized) model and through each artifact. Per
format, over every prompt position: top-1 next-token agreement and the mean KL divergence
KL(merged ‖ exported) of the next-token distributions; plus greedy continuations side by side.
Below the thresholds the export fails, naming the format and by how much.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from phibox.device.errors import PhiboxError
from phibox.device.prompt import Passage, build_prompt, render_chat

DEFAULT_PROMPTS = (
    build_prompt("The press shows E42, what do I check?", [
        Passage("press-manual.pdf", "E42 means low hydraulic pressure. Check the oil level, then the relief valve.",
                "Faults > E42", 12)]),
    build_prompt("What torque do the conveyor motor mount bolts need?", [
        Passage("conveyor.md", "Motor mount bolts M10: tighten to 45 Nm, re-check after 50 operating hours.",
                "Maintenance > Motor")]),
    render_chat([{"role": "user", "content": "How often is the compressor condensate drained?"}]),
    render_chat([{"role": "user", "content": "Which safety steps come before opening the labeller guard?"}]),
)
"""Prompts used when no --parity-prompts file is given: RAG and plain chat turns."""


class ParityError(PhiboxError):
    """An exported model drifted from the merged model beyond the thresholds."""


@dataclass(frozen=True)
class Thresholds:
    """The gate. Q4_K_M on real Phi-3-mini typically keeps top-1 ≥ 0.9 and KL ≲ 0.05."""

    min_top1: float = 0.80
    max_kl: float = 0.25


@dataclass
class FormatResult:
    format: str
    top1_agreement: float
    mean_kl: float
    positions: int
    passed: bool = False
    continuations: list[dict[str, str]] = field(default_factory=list)


NextTokenFn = Callable[[list[int]], np.ndarray]
"""Given prompt ids, log-probabilities (positions × vocab) of the token after each prefix."""


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def compare(reference: np.ndarray, candidate: np.ndarray) -> tuple[int, float, int]:
    """(top-1 agreements, summed KL(ref ‖ cand), positions) between two log-prob matrices."""
    vocab = min(reference.shape[-1], candidate.shape[-1])
    ref, cand = log_softmax(reference[:, :vocab]), log_softmax(candidate[:, :vocab])
    agree = int((ref.argmax(-1) == cand.argmax(-1)).sum())
    kl = float((np.exp(ref) * (ref - cand)).sum(-1).sum())
    return agree, kl, ref.shape[0]


def run_gate(prompts: Sequence[str], tokenize: Callable[[str], list[int]], reference: NextTokenFn,
             candidates: dict[str, NextTokenFn], thresholds: Thresholds) -> dict[str, FormatResult]:
    """Compare each candidate format against the reference on every prompt."""
    results = {}
    ref_logits = [reference(tokenize(p)) for p in prompts]
    for name, fn in candidates.items():
        agree = kl = positions = 0.0
        for prompt, ref in zip(prompts, ref_logits, strict=True):
            a, k, n = compare(ref, fn(tokenize(prompt)))
            agree, kl, positions = agree + a, kl + k, positions + n
        top1, mean_kl = agree / positions, kl / positions
        passed = top1 >= thresholds.min_top1 and mean_kl <= thresholds.max_kl
        results[name] = FormatResult(name, round(top1, 4), round(mean_kl, 5), int(positions), passed)
    return results


def failures(results: dict[str, FormatResult], thresholds: Thresholds) -> list[str]:
    """One sentence per failing format, saying by how much it missed."""
    out = []
    for r in results.values():
        if r.top1_agreement < thresholds.min_top1:
            out.append(f"{r.format}: top-1 agreement {r.top1_agreement:.3f} is below {thresholds.min_top1} "
                       f"by {thresholds.min_top1 - r.top1_agreement:.3f}")
        if r.mean_kl > thresholds.max_kl:
            out.append(f"{r.format}: mean KL {r.mean_kl:.4f} is above {thresholds.max_kl} "
                       f"by {r.mean_kl - thresholds.max_kl:.4f}")
    return out


def table(results: dict[str, FormatResult], thresholds: Thresholds) -> str:
    """The report as a plain-text table for the terminal."""
    lines = [f"{'format':<8} {'top-1':>7} {'mean KL':>9} {'positions':>9}  gate "
             f"(top-1 ≥ {thresholds.min_top1}, KL ≤ {thresholds.max_kl})"]
    for r in results.values():
        lines.append(f"{r.format:<8} {r.top1_agreement:>7.3f} {r.mean_kl:>9.4f} {r.positions:>9}  "
                     f"{'pass' if r.passed else 'FAIL'}")
    return "\n".join(lines)


def write_report(path: Path, results: dict[str, FormatResult], thresholds: Thresholds, prompts: Sequence[str]) -> None:
    report: dict[str, Any] = {
        "thresholds": asdict(thresholds),
        "prompts": list(prompts),
        "formats": {name: asdict(r) for name, r in results.items()},
    }
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False))


def load_prompts(path: Path | None) -> list[str]:
    """Prompts from a JSONL file ({"prompt": ...} or {"messages": [...]} per line), else the defaults."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            prompts.append(obj["prompt"] if "prompt" in obj else render_chat(obj["messages"]))
        except (ValueError, KeyError, TypeError) as exc:
            expected = '{"prompt": ...} or {"messages": [...]}'
            raise ParityError(f"{path}:{number}: expected {expected} ({exc})") from exc
    if not prompts:
        raise ParityError(f"{path}: no prompts")
    return prompts
