"""Where phibox keeps things on disk. Every location can be overridden by the environment."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_STATE_DIR = Path("/var/lib/phibox")


def cache_root() -> Path:
    """Build caches (converter kit, test models): $PHIBOX_CACHE, else ~/.cache/phibox."""
    return Path(os.environ.get("PHIBOX_CACHE", Path.home() / ".cache" / "phibox"))


def state_dir() -> Path:
    """The device's state (bundles, keys, documents): $PHIBOX_STATE_DIR, else /var/lib/phibox."""
    return Path(os.environ.get("PHIBOX_STATE_DIR", DEFAULT_STATE_DIR))
