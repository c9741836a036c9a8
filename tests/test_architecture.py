"""The house keeps its shape: one import name, rooms that import only downwards, small files.

The layer rules live in pyproject.toml ([tool.importlinter]); `make lint` runs them too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("device", "export", "train")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path, config: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "400"}  # one contract a line
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([str(LINT_IMPORTS), "--config", str(config), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold() -> None:
    result = lint_imports(ROOT, ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("file", "line", "contract"), [
    ("device/rag/db.py", "from phibox.device.web import app as _up", "device rooms"),
    ("device/engine.py", "import torch as _torch", "never imports torch"),
    ("device/runtime/slot.py", "from phibox.export import pack as _pack", "neither export nor train"),
    ("export/pack.py", "from phibox.device.engine import Engine as _engine", "export and train use"),
    ("device/web/sse.py", "from phibox.device.web import kiosk as _kiosk", "no import cycles"),
    ("device/bundle.py", "from phibox.device.rag import store as _store", "contracts use nothing"),
])
def test_a_forbidden_import_breaks_the_contracts(tmp_path: Path, file: str, line: str, contract: str) -> None:
    """The contracts are not vacuous: one added import of each kind is caught, by name."""
    for stage in STAGES:
        shutil.copytree(ROOT / stage, tmp_path / "phibox" / stage, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "phibox" / file
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path, tmp_path / "pyproject.toml", pythonpath=str(tmp_path))
    assert result.returncode != 0, result.stdout
    broken = [text for text in result.stdout.splitlines() if text.endswith("BROKEN")]
    assert any(contract in text for text in broken), result.stdout


def test_the_only_import_name_is_phibox(tmp_path: Path) -> None:
    code = "import phibox.device, phibox.export, phibox.train\nimport device"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "No module named 'device'" in result.stderr, result.stderr


def test_the_wheel_holds_one_package_named_phibox(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    names = zipfile.ZipFile(next(tmp_path.glob("phibox-*.whl"))).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("phibox-")}
    assert tops == {"phibox"}, tops
    for needed in ("phibox/device/engine.py", "phibox/device/web/templates/kiosk.html",
                   "phibox/device/web/static/kiosk.js", "phibox/train/configs/tiny-test.toml",
                   "phibox/export/cli/export.py"):
        assert needed in names, needed


def test_no_source_file_is_over_400_lines() -> None:
    long = {p.relative_to(ROOT).as_posix(): n for stage in STAGES for p in (ROOT / stage).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}, f"split these files: {long}"
