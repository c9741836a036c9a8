"""`phibox admin set-password|new-token|new-api-key|end-sessions`: credentials for the admin area,
for `phibox push`, and for /v1 clients; and a way to end every admin session at once."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

ACTIONS = {
    "set-password": "the /admin password (ends every admin session)",
    "new-token": "an API token for `phibox push` and fleet pulls (the previous one stops working)",
    "new-api-key": "a key for the OpenAI-compatible /v1 API, under --name (replacing a key of that name)",
    "end-sessions": "log every browser out of /admin",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=tuple(ACTIONS), help="; ".join(f"{k}: {v}" for k, v in ACTIONS.items()))
    parser.add_argument("--state", type=Path, default=None, help="device state directory")
    parser.add_argument("--password-file", type=Path, default=None,
                        help="read the password from this file (else from a prompt, or stdin when piped)")
    parser.add_argument("--name", default=None, help="new-api-key: who the key is for (e.g. mes-line2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="new-token, new-api-key: write the secret here (mode 0600, even if the file existed)")


def run(args: argparse.Namespace) -> int:
    from phibox.device import paths
    from phibox.device.errors import ConfigError
    from phibox.device.lifecycle.state import StateDir
    from phibox.device.web import auth as admin_auth

    state = StateDir(args.state or paths.state_dir()).init()
    if args.action == "set-password":
        admin_auth.set_password(state, _read_password(args.password_file))
        print(f"admin password set (scrypt hash in {state.config / admin_auth.ADMIN_FILE}); "
              "every admin session was ended")
        return 0
    if args.action == "end-sessions":
        admin_auth.end_sessions(state)
        print("every admin session was ended: browsers must log in again")
        return 0
    if args.action == "new-api-key":
        if not args.name:
            raise ConfigError("`phibox admin new-api-key` needs --name (who the key is for, e.g. mes-line2)")
        _hand_out(admin_auth.new_api_key(state, args.name), args.out,
                  f"/v1 API key {args.name!r}; clients send it as 'Authorization: Bearer KEY'")
        return 0
    _hand_out(admin_auth.new_token(state), args.out, "API token (older tokens stop working)")
    return 0


def _read_password(path: Path | None) -> str:
    from phibox.device.errors import ConfigError

    if path:
        return path.read_text().strip()
    if sys.stdin.isatty():
        password = getpass.getpass("new admin password: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the two passwords differ")
        return password
    return sys.stdin.readline().strip()


def _hand_out(secret: str, out: Path | None, what: str) -> None:
    from phibox.device.fsutil import atomic_write

    if out is None:
        print(secret)
        return
    atomic_write(out, (secret + "\n").encode(), mode=0o600)  # a new file: 0600 even where one existed
    if os.geteuid() == 0:  # run with sudo: the file belongs to whoever owns its folder (the phibox user)
        folder = out.resolve().parent.stat()
        os.chown(out, folder.st_uid, folder.st_gid)
    print(f"{what} written to {out} (the device keeps only its hash)")
