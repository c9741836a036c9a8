"""llama.cpp's HF→GGUF converter, taken from the same llama.cpp version the device runs.

llama.cpp's ``convert_hf_to_gguf.py`` (with its ``conversion/`` package and its own ``gguf-py``)
is not importable from the package index, but llama-cpp-python's source distribution carries the
exact llama.cpp it compiles. ``fetch_kit`` extracts those files (about 2 MB) from that version's
source distribution into a cache folder at set-up time; nothing of llama.cpp is kept in this
repository. Offline build boxes point ``PHIBOX_LLAMA_CPP_SRC`` (or ``--from``) at a llama.cpp
source folder or a llama-cpp-python sdist they copied in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePosixPath

from phibox.device.errors import ConfigError
from phibox.device.paths import cache_root as default_cache_root

ENV_SRC = "PHIBOX_LLAMA_CPP_SRC"
SCRIPT = "convert_hf_to_gguf.py"
KIT_PARTS = (SCRIPT, "conversion/", "gguf-py/gguf/")
"""What the converter needs from a llama.cpp source tree (paths relative to its root)."""
PHI3_VOCAB = "models/ggml-vocab-phi-3.gguf"
"""Phi-3's own tokenizer as a vocabulary-only GGUF (llama.cpp's tokenizer tests ship it; no weights):
the real-size benchmark model counts prompt tokens as Phi-3-mini does. Extracted when present."""


@dataclass(frozen=True)
class ConverterKit:
    """A folder holding convert_hf_to_gguf.py, conversion/ and gguf-py/ of one llama.cpp."""

    root: Path
    llama_cpp_python: str
    """The llama-cpp-python version whose llama.cpp this kit came from ("local" if unknown)."""

    @property
    def script(self) -> Path:
        return self.root / SCRIPT

    @property
    def phi3_vocab(self) -> Path:
        """Phi-3's tokenizer (vocabulary-only GGUF) from the same llama.cpp."""
        path = self.root / PHI3_VOCAB
        if not path.is_file():
            raise ConfigError(f"{self.root} has no {PHI3_VOCAB}: run `phibox converter fetch` again to complete it")
        return path

    def check(self) -> ConverterKit:
        """Fail with a fix when the folder is not a complete kit."""
        for part in KIT_PARTS:
            if not (self.root / part).exists():
                raise ConfigError(
                    f"{self.root} has no {part}: point {ENV_SRC} at a llama.cpp source folder "
                    "(with convert_hf_to_gguf.py, conversion/ and gguf-py/) or run `phibox converter fetch`"
                )
        return self

    def env(self) -> dict[str, str]:
        """Environment for running the converter: its own gguf-py first, never the index's gguf."""
        env = dict(os.environ)
        env.pop("NO_LOCAL_GGUF", None)
        env["PYTHONPATH"] = os.pathsep.join([str(self.root / "gguf-py"), str(self.root)])
        return env


def runtime_version() -> str:
    """The installed llama-cpp-python version: the converter must come from the same release."""
    try:
        return version("llama-cpp-python")
    except PackageNotFoundError as exc:
        raise ConfigError(
            "llama-cpp-python is not installed, so phibox cannot tell which converter matches: "
            "pip install 'phibox[export]'"
        ) from exc


def kit_dir(cache_root: Path | None = None) -> Path:
    """Cache folder of the converter for the installed llama-cpp-python."""
    return (cache_root or default_cache_root()) / "llama-cpp-converter" / runtime_version()


def find_kit(src: Path | None = None, cache_root: Path | None = None) -> ConverterKit:
    """The converter to use: an explicit source (flag, then $PHIBOX_LLAMA_CPP_SRC), else the cache."""
    src = src or (Path(os.environ[ENV_SRC]) if os.environ.get(ENV_SRC) else None)
    if src is not None:
        if src.is_file():
            return extract_kit(src, kit_dir(cache_root))
        return ConverterKit(src, "local").check()
    cached = kit_dir(cache_root)
    if not (cached / SCRIPT).is_file():
        raise ConfigError(
            f"llama.cpp's converter is not set up ({cached} is empty): run `phibox converter fetch` "
            f"once while online, or set {ENV_SRC} to a llama.cpp source folder"
        )
    return ConverterKit(cached, runtime_version()).check()


def fetch_kit(cache_root: Path | None = None) -> ConverterKit:
    """Download the installed llama-cpp-python's sdist with pip and extract the converter."""
    wanted = runtime_version()
    dest = kit_dir(cache_root)
    if _complete(dest):
        return ConverterKit(dest, wanted).check()
    with tempfile.TemporaryDirectory(prefix="phibox-sdist-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={wanted}", "--dest", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ConfigError(
                f"could not download llama-cpp-python {wanted}'s source distribution:\n"
                f"{result.stderr.strip()[-800:]}\nOffline? Set {ENV_SRC} to a llama.cpp source folder."
            )
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if len(sdists) != 1:
            raise ConfigError(f"pip download gave {len(sdists)} source archives, expected one")
        return extract_kit(sdists[0], dest)


def extract_kit(sdist: Path, dest: Path) -> ConverterKit:
    """Extract the converter's files from a llama-cpp-python sdist into dest (atomically)."""
    name = sdist.name
    wanted = runtime_version()
    if not name.startswith(f"llama_cpp_python-{wanted}.") and not name.startswith(f"llama-cpp-python-{wanted}."):
        raise ConfigError(
            f"{sdist} is not llama-cpp-python {wanted}, the version installed here: the converter "
            "must come from the same llama.cpp the device runs"
        )
    if _complete(dest):
        return ConverterKit(dest, wanted).check()
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar.getmembers():
                rel = _kit_relative(member.name)
                if rel is None or not member.isfile():
                    continue
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:  # type: ignore[union-attr]
                    shutil.copyfileobj(src, out)
        kit = ConverterKit(staging, wanted).check()
        shutil.rmtree(dest, ignore_errors=True)  # a kit extracted by an older phibox, without the vocabulary
        os.rename(staging, dest)
        return ConverterKit(dest, kit.llama_cpp_python)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _complete(dest: Path) -> bool:
    return (dest / SCRIPT).is_file() and (dest / PHI3_VOCAB).is_file()


def _kit_relative(member: str) -> PurePosixPath | None:
    """'pkg-1.0/vendor/llama.cpp/conversion/x.py' -> 'conversion/x.py' if it belongs to the kit."""
    parts = PurePosixPath(member).parts
    if ".." in parts or len(parts) < 4 or parts[1:3] != ("vendor", "llama.cpp"):
        return None
    rel = PurePosixPath(*parts[3:])
    text = rel.as_posix()
    if any(text == p or (p.endswith("/") and text.startswith(p)) for p in (*KIT_PARTS, PHI3_VOCAB)):
        return rel
    return None
