"""`phibox tls init|show --state DIR`: the device's self-signed HTTPS certificate and its SHA-256
fingerprint (which `phibox push --fingerprint` pins)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("init", "show"),
                        help="init: make the certificate (once, at install); show: print its fingerprint")
    parser.add_argument("--state", type=Path, default=None, help="device state directory")
    parser.add_argument("--name", action="append", default=[],
                        help="init: another name or address admins reach the device by (repeatable)")
    parser.add_argument("--force", action="store_true", help="init: replace an existing certificate")


def run(args: argparse.Namespace) -> int:
    from phibox.device import paths
    from phibox.device.errors import ConfigError
    from phibox.device.lifecycle import tls
    from phibox.device.lifecycle.state import StateDir

    state = StateDir(args.state or paths.state_dir()).init()
    cert, key = tls.tls_paths(state)
    if args.action == "show":
        if not cert.exists():
            raise ConfigError(f"no certificate in {cert.parent}: make one with `phibox tls init --state {state.root}`")
        print(f"SHA-256 fingerprint: {tls.pretty(tls.fingerprint(cert))}")
        return 0
    digits = tls.init(state, args.name, args.force)
    print(f"certificate {cert} and key {key} (mode 0600)")
    print(f"SHA-256 fingerprint: {tls.pretty(digits)}")
    print(f'serve HTTPS with, in serve.toml: tls_cert = "{cert}"  and  tls_key = "{key}"')
    print(f"push with: phibox push FILE --to https://HOST:PORT --fingerprint {tls.pretty(digits)} --token-file F")
    return 0
