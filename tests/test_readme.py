"""The README stays true: the commands and settings it names exist."""

from __future__ import annotations

import re
from pathlib import Path

from phibox.device.cli.main import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_phibox_command_in_the_readme_is_registered() -> None:
    named = set(re.findall(r"`phibox ([a-z][a-z-]*)", README))
    assert named, "the README names no phibox command"
    assert named <= set(COMMANDS), f"README names unknown commands: {sorted(named - set(COMMANDS))}"


def test_every_environment_variable_in_the_readme_is_read_by_the_code() -> None:
    code = "\n".join(p.read_text() for pkg in ("device", "export", "train") for p in (ROOT / pkg).rglob("*.py"))
    for var in set(re.findall(r"`(PHIBOX_[A-Z_]+)`", README)):
        assert var in code, f"README documents {var} but no code reads it"


def test_every_make_target_in_the_readme_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"^make ([a-z]+)", README, flags=re.M)):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"README shows `make {target}`, Makefile lacks it"
