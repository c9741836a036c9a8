"""`phibox admin set-password|new-token`: credentials for the admin area and for `phibox push`."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("set-password", "new-token"),
                        help="set-password: the /admin password; new-token: an API token for `phibox push`")
    parser.add_argument("--state", type=Path, default=None, help="device state directory")
    parser.add_argument("--password-file", type=Path, default=None,
                        help="read the password from this file (else from a prompt, or stdin when piped)")
    parser.add_argument("--out", type=Path, default=None, help="new-token: write the token here (mode 0600)")


def run(args: argparse.Namespace) -> int:
    from phibox.device import paths
    from phibox.device.errors import ConfigError
    from phibox.device.lifecycle.state import StateDir
    from phibox.device.web import auth as admin_auth

    state = StateDir(args.state or paths.state_dir()).init()
    if args.action == "set-password":
        if args.password_file:
            password = args.password_file.read_text().strip()
        elif sys.stdin.isatty():
            password = getpass.getpass("new admin password: ")
            if getpass.getpass("again: ") != password:
                raise ConfigError("the two passwords differ")
        else:
            password = sys.stdin.readline().strip()
        admin_auth.set_password(state.root, password)
        print(f"admin password set (scrypt hash in {state.root / admin_auth.ADMIN_FILE})")
        return 0
    token = admin_auth.new_token(state.root)
    if args.out:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        print(f"API token written to {args.out} (the device keeps only its hash; older tokens stop working)")
    else:
        print(token)
    return 0
