"""Loading a bundle's model: which runtime, with which settings. The one place that decides."""

from __future__ import annotations

from phibox.device.config import EngineConfig
from phibox.device.errors import ConfigError
from phibox.device.installed import InstalledBundle
from phibox.device.runtime.backend import Backend

RUNTIMES = ("gguf", "onnx")


def choose_runtime(bundle: InstalledBundle, wanted: str | None) -> str:
    """The runtime to use: the one asked for if the bundle has it, else gguf, else onnx ("" or None:
    no preference)."""
    formats = bundle.manifest.formats
    wanted = wanted or None
    if wanted is not None and wanted not in RUNTIMES:
        raise ConfigError(f"unknown backend {wanted!r}: use one of {', '.join(RUNTIMES)}")
    if not formats:
        raise ConfigError(f"bundle {bundle.manifest.name} v{bundle.manifest.version} has no model")
    if wanted in formats:
        return wanted
    return "gguf" if "gguf" in formats else formats[0]


def load_backend(bundle: InstalledBundle, cfg: EngineConfig, wanted: str | None = None) -> Backend:
    """Load the bundle's model in the chosen runtime (seconds at Phi-3-mini size)."""
    name = choose_runtime(bundle, wanted)
    if name == "gguf":
        from phibox.device.runtime.llama import LlamaCppBackend

        return LlamaCppBackend(bundle.gguf_path(), cfg.window, cfg.thread_count, mmap=cfg.mmap)
    from phibox.device.runtime.onnx import OnnxGenaiBackend

    return OnnxGenaiBackend(bundle.onnx_dir(), cfg.thread_count)
