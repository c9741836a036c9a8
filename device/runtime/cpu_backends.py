"""llama.cpp's CPU backend when it ships as variants (the appliance's portable build).

A portable llama-cpp-python (``phibox appliance build``) carries ``libggml-cpu-<variant>.so`` files
(sse42, haswell, skylakex, ...) instead of one CPU backend compiled for the build machine. ggml
loads them only when asked: ``ggml_backend_load_all_from_path`` scores every variant against this
CPU and keeps the best. llama-cpp-python does not bind that call, so it is made here through ctypes
on the very ``libggml.so.0`` that ``libllama`` links (the wheel's other copies of libggml would
start a second, empty backend registry). A native build has no variant files: nothing to do.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

from phibox.device.errors import PhiboxError

VARIANT_PREFIX = "libggml-cpu-"


class CpuBackendError(PhiboxError):
    """No CPU variant of the packaged llama.cpp can run on this CPU."""


@dataclass(frozen=True)
class CpuBackend:
    """Which llama.cpp CPU code this process runs."""

    portable: bool
    variant: str
    """The variant loaded (``sse42``, ``haswell``, ...), or ``native`` for a build-machine build."""

    def describe(self) -> str:
        if not self.portable:
            return "built for the build machine's CPU (native; not portable)"
        return f"portable build, variant {self.variant} chosen for this CPU"


def llama_lib_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def loaded_variant() -> str | None:
    """The variant library mapped into this process, if any (read from /proc/self/maps)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        name = line.rsplit("/", 1)[-1]
        if name.startswith(VARIANT_PREFIX) and name.endswith(".so"):
            return name[len(VARIANT_PREFIX):-len(".so")]
    return None


def ensure_cpu_backend() -> CpuBackend:
    """Load the best CPU variant once per process (later calls find it mapped); call before the
    first model is created."""
    lib = llama_lib_dir()
    if not any(lib.glob(VARIANT_PREFIX + "*.so")):
        return CpuBackend(portable=False, variant="native")
    variant = loaded_variant()
    if variant is None:
        ggml = ctypes.CDLL(str(lib / "libggml.so.0"))
        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load_all_from_path.restype = None
        ggml.ggml_backend_load_all_from_path(str(lib).encode())
        variant = loaded_variant()
    if variant is None:
        raise CpuBackendError(
            f"none of llama.cpp's CPU variants in {lib} loads on this CPU; this appliance build does "
            "not support the machine (see `phibox doctor`)"
        )
    return CpuBackend(portable=True, variant=variant)
