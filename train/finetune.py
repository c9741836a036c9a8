"""`finetune`: QLoRA (or LoRA) fine-tuning of Phi-3 on a plant's Q&A, resumable, with a report.

Run folder layout:
    run.json            what this run is: base, data hash, config (a resumed run must match)
    checkpoints/        step-NNNNNN/ (adapter, optimizer, scheduler, RNG, state), newest kept
    adapter/            the final LoRA adapter
    metrics.json        eval loss before/after, steps, tokens/s
    log.jsonl           one line per optimizer step
    report.md, loss.png, samples.json   written by train/report.py
Works the same under ``accelerate launch`` on several GPUs (data parallel).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from phibox.device.errors import ConfigError
from phibox.device.provenance import code_revision, utc_now
from phibox.train import checkpoint
from phibox.train.batches import collate, eval_loss, micro_batch_indices, steps_per_epoch
from phibox.train.config import TrainConfig
from phibox.train.data import Example, LoadedData, Tokenized, load_examples, load_many, split, tokenize_all
from phibox.train.model import attach_lora, load_base, lora_counts, resume_lora


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    steps: int
    eval_loss_before: float
    eval_loss_after: float
    resumed_from: list[int]


@dataclass
class Prepared:
    """Data ready for the loop."""

    train: list[Tokenized]
    eval: list[Tokenized]
    eval_examples: list[Example]
    data: LoadedData
    skipped: list[str]


def data_paths(data: Path | Sequence[Path]) -> list[Path]:
    """One --data file or several, in order."""
    return [data] if isinstance(data, Path) else list(data)


def prepare_data(tokenizer: Any, data: Path | Sequence[Path], cfg: TrainConfig, skip_invalid: bool,
                 eval_path: Path | None) -> Prepared:
    """Load (several files as one set), validate, split and tokenize; every problem names file:line."""
    paths = data_paths(data)
    loaded = load_many(paths, skip_invalid)
    if eval_path is not None:
        train_ex, eval_ex = loaded.examples, load_examples(eval_path, skip_invalid).examples
    else:
        train_ex, eval_ex = split(loaded.examples, cfg.eval_fraction, cfg.seed)
    train_tok, _, p1 = tokenize_all(tokenizer, train_ex, cfg.max_seq_len, paths[0], skip_invalid)
    eval_tok, eval_kept, p2 = tokenize_all(tokenizer, eval_ex, cfg.max_seq_len, eval_path or paths[0], skip_invalid)
    if not train_tok or not eval_tok:
        raise ConfigError("nothing left to train or evaluate on after skipping invalid examples")
    return Prepared(train_tok, eval_tok, eval_kept, loaded, loaded.skipped + p1 + p2)


def run_identity(base_dir: Path, data: Path | Sequence[Path], cfg: TrainConfig, prep: Prepared) -> dict[str, Any]:
    """What makes two invocations the same run (so the second resumes the first). ``examples`` travels
    into the merged checkpoint's phibox-train.json: per-file and feedback counts included."""
    paths = data_paths(data)
    return {
        "base_dir": str(base_dir.resolve()),
        "base_model": base_model_id(base_dir),
        "data_path": str(paths[0].resolve()),
        "data_paths": [str(p.resolve()) for p in paths],
        "data_sha256": prep.data.sha256,
        "config": cfg.to_dict(),
        "config_sha256": cfg.digest(),
        "examples": {"train": len(prep.train), "eval": len(prep.eval), "skipped": len(prep.skipped),
                     **data_summary(prep.data)},
    }


def data_summary(data: LoadedData) -> dict[str, Any]:
    """Where the examples came from: per --data file, and how many from kiosk feedback."""
    return {"by_file": data.files, "feedback": data.feedback_counts()}


def base_model_id(base_dir: Path) -> str:
    """The base model's name: config.json's _name_or_path when it is a hub id, else the folder name."""
    config = json.loads((base_dir / "config.json").read_text())
    name = str(config.get("_name_or_path") or "")
    return name if name and "/" in name and not Path(name).is_absolute() else base_dir.resolve().name


def open_run(run_dir: Path, identity: dict[str, Any]) -> None:
    """Create run.json, or check that an existing one describes the same run."""
    run_json = run_dir / "run.json"
    if run_json.is_file():
        old = json.loads(run_json.read_text())
        for key in ("data_sha256", "config_sha256", "base_dir"):
            if old.get(key) != identity[key]:
                raise ConfigError(
                    f"{run_dir} holds a run with a different {key.replace('_sha256', '')}: "
                    "choose a new --out, or delete that folder to start over"
                )
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    run_json.write_text(json.dumps({**identity, "created_at": utc_now(), "code_revision": code_revision()}, indent=2))


