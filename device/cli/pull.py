"""`phibox pull URL`: fetch the newest bundle from a fleet channel and install it (a timer runs it)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the channel folder, e.g. http://updates.plant.lan/phibox/line-2/")
    parser.add_argument("--state", type=Path, default=None, help="device state directory")
    parser.add_argument("--device", default=None,
                        help="hand the bundle to the running server (e.g. http://127.0.0.1:8080) so it swaps live")
    parser.add_argument("--token-file", type=Path, default=None, help="API token for --device")


def run(args: argparse.Namespace) -> int:
    from phibox.device import paths
    from phibox.device.cli.common import refuse_while_serving
    from phibox.device.cli.push import push
    from phibox.device.config import EngineConfig
    from phibox.device.errors import ConfigError
    from phibox.device.lifecycle import installer
    from phibox.device.lifecycle.channel import check_is_channel_bundle, download, read_channel
    from phibox.device.lifecycle.health import check_bundle
    from phibox.device.lifecycle.state import StateDir

    state = StateDir(args.state or paths.state_dir()).init()
    channel = read_channel(args.url, state)
    active = state.active_version()
    if active is not None and channel.version <= active:
        print(f"up to date: the channel offers {channel.name} v{channel.version}, v{active} is active")
        return 0
    path = download(args.url, channel, state)
    check_is_channel_bundle(path, channel)
    try:
        if args.device:
            if args.token_file is None:
                raise ConfigError("--device needs --token-file")
            status, body = push(path, args.device, args.token_file.read_text().strip())
            if status != 200:
                state.record("pull_refused", version=channel.version, reason=str(body.get("error", body)))
                print(f"the device refused v{channel.version} ({status}): {body.get('error', body)}")
                return 1
        else:
            refuse_while_serving(state, "install")
            cfg = EngineConfig()
            installer.install(path, state, health_check=lambda folder: check_bundle(folder, state.db, cfg))
    finally:
        path.unlink(missing_ok=True)
    print(f"pulled and activated {channel.name} v{channel.version}")
    return 0
