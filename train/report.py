"""The run report: loss curve (loss.png), base vs fine-tuned answers (samples.json), report.md."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from phibox.device.prompt import render_chat
from phibox.train.checkpoint import TrainState
from phibox.train.config import TrainConfig
from phibox.train.data import Example


def plot_loss(history: Sequence[dict[str, float]], out: Path) -> Path:
    """Train loss per step and eval loss points, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss (held out)", linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per answer token")
    ax.set_title("phibox fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def stop_ids(tokenizer: Any) -> list[int]:
    """Phi-3's two stop tokens, read from the tokenizer."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|endoftext|>")]
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError("the tokenizer lacks <|end|> or <|endoftext|>: is this a Phi-3 tokenizer?")
    return ids


@torch.no_grad()
def generate(model: Any, tokenizer: Any, messages: Sequence[dict[str, str]], max_new_tokens: int) -> str:
    """Greedy answer to a conversation, stopping on Phi-3's stop tokens."""
    prompt = render_chat(messages, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=True).input_ids.to(model.device)
    was_training = model.training
    model.eval()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=stop_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         use_cache=True)
    if was_training:
        model.train()
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def sample_generations(model: Any, tokenizer: Any, examples: Sequence[Example], n: int,
                       max_new_tokens: int) -> list[dict[str, str]]:
    """Base (adapter off) and fine-tuned answers to held-out questions, side by side."""
    rows = []
    for ex in list(examples)[:n]:
        prompt_messages = list(ex.messages[:-1])
        with model.disable_adapter():
            base = generate(model, tokenizer, prompt_messages, max_new_tokens)
        tuned = generate(model, tokenizer, prompt_messages, max_new_tokens)
        question = ex.question.rsplit("Question: ", 1)[-1]  # RAG turns end with the question
        rows.append({"question": question, "expected": ex.answer, "base": base, "fine_tuned": tuned})
    return rows


def write_report(run_dir: Path, model: Any, tokenizer: Any, eval_examples: Sequence[Example],
                 state: TrainState, cfg: TrainConfig) -> Path:
    plot_loss(state.history, run_dir / "loss.png")
    samples = sample_generations(model, tokenizer, eval_examples, cfg.samples, cfg.sample_max_new_tokens)
    (run_dir / "samples.json").write_text(json.dumps(samples, indent=2, ensure_ascii=False))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    lines = [
        "# phibox fine-tuning report",
        "",
        f"- method: {cfg.method}, LoRA r={cfg.lora_rank} alpha={cfg.lora_alpha} on {', '.join(cfg.target_modules)}",
        f"- steps: {metrics['steps']}, tokens/s: {metrics['tokens_per_s']}",
        f"- eval loss: {metrics['eval_loss_before']:.4f} before → {metrics['eval_loss_after']:.4f} after",
        *data_lines(metrics.get("data", {})),
        "",
        "![loss curve](loss.png)",
        "",
        "## Held-out questions: base vs fine-tuned",
        "",
        "| question | expected | base | fine-tuned |",
        "|---|---|---|---|",
    ]
    for row in samples:
        cells = [_cell(row[k]) for k in ("question", "expected", "base", "fine_tuned")]
        lines.append("| " + " | ".join(cells) + " |")
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def data_lines(data: dict[str, Any]) -> list[str]:
    """Where the examples came from: one line per --data file, then the kiosk-feedback totals."""
    if not data:
        return []
    lines = ["", "## Data", "", "| file | examples | from feedback | reviewed | unreviewed | not covered | skipped |",
             "|---|---|---|---|---|---|---|"]
    for f in data.get("by_file", []):
        lines.append(f"| {_cell(f['file'])} | {f['examples']} | {f['feedback']} | {f['feedback_reviewed']} | "
                     f"{f['feedback_unreviewed']} | {f['not_covered']} | {f['skipped']} |")
    fb = data.get("feedback", {})
    if fb:
        lines += ["", f"- from kiosk feedback: {fb['feedback']} of {fb['examples']} examples "
                      f"({fb['feedback_reviewed']} reviewed by an admin, {fb['feedback_unreviewed']} not reviewed); "
                      f"{fb['not_covered']} teach the \"not covered\" refusal"]
    return lines


def _cell(text: str, limit: int = 300) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"
