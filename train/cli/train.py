"""`phibox train`: fine-tune Phi-3 on a plant's Q&A (QLoRA by default)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from phibox.train.config import METHODS, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", type=Path, required=True, help="local folder of the base Phi-3 model")
    parser.add_argument("--data", type=Path, required=True, action="append",
                        help="JSONL of messages, question/answer or RAG examples (`phibox feedback export` lines too); "
                             "repeat to train on several files, read in order")
    parser.add_argument("--out", type=Path, required=True, help="run folder; running again resumes it")
    parser.add_argument("--config", type=Path, default=None, help="TOML file overriding TrainConfig defaults")
    parser.add_argument("--method", choices=METHODS, default=None, help="qlora (4-bit base) or lora")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides epochs)")
    parser.add_argument("--eval-data", type=Path, default=None, help="held-out JSONL instead of a random split")
    parser.add_argument("--skip-invalid", action="store_true", help="skip and report invalid lines instead of failing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs stay in log.jsonl)")


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from phibox.train.finetune import finetune

    cfg = load_config(args.config, method=args.method, max_steps=args.max_steps)
    result = finetune(args.base, args.data, args.out, cfg, skip_invalid=args.skip_invalid,
                      eval_path=args.eval_data, show_progress=not args.no_progress)
    if not PartialState().is_main_process:  # under `accelerate launch`, one summary is enough
        return 0
    data = json.loads((result.run_dir / "metrics.json").read_text()).get("data", {})
    for f in data.get("by_file", []):
        print(f"data {f['file']}: {f['examples']} examples, {f['feedback']} from feedback "
              f"({f['feedback_reviewed']} reviewed), {f['not_covered']} 'not covered'")
    print(f"eval loss {result.eval_loss_before:.4f} -> {result.eval_loss_after:.4f} after {result.steps} steps")
    print(f"adapter: {result.run_dir / 'adapter'}; report: {result.run_dir / 'report.md'}")
    print(f"next: phibox merge {result.run_dir} --out MERGED_DIR")
    return 0
