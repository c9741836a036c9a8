"""The phibox command: every subcommand listed, device commands never import torch/transformers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from phibox.device.cli.main import COMMANDS, load_command, main
from phibox.device.errors import MissingExtraError

HEAVY = ("torch", "transformers", "peft", "optimum", "bitsandbytes")

PROBE = textwrap.dedent(
    """
    import json, sys
    from phibox.device.cli.main import main
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
    heavy = [m for m in %r if m in sys.modules]
    print("\\nPHIBOX-HEAVY=" + json.dumps(heavy))
    """
) % (HEAVY,)


def heavy_modules_after(*argv: str) -> list[str]:
    """Run phibox with argv in a fresh interpreter; which heavy modules got imported?"""
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("PHIBOX-HEAVY=")]
    assert line, result.stderr
    return json.loads(line[-1].split("=", 1)[1])


def test_console_script_lists_every_subcommand() -> None:
    exe = shutil.which("phibox", path=str(Path(sys.executable).parent))
    assert exe, "the phibox console script is not installed next to this Python"
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for name, cmd in COMMANDS.items():
        assert name in result.stdout and cmd.help[:30] in result.stdout


def test_top_level_help_imports_nothing_heavy() -> None:
    assert heavy_modules_after("--help") == []


@pytest.mark.parametrize("name", sorted(n for n, c in COMMANDS.items() if c.extra == "device"))
def test_device_command_help_imports_nothing_heavy(name: str) -> None:
    assert heavy_modules_after(name, "--help") == []


def test_serve_help_imports_nothing_heavy() -> None:
    if "serve" not in COMMANDS:
        pytest.skip("`phibox serve` is not registered yet: it arrives with the kiosk web app issue")
    assert heavy_modules_after("serve", "--help") == []


def test_doctor_reports_a_working_device_stack(capsys) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "sqlite-vec v" in out and "FTS5 on" in out and "FAIL" not in out


def test_missing_extra_names_the_pip_command(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "needs_missing.py").write_text("import phibox_not_installed_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(COMMANDS, "fake", COMMANDS["doctor"].__class__("needs_missing", "x", "train"))
    with pytest.raises(MissingExtraError, match=r"pip install 'phibox\[train\]'"):
        load_command("fake")


def test_errors_become_exit_code_1_with_message(tmp_path: Path, capsys) -> None:
    key = tmp_path / "k.key"
    assert main(["keygen", "--out", str(key)]) == 0
    assert main(["keygen", "--out", str(key)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_no_command_prints_help_and_fails(capsys) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_importing_every_device_module_leaves_torch_out() -> None:
    code = textwrap.dedent(
        """
        import importlib, json, pkgutil, sys
        import phibox.device
        for info in pkgutil.walk_packages(phibox.device.__path__, "phibox.device."):
            if not info.name.endswith("__main__"):  # `python -m phibox.device.cli` runs the command
                importlib.import_module(info.name)
        print(json.dumps([m for m in %r if m in sys.modules]))
        """
    ) % (HEAVY,)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
