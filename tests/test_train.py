"""Fine-tuning the tiny Phi-3 for real: QLoRA on CPU, memorization, merge equivalence, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_data import FACTS, HELD_OUT_PHRASING, write_jsonl

from phibox.device.cli.main import main
from phibox.device.errors import ConfigError
from phibox.train.config import TrainConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = ROOT / "train" / "configs" / "tiny-test.toml"
PHI3_TARGETS = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}


def test_training_lowers_eval_loss_and_answers_held_out_questions(lora_run: Path) -> None:
    metrics = json.loads((lora_run / "metrics.json").read_text())
    assert metrics["eval_loss_after"] < 0.5 * metrics["eval_loss_before"]
    samples = json.loads((lora_run / "samples.json").read_text())
    by_question = {s["question"]: s for s in samples}
    rows = [by_question[HELD_OUT_PHRASING.format(c=code)] for code in FACTS]
    assert all(row["base"] != answer for row, answer in zip(rows, FACTS.values(), strict=True))
    # A phrasing never trained on, answered word for word: 5 of 6 at least. Which fact a 4-layer model
    # misses on an unseen phrasing depends on its tokenizer and seed (measured: seeds 1, 2 all six;
    # seeds 3 and 1234 five, E63 answered with E31's fact).
    right = [row for row, answer in zip(rows, FACTS.values(), strict=True) if row["fine_tuned"] == answer]
    assert len(right) >= len(FACTS) - 1, rows


def test_every_phi3_module_type_got_lora(lora_run: Path) -> None:
    counts = json.loads((lora_run / "metrics.json").read_text())["lora_modules"]
    assert set(counts) == PHI3_TARGETS and all(n == 4 for n in counts.values())  # 4 layers each


def test_report_has_a_loss_curve_and_side_by_side_samples(lora_run: Path) -> None:
    png = (lora_run / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    report = (lora_run / "report.md").read_text()
    assert "| question | expected | base | fine-tuned |" in report and "How do I fix E31?" in report
    log = [json.loads(line) for line in (lora_run / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 201)) and all(e["tokens_per_s"] > 0 for e in log)


def test_merged_model_equals_base_plus_adapter(lora_run: Path, tiny_phi3: Path, tmp_path: Path, hf_tokenizer) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged_dir = tmp_path / "merged"
    assert main(["merge", str(lora_run), "--out", str(merged_dir), "--dtype", "float32"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_phi3, dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, lora_run / "adapter").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    prompts = ["<|user|>\nHow do I fix E12?<|end|>\n<|assistant|>\n", "<|user|>\nTorque 45 Nm?<|end|>\n",
               "Drain the compressor condensate daily."]
    worst = 0.0
    with torch.no_grad():
        for text in prompts:
            ids = hf_tokenizer(text, return_tensors="pt").input_ids
            worst = max(worst, float((merged(ids).logits - reference(ids).logits).abs().max()))
    assert worst < 1e-4


def test_merged_folder_is_complete_for_export(lora_run: Path, tmp_path: Path, hf_tokenizer) -> None:
    merged_dir = tmp_path / "merged"
    assert main(["merge", str(lora_run), "--out", str(merged_dir)]) == 0
    assert (merged_dir / "tokenizer.model").is_file() and (merged_dir / "model.safetensors").is_file()
    gen = json.loads((merged_dir / "generation_config.json").read_text())
    stops = {hf_tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|endoftext|>")}
    assert set(gen["eos_token_id"]) == stops
    assert "<|assistant|>" in json.loads((merged_dir / "tokenizer_config.json").read_text())["chat_template"]
    prov = json.loads((merged_dir / "phibox-train.json").read_text())
    run = json.loads((lora_run / "run.json").read_text())
    assert prov["data_sha256"] == run["data_sha256"] and prov["examples"]["train"] == 18
    assert prov["hyperparameters"]["method"] == "lora" and prov["eval"]["eval_loss_after"] < 4
    assert prov["merged_dtype"] == "float32" and prov["merge_code_revision"].startswith("phibox ")
    assert main(["merge", str(lora_run), "--out", str(merged_dir)]) == 1  # never overwrites


def test_qlora_trains_a_4bit_base_on_cpu(tiny_phi3: Path, train_data, tmp_path: Path) -> None:
    from phibox.train.finetune import finetune

    cfg = load_config(TINY_CONFIG, method="qlora", max_steps=40, compute_dtype="float32")
    result = finetune(tiny_phi3, train_data[0], tmp_path / "q", cfg, eval_path=train_data[1], show_progress=False)
    assert result.eval_loss_after < result.eval_loss_before - 0.5
    counts = json.loads((tmp_path / "q" / "metrics.json").read_text())["lora_modules"]
    assert set(counts) == PHI3_TARGETS
    adapter_cfg = json.loads((tmp_path / "q" / "adapter" / "adapter_config.json").read_text())
    assert set(adapter_cfg["target_modules"]) == PHI3_TARGETS


def test_4bit_base_keeps_its_gradient_after_an_eval_pass(tiny_phi3: Path) -> None:
    """bitsandbytes repacks 4-bit weights for CPU inference in eval mode and then drops the input
    gradient of every frozen layer; phibox's loader prevents that (train/model.py)."""
    from phibox.train.model import load_base

    model = load_base(tiny_phi3, TrainConfig(method="qlora", compute_dtype="float32", gradient_checkpointing=False))
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.randint(0, 900, (1, 8)))
    model.train()
    layer = model.model.layers[1].mlp.down_proj
    with torch.no_grad():
        weight = layer(torch.eye(layer.in_features)).t()  # the layer's effective dequantized weight
    x = torch.randn(2, 5, layer.in_features, requires_grad=True)
    y = layer(x)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    assert x.grad is not None
    assert torch.allclose(x.grad, grad_out @ weight, atol=1e-4)


