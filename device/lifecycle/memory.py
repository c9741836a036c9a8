"""Will a new model fit beside the running one? The activation's memory plan.

A live bundle switch can load the new model beside the old one (no gap for technicians) only when
the memory the process may still use covers the new model's footprint; otherwise it drains the old
model first (the answer under way finishes, new questions get the passages) and loads the new one
in its place. The footprint is estimated from the files: llama.cpp holds the mapped GGUF and a
repacked copy of its weights (measured at Phi-3-mini shape: ~2× the file), plus the KV cache for
the configured context (read from the GGUF header: 2 × layers × width × kv-heads/heads × 2 bytes a
token, 384 KB for Phi-3-mini), plus the embedder.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from phibox.device.config import EngineConfig
from phibox.device.errors import ConfigError
from phibox.device.installed import InstalledBundle

MARGIN = 1.15
"""Side by side only with 15 % to spare over the estimate."""
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


@dataclass(frozen=True)
class MemoryPlan:
    way: str
    """side_by_side or drain"""
    estimate_mb: int
    """The new model's footprint (weights, KV cache, embedder)."""
    available_mb: int
    """What the process may still use: the budget, or the smaller of MemAvailable and the cgroup's room."""


def _read_string(fh: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", fh.read(8))
    return fh.read(n).decode("utf-8", errors="replace")


def _read_value(fh: BinaryIO, kind: int) -> object:
    if kind in _SCALAR:
        fmt = "<" + _SCALAR[kind]
        return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]
    if kind == 8:
        return _read_string(fh)
    if kind == 9:
        item, n = struct.unpack("<IQ", fh.read(12))
        if item in _SCALAR:  # skip numeric arrays without decoding them
            fh.seek(n * struct.calcsize("<" + _SCALAR[item]), os.SEEK_CUR)
            return None
        for _ in range(n):
            _read_value(fh, item)
        return None
    raise ConfigError(f"unknown GGUF value type {kind}")


def gguf_metadata(path: Path) -> dict[str, object]:
    """The GGUF header's scalar and string metadata (arrays are skipped)."""
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ConfigError(f"{path} is not a GGUF file")
        _version, _tensors, n_kv = struct.unpack("<IQQ", fh.read(20))
        meta: dict[str, object] = {}
        for _ in range(n_kv):
            key = _read_string(fh)
            (kind,) = struct.unpack("<I", fh.read(4))
            meta[key] = _read_value(fh, kind)
        return meta


def kv_bytes_per_token(gguf: Path) -> int:
    """f16 K and V for one token across all layers."""
    meta = gguf_metadata(gguf)
    arch = str(meta.get("general.architecture", ""))
    layers, width = int(meta[f"{arch}.block_count"]), int(meta[f"{arch}.embedding_length"])
    heads = int(meta[f"{arch}.attention.head_count"])
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads) or heads)
    return 2 * layers * width * kv_heads // heads * 2


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def footprint_bytes(bundle: InstalledBundle, cfg: EngineConfig, runtime: str) -> int:
    """The memory the bundle's model and embedder take once loaded (estimate)."""
    embedder = _folder_bytes(bundle.embedder_dir) * 2
    if runtime == "gguf":
        gguf = bundle.gguf_path()
        weights = gguf.stat().st_size * (2 if cfg.mmap else 1)  # mapped: the file's pages beside the repacked copy
        return int(weights * 1.1) + kv_bytes_per_token(gguf) * cfg.window + embedder
    return _folder_bytes(bundle.onnx_dir()) * 2 + embedder


def _meminfo_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def cgroup_room(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory this process's cgroup still allows (limit minus usage), or None without a limit.
    cgroup v2 (memory.max, memory.current) and v1 (memory.limit_in_bytes, memory.usage_in_bytes)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    v1 = next((line.split(":", 2)[2] for line in lines if line.split(":", 2)[1:2] == ["memory"]), None)
    if v1 is not None:
        folder, limit_file, usage_file = root / "memory" / v1.lstrip("/"), "memory.limit_in_bytes", \
            "memory.usage_in_bytes"
    else:
        v2 = next((line.split("::", 1)[1] for line in lines if line.startswith("0::")), None)
        if v2 is None:
            return None
        folder, limit_file, usage_file = root / v2.lstrip("/"), "memory.max", "memory.current"
    try:
        limit = (folder / limit_file).read_text().strip()
        usage = int((folder / usage_file).read_text().strip())
    except (OSError, ValueError):
        return None
    if limit == "max" or int(limit) >= 1 << 60:  # v1 writes "no limit" as a huge number
        return None
    return int(limit) - usage


def available_bytes(budget_mb: int, rss_bytes: int) -> int:
    """What this process may still take: the configured budget minus its RSS, else the smaller of
    MemAvailable and the cgroup's room."""
    if budget_mb > 0:
        return max(0, (budget_mb << 20) - rss_bytes)
    room = cgroup_room()
    free = _meminfo_available()
    return free if room is None else min(free, room)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> None:
    """Start counting this process's peak RSS (VmHWM) anew (Linux: /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not permitted here: the peak then counts from the process start


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def plan(bundle: InstalledBundle, cfg: EngineConfig, runtime: str, budget_mb: int) -> MemoryPlan:
    """Side by side if the new model fits beside the running process with the margin, else drain."""
    need = footprint_bytes(bundle, cfg, runtime)
    room = available_bytes(budget_mb, rss_bytes())
    way = "side_by_side" if need * MARGIN <= room else "drain"
    return MemoryPlan(way, need >> 20, room >> 20)
