"""Which phibox code made an artifact: recorded in train runs, merged checkpoints and bundles."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

from phibox.device import __version__


def code_revision() -> str:
    """'phibox 0.1.0 (git abc1234, dirty)' from a checkout, else 'phibox 0.1.0'."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return f"phibox {__version__}"
    if rev.returncode != 0:
        return f"phibox {__version__}"
    flag = ", dirty" if dirty.stdout.strip() else ""
    return f"phibox {__version__} (git {rev.stdout.strip()}{flag})"


def utc_now() -> str:
    """Current UTC time as 2026-11-21T10:00:00Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
