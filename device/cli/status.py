"""`phibox status`: the active bundle first, then what else is installed and what happened lately."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", type=Path, default=None, help="device state directory")


def run(args: argparse.Namespace) -> int:
    from phibox.device import paths
    from phibox.device.installed import InstalledBundle
    from phibox.device.lifecycle.state import StateDir

    state = StateDir(args.state or paths.state_dir())
    active = state.active_version()
    if active is None:
        print(f"active: none (no bundle installed in {state.root})")
    else:
        m = InstalledBundle.open(state.bundle_dir(active)).manifest
        parity = ", ".join(f"{k} top-1 {v['top1_agreement']:.2f}" for k, v in m.parity.items())
        print(f"active: {m.name} v{m.version} ({', '.join(m.formats)}; base {m.base_model}; {parity})")
    others = [v for v in state.versions() if v != active]
    print(f"kept for rollback: {', '.join(f'v{v}' for v in others) or 'none'}")
    for version, info in sorted(state.blocked().items()):
        print(f"blocked: v{version} — {info['reason']} ({info['at']}); "
              f"`phibox bundle allow {version}` to pull it again")
    if state.root.exists():
        usage = shutil.disk_usage(state.root)
        print(f"disk: {usage.free / 1e9:.1f} GB free of {usage.total / 1e9:.1f} GB")
    for event in state.recent_events(5):
        detail = {k: v for k, v in event.items() if k not in ("at", "event")}
        print(f"  {event['at']} {event['event']} {detail}")
    return 0
