"""Load Phi-3 for fine-tuning: a 4-bit NF4 base (QLoRA) or a full-precision one (LoRA), plus adapters."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from phibox.device.errors import ConfigError
from phibox.train.config import TrainConfig

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def device_map_for(local_rank: int) -> dict[str, Any]:
    """Everything on this process's GPU (one per process under DDP), or on the CPU."""
    return {"": local_rank} if torch.cuda.is_available() else {"": "cpu"}


def load_base(base_dir: Path, cfg: TrainConfig, local_rank: int = 0) -> Any:
    """The base model, quantized to NF4 for QLoRA, prepared for k-bit training."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if not (base_dir / "config.json").is_file():
        raise ConfigError(f"{base_dir} has no config.json: --base must be a downloaded Phi-3 folder")
    kwargs: dict[str, Any] = {"device_map": device_map_for(local_rank)}
    if cfg.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=DTYPES[cfg.compute_dtype],
        )
        kwargs["dtype"] = DTYPES[cfg.compute_dtype]
    else:
        kwargs["dtype"] = torch.float32 if not torch.cuda.is_available() else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    if model.config.model_type != "phi3":
        raise ConfigError(f"{base_dir} is a {model.config.model_type} model; phibox fine-tunes Phi-3 (phi3)")
    model.config.use_cache = False
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        keep_4bit_trainable_on_cpu(model)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def keep_4bit_trainable_on_cpu(model: Any) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference during an eval pass.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 converts a Linear4bit's weights to an
    inference-only layout the first time it runs in eval mode without gradients (our eval loss),
    and keeps them so: every later training step then computes the layer with a kernel that has
    no backward, silently dropping the gradient through the frozen base (tests/test_train.py
    shows it). Turning the repacking off keeps the autograd path. Returns the layers changed.
    """
    import bitsandbytes as bnb

    changed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def lora_counts(model: Any) -> Counter[str]:
    """How many modules of each name carry LoRA weights (e.g. {'qkv_proj': 32, ...})."""
    counts: Counter[str] = Counter()
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and len(getattr(module, "lora_A", {})) > 0:
            counts[name.rsplit(".", 1)[-1]] += 1
    return counts


def attach_lora(model: Any, cfg: TrainConfig) -> Any:
    """Wrap the base with fresh LoRA adapters; every target name must match at least one module."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in cfg.target_modules if t not in present]
    if missing:
        raise ConfigError(
            f"LoRA target(s) {missing} match no module of this model. Phi-3's layers are fused: "
            "use qkv_proj, o_proj, gate_up_proj, down_proj"
        )
    lora = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    counts = lora_counts(model)
    empty = [t for t in cfg.target_modules if counts[t] == 0]
    if empty:
        raise ConfigError(f"LoRA was not applied to {empty}; check target_modules")
    return model


def resume_lora(model: Any, adapter_dir: Path) -> Any:
    """Wrap the base with the adapter saved in a checkpoint, trainable."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
