"""`merge`: a run's LoRA adapter folded into the full-precision base → a checkpoint export/ reads.

Never merges into 4-bit weights: the base is loaded unquantized (its own dtype, or --dtype), the
adapter applied, ``merge_and_unload`` called, and the result saved with the full tokenizer
(``tokenizer.model`` included), Phi-3's chat template, a generation config stopping on
``<|end|>`` and ``<|endoftext|>``, and ``phibox-train.json`` saying how it was made.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from phibox.device.errors import ConfigError
from phibox.device.provenance import code_revision, utc_now
from phibox.train.model import DTYPES
from phibox.train.report import stop_ids

PROVENANCE = "phibox-train.json"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def base_dtype(base_dir: Path, requested: str | None) -> torch.dtype:
    """--dtype if given, else the base's own dtype (bf16 for Phi-3), never a quantized one."""
    if requested:
        if requested not in DTYPES:
            raise ConfigError(f"--dtype {requested!r} must be one of {sorted(DTYPES)}")
        return DTYPES[requested]
    config = json.loads((base_dir / "config.json").read_text())
    name = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return DTYPES.get(name, torch.float32)


def load_merged(base_dir: Path, adapter_dir: Path, dtype: torch.dtype) -> Any:
    """Base in full precision + adapter, merged and unloaded (a plain Phi3ForCausalLM)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, device_map={"": "cpu"})
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


def merge(run_dir: Path, out_dir: Path, *, base_dir: Path | None = None, dtype: str | None = None) -> Path:
    """Merge run_dir's adapter into its base and write a complete checkpoint to out_dir."""
    from transformers import AutoTokenizer

    run_json, adapter = run_dir / "run.json", run_dir / "adapter"
    if not run_json.is_file() or not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"{run_dir} is not a finished `phibox train` run (no run.json or adapter/)")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} exists and is not empty: choose a new --out")
    run = json.loads(run_json.read_text())
    base = base_dir or Path(run["base_dir"])
    if not (base / "config.json").is_file():
        raise ConfigError(f"base model folder {base} is gone: pass --base with its new location")
    torch_dtype = base_dtype(base, dtype)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model = load_merged(base, adapter, torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(base)
        model.generation_config.eos_token_id = stop_ids(tokenizer)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(staging, safe_serialization=True)
        copy_tokenizer(base, staging, tokenizer)
        write_provenance(staging, run, run_dir, base, torch_dtype)
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def copy_tokenizer(base: Path, out: Path, tokenizer: Any) -> None:
    """The base's tokenizer files as they are (tokenizer.model for llama.cpp), chat template inlined."""
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copy2(base / name, out / name)
    if not (out / "tokenizer.model").is_file():
        raise ConfigError(f"{base} has no tokenizer.model: export needs Phi-3's SentencePiece model")
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    template = tokenizer.chat_template
    if not template and (base / "chat_template.jinja").is_file():
        template = (base / "chat_template.jinja").read_text()
    if not template:
        raise ConfigError(f"{base} has no chat template: is this a Phi-3 instruct model?")
    config["chat_template"] = template
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def write_provenance(out: Path, run: dict[str, Any], run_dir: Path, base: Path, dtype: torch.dtype) -> None:
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    provenance = {
        "base_model": run["base_model"],
        "base_config_sha256": sha256_of(base / "config.json"),
        "data_sha256": run["data_sha256"],
        "examples": run["examples"],
        "hyperparameters": run["config"],
        "adapter_sha256": sha256_of(run_dir / "adapter" / "adapter_model.safetensors"),
        "merged_dtype": str(dtype).removeprefix("torch."),
        "eval": {k: metrics.get(k) for k in ("eval_loss_before", "eval_loss_after", "steps", "tokens_per_s")},
        "train_code_revision": run.get("code_revision"),
        "merge_code_revision": code_revision(),
        "merged_at": utc_now(),
    }
    (out / PROVENANCE).write_text(json.dumps(provenance, indent=2))