def test_target_list_that_matches_nothing_is_an_error(tiny_phi3: Path) -> None:
    from phibox.train.model import attach_lora, load_base

    cfg = TrainConfig(method="lora", target_modules=("q_proj", "k_proj", "v_proj"), gradient_checkpointing=False)
    with pytest.raises(ConfigError, match="Phi-3's layers are fused"):
        attach_lora(load_base(tiny_phi3, cfg), cfg)


def test_bad_data_fails_before_training_with_file_and_line(tiny_phi3: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok?", "answer": "yes"}\n{"question": "x"}\n')
    rc = main(["train", "--base", str(tiny_phi3), "--data", str(bad), "--out", str(tmp_path / "r"), "--no-progress"])
    assert rc == 1
    assert f"{bad}:2: missing or empty \"answer\"" in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_a_run_folder_refuses_different_data(tiny_phi3: Path, lora_run: Path, tmp_path: Path, capsys) -> None:
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": f"q{i}?", "answer": "a"} for i in range(4)])
    rc = main(["train", "--base", str(tiny_phi3), "--data", str(other), "--out", str(lora_run),
               "--config", str(TINY_CONFIG), "--method", "lora", "--max-steps", "200", "--no-progress"])
    assert rc == 1 and "different data" in capsys.readouterr().err


def test_killed_run_resumes_from_its_checkpoint(tiny_phi3: Path, train_data, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = tmp_path / "resume.toml"
    config.write_text(TINY_CONFIG.read_text().replace("save_every = 50", "save_every = 10"))
    cmd = [sys.executable, "-m", "phibox.device.cli", "train", "--base", str(tiny_phi3), "--data", str(train_data[0]),
           "--eval-data", str(train_data[1]), "--out", str(out), "--config", str(config), "--method", "lora",
           "--max-steps", "150", "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "step-000020").is_dir():
        assert first.poll() is None, first.stdout.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared within 120 s"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    done = [p for p in (out / "checkpoints").iterdir() if not p.name.endswith(".partial")]
    killed_at = max(int(p.name.split("-")[1]) for p in done)

    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resuming from checkpoint step-{killed_at:06d} (step {killed_at} of 150)" in second.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 150 and metrics["resumed_from"] == [killed_at]
    log_steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert log_steps[-(150 - killed_at):] == list(range(killed_at + 1, 151))


def test_same_command_runs_data_parallel_under_accelerate_launch(tiny_phi3: Path, train_data, tmp_path: Path) -> None:
    """Two CPU processes (gloo) stand in for two GPUs: same command, twice the examples per step."""
    out = tmp_path / "ddp"
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "phibox.device.cli", "train",
           "--base", str(tiny_phi3), "--data", str(train_data[0]), "--eval-data", str(train_data[1]), "--out", str(out),
           "--config", str(TINY_CONFIG), "--method", "lora", "--max-steps", "10", "--no-progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.count("eval loss ") == 2  # "before" once and the summary once: rank 0 only
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 10 and metrics["eval_loss_after"] < metrics["eval_loss_before"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 10  # one writer
