"""`phibox publish BUNDLE --key admin.key --dir FOLDER --channel NAME`: put a bundle in a fleet channel
folder; `phibox publish --renew --key admin.key --dir FOLDER`: sign the channel again before it expires."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from phibox.device.lifecycle.channel import VALID_DAYS

    parser.add_argument("bundle", type=Path, nargs="?", help="a .phibox file signed with --key")
    parser.add_argument("--key", type=Path, required=True, help="the admin's private key (signs channel.json)")
    parser.add_argument("--dir", type=Path, required=True, help="the folder a web server serves to the fleet")
    parser.add_argument("--channel", default=None,
                        help="the channel's name (e.g. plant7-line2): needed the first time, kept after")
    parser.add_argument("--valid-days", type=float, default=VALID_DAYS,
                        help=f"devices refuse the channel after this many days unless renewed "
                             f"(default {VALID_DAYS:.0f})")
    parser.add_argument("--renew", action="store_true", help="sign the published channel again (new expiry)")


def run(args: argparse.Namespace) -> int:
    from phibox.device.errors import ConfigError
    from phibox.device.lifecycle.channel import publish, renew

    if args.renew:
        if args.bundle is not None:
            raise ConfigError("--renew signs the channel already in --dir again: give no BUNDLE")
        channel = renew(args.key, args.dir, args.valid_days)
        print(f"renewed channel {channel.channel} ({channel.name} v{channel.version}) until {channel.expires_at}")
        return 0
    if args.bundle is None:
        raise ConfigError("give the BUNDLE to publish, or --renew")
    channel = publish(args.bundle, args.key, args.dir, args.channel, args.valid_days)
    print(f"published {channel.name} v{channel.version} on channel {channel.channel} in {args.dir} "
          f"({channel.file}, {channel.size / 1e6:.1f} MB), valid until {channel.expires_at}")
    print(f"devices pick it up with: phibox pull <URL of that folder> --channel {channel.channel}")
    print("renew it before then (a timer on this box): phibox publish --renew --key KEY --dir FOLDER")
    return 0
