"""`phibox doctor`: is this machine able to run the device side? One line per part."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import tempfile
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from phibox.device import __version__
from phibox.device.rag import db

DEVICE_PACKAGES = (
    ("flask", "Flask"),
    ("waitress", "waitress"),
    ("cheroot", "cheroot"),
    ("sqlite_vec", "sqlite-vec"),
    ("numpy", "numpy"),
    ("tokenizers", "tokenizers"),
    ("onnxruntime", "onnxruntime"),
    ("onnxruntime_genai", "onnxruntime-genai"),
    ("llama_cpp", "llama-cpp-python"),
    ("pypdf", "pypdf"),
    ("prometheus_client", "prometheus-client"),
    ("cryptography", "cryptography"),
)
"""(import name, distribution name) of everything the device extra installs."""


def check_package(module: str, dist: str) -> str:
    """Import a module and report its distribution's version."""
    importlib.import_module(module)
    try:
        return version(dist)
    except PackageNotFoundError:
        return "installed"


def check_sqlite() -> str:
    """Open a scratch database through phibox's helper and report SQLite, vec0 and FTS5."""
    with tempfile.TemporaryDirectory() as tmp:
        conn = db.connect(Path(tmp) / "doctor.db")
        try:
            vec = conn.execute("SELECT vec_version()").fetchone()[0]
            sqlite = ".".join(map(str, db.sqlite_version(conn)))
            module = db.sqlite_module().__name__
        finally:
            conn.close()
    return f"SQLite {sqlite} via {module}, sqlite-vec {vec}, FTS5 on, WAL on"


def check_llama_cpu() -> str:
    """Which CPU code llama.cpp runs here (a portable build loads its best variant now)."""
    from phibox.device.runtime.cpu_backends import ensure_cpu_backend

    return ensure_cpu_backend().describe()


def run_checks() -> list[tuple[str, bool, str]]:
    """(part, ok, detail) for every part the device needs."""
    checks: list[tuple[str, Callable[[], str]]] = [("sqlite", check_sqlite)]
    checks += [(dist, lambda m=module, d=dist: check_package(m, d)) for module, dist in DEVICE_PACKAGES]
    checks.append(("llama.cpp CPU", check_llama_cpu))
    results = []
    for name, fn in checks:
        try:
            results.append((name, True, fn()))
        except Exception as exc:  # doctor reports every failure instead of stopping at the first
            results.append((name, False, f"{type(exc).__name__}: {exc}"))
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # doctor takes no options


def run(args: argparse.Namespace) -> int:
    del args
    print(f"phibox {__version__} on Python {platform.python_version()}, {os.cpu_count()} CPUs")
    results = run_checks()
    for name, ok, detail in results:
        print(f"  {'ok  ' if ok else 'FAIL'} {name:<18} {detail}")
    failed = [name for name, ok, _ in results if not ok]
    if failed:
        print(f"missing or broken: {', '.join(failed)}; install phibox with: pip install 'phibox[device]'")
        return 1
    return 0
