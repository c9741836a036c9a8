"""systemd-analyze's two checks of the units, shared by the repository's units and the appliance's."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed (Debian package systemd)")


def verify_errors(folder: Path, units: tuple[str, ...]) -> str:
    """What `systemd-analyze verify` says about the units (empty when they are clean)."""
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *units], cwd=folder,
                            capture_output=True, text=True, timeout=120)
    return "" if result.returncode == 0 and not result.stderr.strip() else result.stderr + result.stdout


def exposure(unit: Path) -> float:
    """systemd-analyze security's overall exposure level of one unit file (0 safest, 10 worst)."""
    result = subprocess.run(["systemd-analyze", "--offline=true", "security", str(unit)],
                            capture_output=True, text=True, timeout=120)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    return float(match.group(1))
