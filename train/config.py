"""TrainConfig: every fine-tuning setting, its default and its meaning, in one place.

A TOML file passed with ``--config`` overrides only the fields it names; unknown keys are errors.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from phibox.device.errors import ConfigError

PHI3_LORA_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
METHODS = ("qlora", "lora")


@dataclass(frozen=True)
class TrainConfig:
    """How `phibox train` fine-tunes Phi-3. Defaults suit Phi-3-mini on one 24 GB GPU."""

    method: str = "qlora"
    """qlora: 4-bit NF4 base (double quantization, bf16 compute) + LoRA; lora: full-precision base + LoRA."""
    lora_rank: int = 16
    """LoRA rank r; 8-64 is usual."""
    lora_alpha: int = 32
    """LoRA scaling numerator; the update is scaled by alpha / r."""
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = PHI3_LORA_TARGETS
    """Module names that get LoRA. Phi-3's layers are fused: q_proj/k_proj/v_proj match nothing."""
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    lr_scheduler: str = "cosine"
    """A transformers scheduler name: cosine, linear or constant_with_warmup."""
    epochs: float = 3.0
    """Passes over the training split; ignored when max_steps is set."""
    max_steps: int | None = None
    """Optimizer steps to run; None derives them from epochs."""
    batch_size: int = 4
    """Examples per forward pass on each device."""
    grad_accum: int = 4
    """Forward passes per optimizer step."""
    max_seq_len: int = 2048
    """Longest example in tokens; longer examples are an error (or skipped with --skip-invalid)."""
    eval_fraction: float = 0.1
    """Share of examples held out for eval loss and sample generations (at least one)."""
    eval_every: int = 50
    """Optimizer steps between eval-loss measurements (for the loss curve)."""
    save_every: int = 50
    """Optimizer steps between checkpoints; a killed run resumes from the last one."""
    keep_checkpoints: int = 2
    gradient_checkpointing: bool = True
    samples: int = 3
    """Held-out questions answered by base and fine-tuned model side by side in the report."""
    sample_max_new_tokens: int = 64
    seed: int = 1234
    compute_dtype: str = "bfloat16"
    """Dtype of LoRA compute with a 4-bit base (bnb_4bit_compute_dtype)."""

    def __post_init__(self) -> None:
        checks = [
            (self.method in METHODS, f"method must be one of {METHODS}, not {self.method!r}"),
            (self.lora_rank > 0, "lora_rank must be positive"),
            (self.lora_alpha > 0, "lora_alpha must be positive"),
            (0.0 <= self.lora_dropout < 1.0, "lora_dropout must be in [0, 1)"),
            (len(self.target_modules) > 0, "target_modules must name at least one module"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (self.epochs > 0, "epochs must be positive"),
            (self.max_steps is None or self.max_steps > 0, "max_steps must be positive"),
            (self.batch_size > 0 and self.grad_accum > 0, "batch_size and grad_accum must be positive"),
            (self.max_seq_len >= 32, "max_seq_len must be at least 32"),
            (0.0 < self.eval_fraction < 1.0, "eval_fraction must be between 0 and 1"),
            (self.eval_every > 0 and self.save_every > 0, "eval_every and save_every must be positive"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be at least 1"),
            (self.compute_dtype in ("bfloat16", "float16", "float32"), "compute_dtype: bfloat16|float16|float32"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"train config: {message}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        """sha256 of the settings; a resumed run must have the same one."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def load_config(path: Path | None, **overrides: Any) -> TrainConfig:
    """Defaults, then the TOML file (if any), then explicit overrides (command-line flags)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read train config ({exc})") from exc
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown train settings {unknown}; known: {sorted(known)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "target_modules" in values:
        values["target_modules"] = tuple(values["target_modules"])
    try:
        return TrainConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"train config: {exc}") from exc