def make_optimizer(model: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Paged AdamW on CUDA (QLoRA's memory trick), plain AdamW on CPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    if torch.cuda.is_available() and cfg.method == "qlora":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW32bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def finetune(base_dir: Path, data_path: Path | Sequence[Path], run_dir: Path, cfg: TrainConfig, *,
             skip_invalid: bool = False, eval_path: Path | None = None, show_progress: bool = True) -> RunResult:
    """Fine-tune Phi-3 on data_path (one file or several, in order) into run_dir; resumes from
    run_dir's last checkpoint."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer, get_scheduler

    accelerator = Accelerator()
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    prep = prepare_data(tokenizer, data_path, cfg, skip_invalid, eval_path)
    for problem in prep.skipped:
        accelerator.print(f"skipped {problem}")
    if accelerator.is_main_process:
        open_run(run_dir, run_identity(base_dir, data_path, cfg, prep))
    accelerator.wait_for_everyone()

    total_steps = cfg.max_steps or math.ceil(
        cfg.epochs * steps_per_epoch(len(prep.train), cfg.batch_size, cfg.grad_accum, accelerator.num_processes)
    )
    ckpt_root = run_dir / "checkpoints"
    last = checkpoint.latest(ckpt_root)
    model = load_base(base_dir, cfg, accelerator.local_process_index)
    model = resume_lora(model, last / "adapter") if last else attach_lora(model, cfg)
    optimizer = make_optimizer(model, cfg)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=total_steps)
    state = checkpoint.TrainState()
    if last:
        state = checkpoint.load_state(last, optimizer, scheduler)
        state.resumed_from.append(state.step)
        accelerator.print(f"resuming from checkpoint {last.name} (step {state.step} of {total_steps})")
    model, optimizer = accelerator.prepare(model, optimizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = accelerator.device

    if state.eval_loss_before is None:
        state.eval_loss_before = eval_loss(model, prep.eval, pad_id, device)
        state.history.append({"step": 0, "eval_loss": state.eval_loss_before})
        accelerator.print(f"eval loss before training: {state.eval_loss_before:.4f}")
    counts = lora_counts(accelerator.unwrap_model(model))
    accelerator.print("LoRA modules: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))

    stream = micro_batch_indices(len(prep.train), cfg.batch_size, cfg.seed,
                                 accelerator.process_index, accelerator.num_processes)
    stream = itertools.islice(stream, state.step * cfg.grad_accum, None)
    model.train()
    bar = tqdm(total=total_steps, initial=state.step, desc="train", unit="step",
               disable=not (show_progress and accelerator.is_local_main_process), dynamic_ncols=True)
    log = (run_dir / "log.jsonl").open("a") if accelerator.is_main_process else None
    try:
        while state.step < total_steps:
            started, tokens, losses = time.perf_counter(), 0, []
            for k in range(cfg.grad_accum):
                batch = collate([prep.train[i] for i in next(stream)], pad_id, device)
                # Gradients are all-reduced across GPUs only on the last micro-batch of a step.
                with accelerator.no_sync(model) if k < cfg.grad_accum - 1 else contextlib.nullcontext():
                    loss = model(**batch).loss
                    accelerator.backward(loss / cfg.grad_accum)
                losses.append(float(loss.detach()))
                tokens += int(batch["attention_mask"].sum())
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            elapsed = time.perf_counter() - started
            state.step += 1
            state.tokens_seen += tokens * accelerator.num_processes
            state.train_seconds += elapsed
            entry = {"step": state.step, "loss": sum(losses) / len(losses), "lr": scheduler.get_last_lr()[0],
                     "tokens_per_s": tokens * accelerator.num_processes / max(elapsed, 1e-9)}
            if state.step % cfg.eval_every == 0 or state.step == total_steps:
                entry["eval_loss"] = eval_loss(model, prep.eval, pad_id, device)
            state.history.append(entry)
            bar.update(1)
            bar.set_postfix(loss=f"{entry['loss']:.3f}", tok_s=f"{entry['tokens_per_s']:.0f}")
            if log:
                log.write(json.dumps(entry) + "\n")
                log.flush()
            if state.step % cfg.save_every == 0 or state.step == total_steps:
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    checkpoint.save(ckpt_root, accelerator.unwrap_model(model), optimizer, scheduler, state,
                                    cfg.keep_checkpoints)
    finally:
        bar.close()
        if log:
            log.close()

    eval_after = eval_loss(model, prep.eval, pad_id, device)
    result = RunResult(run_dir, state.step, state.eval_loss_before, eval_after, state.resumed_from)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(run_dir / "adapter")
        write_metrics(run_dir, state, result, counts, data_summary(prep.data))
        from phibox.train.report import write_report

        write_report(run_dir, unwrapped, tokenizer, prep.eval_examples, state, cfg)
    accelerator.wait_for_everyone()
    return result


def write_metrics(run_dir: Path, state: checkpoint.TrainState, result: RunResult, counts: dict[str, int],
                  data: dict[str, Any] | None = None) -> None:
    metrics = {
        "data": data or {},
        "steps": result.steps,
        "eval_loss_before": result.eval_loss_before,
        "eval_loss_after": result.eval_loss_after,
        "tokens_seen": state.tokens_seen,
        "train_seconds": round(state.train_seconds, 2),
        "tokens_per_s": round(state.tokens_seen / max(state.train_seconds, 1e-9), 1),
        "resumed_from": result.resumed_from,
        "lora_modules": dict(counts),
        "peak_gpu_memory_gb": (
            round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None
        ),
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
