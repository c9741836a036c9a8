"""A llama-cpp-python wheel that runs on any CPU of its architecture, built once and cached.

pip's default build compiles llama.cpp with ``GGML_NATIVE`` (``-march=native``): on this build box
that means AVX-512, and the wheel dies with SIGILL on an older kiosk. The portable build turns
native off and builds llama.cpp's CPU backend as loadable variants (``GGML_BACKEND_DL`` +
``GGML_CPU_ALL_VARIANTS``: x64, sse42, sandybridge, haswell, skylakex, icelake, zen4, ... on
x86-64); at load time ggml scores each variant against the CPU and keeps the best one
(``phibox.device.runtime.cpu_backends`` loads them). The build leaves the variants in a top-level
``bin/`` of the wheel, beside duplicate ``lib/`` and ``include/`` trees; ``repack`` moves the
variants into ``llama_cpp/lib`` and drops the rest, so the wheel installs like any other.

pip's wheel cache ignores ``CMAKE_ARGS``, so the build runs with ``--no-cache-dir`` and the result
is kept in phibox's own cache, keyed by the version, the flags and the platform.
"""

from __future__ import annotations

import base64
import csv
import fcntl
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from phibox.device.errors import ConfigError
from phibox.device.paths import cache_root

CMAKE_FLAGS = ("-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON")
"""No build-machine instructions; every CPU variant of the architecture, chosen at load time."""
REPACK_VERSION = "1"
"""Bump when ``repack`` changes what it writes, so cached wheels are rebuilt."""
VARIANT_PREFIX = "libggml-cpu-"
NINJA_STEP = re.compile(rb"^\[(\d+)/(\d+)\]")


def platform_tag() -> str:
    """The wheel platform of this box, e.g. ``linux_x86_64`` or ``linux_aarch64``."""
    return sysconfig.get_platform().replace("-", "_").replace(".", "_")


def cache_key(version: str) -> str:
    """Everything the build's output depends on."""
    text = "|".join([version, *CMAKE_FLAGS, platform_tag(), REPACK_VERSION])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def portable_wheel(version: str, *, log: Callable[[str], None] = print, cache: Path | None = None) -> Path:
    """The cached portable wheel of llama-cpp-python ``version``; builds it on first use (about
    8 minutes on 2 cores; needs a C++ compiler, cmake and the sdist from the index or
    ``PIP_FIND_LINKS``)."""
    folder = (cache or cache_root()) / f"llama-cpp-portable-{cache_key(version)}"
    done = sorted(folder.glob("*.whl"))
    if done:
        return done[0]
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second build of the same wheel waits for the first, then reuses it
        done = sorted(folder.glob("*.whl"))
        return done[0] if done else _build(version, folder, log)


def _build(version: str, folder: Path, log: Callable[[str], None]) -> Path:
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".llama-build-") as tmp:
        raw = build_raw_wheel(version, Path(tmp), log)
        staged = Path(tmp) / "out"
        staged.mkdir()
        wheel = repack(raw, staged)
        if not variants_in(wheel):
            raise ConfigError(f"the portable build of llama-cpp-python {version} has no CPU variants: "
                              f"does this llama.cpp support {' '.join(CMAKE_FLAGS)} on {platform_tag()}?")
        shutil.rmtree(folder, ignore_errors=True)
        staged.rename(folder)
    return folder / wheel.name


def build_raw_wheel(version: str, work: Path, log: Callable[[str], None]) -> Path:
    """Run pip's source build with the portable flags, a progress bar over ninja's steps."""
    from tqdm import tqdm

    env = dict(os.environ)
    env["CMAKE_ARGS"] = " ".join(CMAKE_FLAGS)
    env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(os.cpu_count() or 1)
    out = work / "raw"
    cmd = [sys.executable, "-m", "pip", "wheel", "-v", "--no-cache-dir", "--no-deps",
           "--no-binary", "llama-cpp-python", f"llama-cpp-python=={version}",
           "-C", f"build-dir={work / 'build'}", "-w", str(out)]
    log(f"building llama-cpp-python {version} for any {platform_tag()} CPU "
        f"({' '.join(CMAKE_FLAGS)}); about 8 minutes on 2 cores, once")
    bar = tqdm(total=0, unit="step", desc="llama.cpp", file=sys.stderr, mininterval=2.0)
    with open(work / "build.log", "wb") as logfile, subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            logfile.write(line)
            step = NINJA_STEP.match(line.strip())
            if step:
                bar.total = int(step[2])
                bar.update(int(step[1]) - bar.n)
    bar.close()
    wheels = sorted(out.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (work / "build.log").read_text(errors="replace")[-2000:]
        raise ConfigError(f"building llama-cpp-python {version} failed (exit {proc.returncode}):\n{tail}")
    return wheels[0]


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def repack(raw: Path, out_dir: Path) -> Path:
    """Copy the wheel with the CPU variants moved into ``llama_cpp/lib`` and the top-level
    ``bin/``, ``lib/`` and ``include/`` trees dropped; RECORD rewritten to match."""
    target = out_dir / raw.name
    rows: list[list[str]] = []
    with zipfile.ZipFile(raw) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        dist_info = record_name.rsplit("/", 1)[0] + "/"
        for info in src.infolist():
            name = info.filename
            if name == record_name or info.is_dir():
                continue
            if name.startswith("bin/" + VARIANT_PREFIX) and name.endswith(".so"):
                new_name = "llama_cpp/lib/" + name.split("/", 1)[1]
            elif name.startswith(("llama_cpp/", dist_info)):
                new_name = name
            else:
                continue
            data = src.read(info)
            copy = zipfile.ZipInfo(new_name, date_time=info.date_time)
            copy.external_attr = info.external_attr
            copy.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(copy, data)
            rows.append([new_name, _record_hash(data), str(len(data))])
        rows.append([record_name, "", ""])
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        dst.writestr(record_name, text.getvalue())
    return target


def variants_in(wheel: Path) -> list[str]:
    """The CPU variant names a repacked wheel carries (``sse42``, ``haswell``, ...)."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n.rsplit("/", 1)[-1] for n in zf.namelist() if n.startswith("llama_cpp/lib/" + VARIANT_PREFIX)]
    return sorted(n[len(VARIANT_PREFIX):-len(".so")] for n in names)
