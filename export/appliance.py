"""``phibox appliance build``: one tar that installs phibox on an offline kiosk.

The tar holds one folder, ``phibox-appliance-<version>-<platform>/``:

    install.sh            installs from this folder alone (no network, no compiler)
    README.md             the appliance's own instructions
    appliance.json        version, platform, Python, glibc, and every file's size and sha256
    appliance.sig         Ed25519 signature (admin key) over CONTEXT + appliance.json
    constraints.txt       the pins the wheels were resolved under
    units/                phibox.service, phibox-pull.service, phibox-pull.timer
    wheels/               phibox, the device extra, the portable llama-cpp-python

install.sh checks the signature with openssl against the admin public key given on its command
line, then every file against the manifest, before it changes anything.
"""

from __future__ import annotations

import base64
import io
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from phibox.device import __version__
from phibox.device.bundle import canonical_json, key_id, sha256_file
from phibox.device.errors import ConfigError
from phibox.device.fsutil import fsync_dir, fsync_file
from phibox.export import wheelhouse
from phibox.export.portable_llama import portable_wheel, variants_in
from phibox.export.wheelhouse import Target

CONTEXT = b"phibox appliance v1\n"
"""Prefixed to the manifest before signing, so an appliance signature is never a bundle's."""
MANIFEST, SIGNATURE = "appliance.json", "appliance.sig"
UNITS = ("phibox.service", "phibox-pull.service", "phibox-pull.timer")


def source_root() -> Path:
    """The phibox checkout this code runs from (units, install script and README live there)."""
    return Path(__file__).resolve().parents[1]


def check_source(source: Path) -> None:
    needed = [source / "pyproject.toml", source / "constraints.txt", source / "systemd" / "install.sh",
              source / "systemd" / "appliance-README.md", *(source / "systemd" / u for u in UNITS)]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise ConfigError(f"not a phibox checkout (missing {', '.join(missing)}); pass --source DIR")


def this_target(python: str | None) -> Target:
    machine = platform.machine()
    if machine not in ("x86_64", "aarch64"):
        raise ConfigError(f"appliances are built for x86_64 or aarch64 Linux, not {machine}")
    return Target(machine=machine, python=python or f"{sys.version_info.major}.{sys.version_info.minor}")


def build_appliance(out_dir: Path, key: Ed25519PrivateKey, *, source: Path, python: str | None = None,
                    llama_wheel: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Write ``phibox-appliance-<version>-<platform>.tar`` into ``out_dir``; returns its path."""
    check_source(source)
    target = this_target(python)
    name = f"phibox-appliance-{__version__}-{target.platform}"
    constraints = source / "constraints.txt"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".appliance-") as tmp:
        root = Path(tmp) / name
        wheels = root / "wheels"
        wheels.mkdir(parents=True)
        llama = llama_wheel or portable_wheel(wheelhouse.pinned_version(constraints, "llama-cpp-python"), log=log)
        wheelhouse.copy_wheel(llama, wheels)
        log(f"wheels: phibox from {source}, the device extra under {constraints.name}")
        phibox_wheel = wheelhouse.build_phibox_wheel(source, wheels)
        wheelhouse.download_device_wheels(phibox_wheel, wheels, constraints, target)
        all_wheels = wheelhouse.check_wheelhouse(wheels, target)
        lay_out_files(source, root)
        manifest = {
            "schema": 1,
            "name": name,
            "version": __version__,
            "platform": target.platform,
            "machine": target.machine,
            "python": target.python,
            "requires": wheelhouse.os_requirements(all_wheels),
            "llama_cpp": {"wheel": llama.name, "cpu_variants": variants_in(llama)},
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "key_id": key_id(key.public_key()),
            "files": file_table(root),
        }
        data = canonical_json(manifest)
        (root / MANIFEST).write_bytes(data)
        (root / SIGNATURE).write_text(base64.b64encode(key.sign(CONTEXT + data)).decode() + "\n")
        return write_tar(root, out_dir / f"{name}.tar")


def lay_out_files(source: Path, root: Path) -> None:
    """Install script, README, constraints and units, from the checkout."""
    shutil.copy2(source / "systemd" / "install.sh", root / "install.sh")
    os.chmod(root / "install.sh", 0o755)
    shutil.copy2(source / "systemd" / "appliance-README.md", root / "README.md")
    shutil.copy2(source / "constraints.txt", root / "constraints.txt")
    (root / "units").mkdir()
    for unit in UNITS:
        shutil.copy2(source / "systemd" / unit, root / "units" / unit)


def file_table(root: Path) -> dict[str, dict[str, int | str]]:
    table: dict[str, dict[str, int | str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        size, digest = sha256_file(path)
        table[path.relative_to(root).as_posix()] = {"size": size, "sha256": digest}
    return table


def write_tar(root: Path, out: Path) -> Path:
    """Uncompressed (wheels are compressed already), root-owned entries, renamed into place."""
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in [root, *sorted(root.rglob("*"))]:
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root.parent)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if path.is_file():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    fsync_file(partial)
    os.replace(partial, out)
    fsync_dir(out.parent)
    return out


def read_manifest(tar_path: Path) -> dict:
    """The manifest of a built appliance tar (for reports and tests)."""
    with tarfile.open(tar_path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/" + MANIFEST))
        fh = tar.extractfile(member)
        assert fh is not None
        return json.load(io.TextIOWrapper(fh, encoding="utf-8"))
