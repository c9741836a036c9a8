"""`phibox pull URL --channel NAME`: fetch the newest bundle from a fleet channel and install it (a timer
runs it). When `phibox serve` runs from the same state directory the bundle goes to it (live switch,
its own health check); otherwise it is installed here."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from phibox.device.lifecycle.channel import DEADLINE_S

    parser.add_argument("url", help="the channel folder, e.g. http://updates.plant.lan/phibox/line-2/")
    parser.add_argument("--channel", default=None,
                        help="the channel this device follows (e.g. plant7-line2): needed on the first pull, then "
                             "pinned; a different one is refused unless --repin")
    parser.add_argument("--repin", action="store_true", help="move this device to the channel named by --channel")
    parser.add_argument("--state", type=Path, default=None, help="device state directory")
    parser.add_argument("--device", default=None,
                        help="hand the bundle to this server (default: the `phibox serve` running from --state)")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="API token for the server (default: STATE/push.token, from `phibox admin new-token`)")
    parser.add_argument("--through-server", action="store_true",
                        help="never install here (the timer's small memory limit can't hold a model for the health "
                             "check): refuse unless a server takes the bundle")
    parser.add_argument("--deadline", type=float, default=DEADLINE_S,
                        help=f"give up a download after this many seconds, resumable (default {DEADLINE_S:.0f})")


def run(args: argparse.Namespace) -> int:
    from phibox.device import paths
    from phibox.device.config import EngineConfig
    from phibox.device.installed import InstalledBundle
    from phibox.device.lifecycle import installer
    from phibox.device.lifecycle.channel import PullError, check_is_channel_bundle, download, read_channel
    from phibox.device.lifecycle.health import check_bundle
    from phibox.device.lifecycle.state import StateDir

    state = StateDir(args.state or paths.state_dir()).init()
    channel = read_channel(args.url, state, args.channel, args.repin)
    active = state.active_version()
    if active is not None:
        running = InstalledBundle.open(state.bundle_dir(active)).manifest.name
        if channel.name != running:
            raise PullError(f"channel {channel.channel!r} offers {channel.name} bundles; this device runs {running}: "
                            "check the channel URL, or install the other plant's bundle by hand on purpose")
        if channel.version <= active:
            print(f"up to date: channel {channel.channel} offers {channel.name} v{channel.version}, "
                  f"v{active} is active")
            return 0
    blocked = state.blocked().get(channel.version)
    if blocked is not None:
        print(f"not pulling {channel.name} v{channel.version}: on this device it {blocked['reason']} "
              f"({blocked['at']}). Publish a newer version, or `phibox bundle allow {channel.version}` to retry it")
        return 0
    server = None if args.device else state.running_server()
    target = args.device or (server["url"] if server else None)
    if target is None and args.through_server:
        raise PullError(f"no kiosk server runs from {state.root} (no live server.json): start phibox.service; "
                        "this pull only hands bundles to it (--through-server)")
    token = _token(args.token_file, state) if target else None
    path = download(args.url, channel, state, args.deadline)
    try:
        check_is_channel_bundle(path, channel)
        if target:
            from phibox.device.cli.push import push

            status, body = push(path, target, token, fingerprint=server.get("fingerprint") if server else None)
            if status != 200:
                state.record("pull_refused", version=channel.version, reason=str(body.get("error", body)))
                print(f"{target} refused v{channel.version} ({status}): {body.get('error', body)}")
                return 1
        else:
            cfg = EngineConfig()
            installer.install(path, state, health_check=lambda folder: check_bundle(folder, state.db, cfg))
    finally:
        path.unlink(missing_ok=True)
    print(f"pulled and activated {channel.name} v{channel.version} from channel {channel.channel}"
          f"{f' (through {target})' if target else ''}")
    return 0


def _token(given: Path | None, state) -> str:
    from phibox.device.errors import ConfigError

    path = given or state.root / "push.token"
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"the kiosk server runs, so the bundle goes through it, which needs its API token: "
                          f"{path} is not readable ({exc.strerror}). Make one with `phibox admin new-token "
                          f"--state {state.root} --out {state.root / 'push.token'}`") from exc
