"""Where phibox keeps things on disk. Every location can be overridden by the environment."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_STATE_DIR = Path("/var/lib/phibox")
DEFAULT_CONFIG_DIR = Path("/etc/phibox")


def cache_root() -> Path:
    """Build caches (converter kit, test models): $PHIBOX_CACHE, else ~/.cache/phibox."""
    return Path(os.environ.get("PHIBOX_CACHE", Path.home() / ".cache" / "phibox"))


def state_dir() -> Path:
    """The device's state (bundles, keys, documents): $PHIBOX_STATE_DIR, else /var/lib/phibox."""
    return Path(os.environ.get("PHIBOX_STATE_DIR", DEFAULT_STATE_DIR))


def config_dir(state_root: Path) -> Path:
    """Where the credentials live (trusted keys, admin.json, the session secret): $PHIBOX_CONFIG_DIR;
    else /etc/phibox for the appliance's state directory (root-owned, read-only for the service);
    else the state directory itself (a development or test box)."""
    if "PHIBOX_CONFIG_DIR" in os.environ:
        return Path(os.environ["PHIBOX_CONFIG_DIR"])
    return DEFAULT_CONFIG_DIR if state_root == DEFAULT_STATE_DIR else state_root
