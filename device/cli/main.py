"""The ``phibox`` command. Subcommands are registered by module name and imported only when run.

``phibox --help`` and every device command's ``--help`` import no heavy library: the module of a
command is imported only once that command is chosen, so ``phibox serve`` never pays for torch.
A command module provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from phibox.device import __version__
from phibox.device.errors import MissingExtraError, PhiboxError


@dataclass(frozen=True)
class Command:
    """A registered subcommand: where it lives, one help line, and the extra it needs."""

    module: str
    help: str
    extra: str


_DEVICE, _EXPORT, _TRAIN = "phibox.device.cli.", "phibox.export.cli.", "phibox.train.cli."
"""Each stage keeps its commands in its own cli/ room, one module per command group."""

COMMANDS: dict[str, Command] = {
    "doctor": Command(_DEVICE + "doctor", "check this machine's runtimes, SQLite and extensions", "device"),
    "serve": Command(_DEVICE + "serve", "serve the kiosk page and API (waitress; cheroot for HTTPS)", "device"),
    "ingest": Command(_DEVICE + "ingest", "index manuals (.md .txt .html .pdf) into the documents database", "device"),
    "search": Command(_DEVICE + "search", "show the passages retrieval finds for a question", "device"),
    "ask": Command(_DEVICE + "ask", "answer a question from the manuals, streamed, with sources", "device"),
    "eval": Command(_DEVICE + "eval", "measure retrieval (hit@1, hit@5, MRR) or compare bundles' answers", "device"),
    "feedback": Command(_DEVICE + "feedback", "export the kiosk's ratings as training data; merge kiosks' exports",
                        "device"),
    "keygen": Command(_EXPORT + "keygen", "make an Ed25519 key pair for signing bundles", "export"),
    "train": Command(_TRAIN + "train", "fine-tune Phi-3 on a plant's Q&A (QLoRA; GPU box)", "train"),
    "merge": Command(_TRAIN + "merge", "merge a training run's adapter into the full-precision base", "train"),
    "export": Command(_EXPORT + "export", "turn a merged checkpoint into a signed bundle (build box)", "export"),
    "bundle": Command(_DEVICE + "bundle", "verify, inspect, install or roll back bundles", "device"),
    "admin": Command(_DEVICE + "admin", "set the admin password or make an API token", "device"),
    "tls": Command(_DEVICE + "tls", "make or show the device's HTTPS certificate and its fingerprint", "device"),
    "push": Command(_DEVICE + "push", "upload a bundle to one device and report its health check", "device"),
    "pull": Command(_DEVICE + "pull", "install the newest bundle from a fleet channel (HTTP folder)", "device"),
    "publish": Command(_DEVICE + "publish", "put a bundle in a fleet channel folder (signed channel.json)", "device"),
    "status": Command(_DEVICE + "status", "show the active bundle, kept bundles and recent events", "device"),
    "demo": Command(_EXPORT + "demo", "build the demo (tiny model, sample manuals) and serve the kiosk", "export"),
    "bench": Command(_EXPORT + "bench", "measure phibox's paths side by side with the raw libraries", "export"),
    "appliance": Command(_EXPORT + "appliance", "build the offline install file for kiosks (build box)", "export"),
    "converter": Command(
        _EXPORT + "converter", "set up or locate llama.cpp's GGUF converter (export boxes)", "export"
    ),
}
"""Every subcommand, by name. Keep the help lines short: they make up `phibox --help`."""


def build_parser(selected: str | None) -> tuple[argparse.ArgumentParser, ModuleType | None]:
    """The parser with every command listed; only the selected command's module is imported."""
    parser = argparse.ArgumentParser(
        prog="phibox",
        description="phibox: Phi-3 as an offline expert on one plant's machines.",
    )
    parser.add_argument("--version", action="version", version=f"phibox {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    module = None
    for name, cmd in COMMANDS.items():
        sub = subparsers.add_parser(name, help=cmd.help, description=cmd.help)
        if name == selected:
            module = load_command(name)
            module.add_arguments(sub)
    return parser, module


def load_command(name: str) -> ModuleType:
    """Import a command's module, turning a missing optional dependency into a clear error."""
    cmd = COMMANDS[name]
    try:
        return importlib.import_module(cmd.module)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == "phibox" or exc.name.startswith("phibox.")):
            raise
        raise MissingExtraError(
            f"`phibox {name}` needs {exc.name}, which is not installed here: "
            f"pip install 'phibox[{cmd.extra}]'"
        ) from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``phibox`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in args_list if not a.startswith("-")), None)
    try:
        parser, module = build_parser(selected if selected in COMMANDS else None)
        args = parser.parse_args(args_list)
        if module is None:
            parser.print_help()
            return 2
        return int(module.run(args) or 0)
    except PhiboxError as exc:
        print(f"phibox: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("phibox: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
