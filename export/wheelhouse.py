"""The wheels an offline kiosk installs from: phibox, the device extra under constraints.txt, and
the portable llama-cpp-python. Binary wheels only, one platform, nothing of torch or transformers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from phibox.device.errors import ConfigError
from phibox.export.portable_llama import variants_in

FORBIDDEN = frozenset(canonicalize_name(n) for n in (
    "torch", "transformers", "peft", "bitsandbytes", "accelerate", "optimum", "optimum-onnx",
    "sentence-transformers", "triton",
))
"""The build box's stack: a kiosk never installs it (the device never imports it)."""
LLAMA = canonicalize_name("llama-cpp-python")
GLIBC = re.compile(rb"GLIBC_(\d+)\.(\d+)")
GLIBCXX = re.compile(rb"GLIBCXX_3\.4\.(\d+)")


@dataclass(frozen=True)
class Target:
    """The kiosk the wheels are for: CPU architecture and Python version."""

    machine: str
    """``x86_64`` or ``aarch64`` (the build box's own; a build never crosses architectures)."""
    python: str
    """``3.11``: wheels with a CPython ABI are for this version only."""

    @property
    def platform(self) -> str:
        return f"linux-{self.machine}"


def pinned_version(constraints: Path, name: str) -> str:
    """The version constraints.txt pins for a distribution."""
    want = canonicalize_name(name)
    for line in constraints.read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if "==" in spec and canonicalize_name(spec.split("==", 1)[0]) == want:
            return spec.split("==", 1)[1].strip()
    raise ConfigError(f"{constraints} does not pin {name}")


SOURCE_PARTS = ("pyproject.toml", "README.md", "device", "export", "train")
"""What the phibox wheel is built from (a clean copy: a checkout's build/ may hold stale modules)."""


def build_phibox_wheel(source: Path, dest: Path) -> Path:
    """phibox itself as a wheel (pure Python), built from a clean copy of the checkout."""
    with tempfile.TemporaryDirectory(prefix="phibox-src-") as tmp:
        for part in SOURCE_PARTS:
            if (source / part).is_dir():
                shutil.copytree(source / part, Path(tmp) / part, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source / part, Path(tmp) / part)
        run_pip(["wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(dest), tmp])
    wheels = sorted(dest.glob("phibox-*.whl"))
    if not wheels:
        raise ConfigError(f"pip wheel wrote no phibox wheel from {source}")
    return wheels[0]


def download_device_wheels(phibox_wheel: Path, dest: Path, constraints: Path, target: Target) -> None:
    """Every wheel ``phibox[device]`` needs, resolved under constraints; the portable llama wheel
    must already be in ``dest`` (it is found there, never built)."""
    args = ["download", "--quiet", "--dest", str(dest), "--find-links", str(dest), "--only-binary", ":all:",
            "-c", str(constraints)]
    if target.python != f"{sys.version_info.major}.{sys.version_info.minor}":
        args += ["--python-version", target.python]
    run_pip([*args, f"phibox[device] @ {phibox_wheel.resolve().as_uri()}"])


def run_pip(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise ConfigError(f"pip {args[0]} failed:\n{(result.stderr or result.stdout)[-3000:]}")


def wheel_machines(wheel: Path) -> set[str]:
    """The CPU architectures a wheel's platform tags name; empty for pure wheels."""
    _, _, _, tags = parse_wheel_filename(wheel.name)
    machines = set()
    for tag in tags:
        if tag.platform != "any":
            machines.add(re.sub(r"^(manylinux|musllinux|linux)(_\d+_\d+|\d+)?_", "", tag.platform))
    return machines


def check_wheelhouse(folder: Path, target: Target) -> list[Path]:
    """Refuse what must not reach a kiosk: another architecture's wheel, the torch stack, a
    llama-cpp-python that is not the portable build, or two versions of one package."""
    wheels = sorted(folder.glob("*.whl"))
    seen: dict[str, str] = {}
    for wheel in wheels:
        name, version, _, _ = parse_wheel_filename(wheel.name)
        foreign = wheel_machines(wheel) - {target.machine}
        if foreign:
            raise ConfigError(
                f"{wheel.name} is for {', '.join(sorted(foreign))}, the appliance is for {target.machine}: "
                "an appliance holds one platform's wheels; build the other platform's tar on a build box of it"
            )
        if name in FORBIDDEN:
            raise ConfigError(f"{wheel.name}: the device never installs {name} (build-box only)")
        if name in seen:
            raise ConfigError(f"two versions of {name} in the wheelhouse: {seen[name]} and {version}")
        seen[name] = str(version)
        if name == LLAMA and not variants_in(wheel):
            raise ConfigError(f"{wheel.name} is not the portable build (no CPU variants): it would only run "
                              "on CPUs like the build box's")
    if LLAMA not in seen or canonicalize_name("phibox") not in seen:
        raise ConfigError(f"the wheelhouse {folder} lacks phibox or llama-cpp-python")
    return wheels


def os_requirements(wheels: list[Path]) -> dict[str, str]:
    """The newest glibc and libstdc++ symbol versions any shared library in the wheels needs."""
    glibc, glibcxx = (2, 17), 0
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if ".so" not in name.rsplit("/", 1)[-1]:
                    continue
                data = zf.read(name)
                glibc = max([glibc, *((int(a), int(b)) for a, b in GLIBC.findall(data))])
                glibcxx = max([glibcxx, *(int(n) for n in GLIBCXX.findall(data))])
    return {"glibc": f"{glibc[0]}.{glibc[1]}", "glibcxx": f"3.4.{glibcxx}"}


def copy_wheel(wheel: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(wheel, dest / wheel.name))
