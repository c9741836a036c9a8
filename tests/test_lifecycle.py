"""Installing bundles on a device: signature first, hostile bundles refused, crash-safe activation,
health check with automatic rollback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from bundle_kit import member, resign, tamper

from phibox.device import bundle
from phibox.device.cli.main import main
from phibox.device.config import EngineConfig
from phibox.device.lifecycle import installer
from phibox.device.lifecycle.health import check_bundle
from phibox.device.lifecycle.state import StateDir


@pytest.fixture(scope="module")
def files(lifecycle_files) -> dict[str, Path]:
    return lifecycle_files


@pytest.fixture()
def state(v3_state) -> StateDir:
    return v3_state


def assert_serving(state: StateDir, version: int) -> None:
    """current points at version, and that bundle is complete and intact."""
    assert state.active_version() == version
    bundle.verify(state.current.resolve(), bundle.load_trusted_keys([state.keys]))


def hostile(files, tmp_path: Path, admin_keys, case: str) -> Path:
    v4, out = files["v4"], tmp_path / f"{case}.phibox"
    if case == "flipped byte":
        return tamper(v4, out, flip="eval/parity.json")
    if case == "wrong key":
        other = tmp_path / "other.key"
        bundle.generate_key(other)
        with tarfile.open(v4) as tar:
            tar.extractall(tmp_path / "x", filter="data")
        return resign(tmp_path / "x", out, other, 4, scratch=tmp_path)
    if case == "unsigned":
        return tamper(v4, out, no_signature=True)
    if case == "dot-dot entry":
        return tamper(v4, out, add=member("../escape.txt"))
    if case == "absolute path":
        return tamper(v4, out, add=member("/etc/cron.d/evil"))
    if case == "symlink":
        return tamper(v4, out, add=member("model/link", kind=tarfile.SYMTYPE, link="/etc/shadow"))
    if case == "device file":
        return tamper(v4, out, add=member("model/dev", kind=tarfile.CHRTYPE))
    if case == "setuid bit":
        return tamper(v4, out, add=member("model/run.sh", mode=0o4755))
    if case == "extra file":
        return tamper(v4, out, add=member("model/extra.bin"))
    if case == "missing file":
        return tamper(v4, out, drop="eval/parity.json")
    if case == "truncated":
        out.write_bytes(v4.read_bytes()[: v4.stat().st_size * 2 // 3])
        return out
    return {"lower version": files["v2"], "replay": files["v3"], "needs newer phibox": files["v9-future"]}[case]


REFUSALS = {
    "flipped byte": "sha256 differs", "wrong key": "does not verify with any trusted key", "unsigned": "manifest.sig",
    "dot-dot entry": "not a plain relative path", "absolute path": "not a plain relative path", "symlink": "is a link",
    "device file": "device, fifo", "setuid bit": "setuid", "extra file": "not listed in the manifest",
    "missing file": "listed in the manifest but missing", "truncated": "truncated",
    "lower version": "older than the active 3", "replay": "already active", "needs newer phibox": "needs phibox 99.0.0",
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_hostile_or_wrong_bundles_are_refused_and_change_nothing(case: str, state, files, admin_keys,
                                                                tmp_path: Path, capsys) -> None:
    path = hostile(files, tmp_path, admin_keys, case)
    rc = main(["bundle", "install", str(path), "--state", str(state.root), "--skip-health-check"])
    err = capsys.readouterr().err
    assert rc == 1 and REFUSALS[case] in err, err
    assert_serving(state, 3)
    assert state.versions() == [3] and not list(state.bundles.glob("*.partial*"))
    assert state.recent_events(1)[0]["event"] == "install_refused"


def test_unloadable_model_rolls_back_automatically(state, files) -> None:
    def health(folder: Path) -> None:
        check_bundle(folder, state.db, EngineConfig())

    with pytest.raises(installer.InstallError, match=r"failed its health check.*rolled back to version 3"):
        installer.install(files["v4-broken"], state, health_check=health)
    assert_serving(state, 3)
    assert state.versions() == [3]
    events = [e["event"] for e in state.recent_events(3)]
    assert events[0] == "health_check_failed" and "activated" in events


def test_install_then_rollback_then_status(state, files, capsys) -> None:
    assert main(["bundle", "install", str(files["v4"]), "--state", str(state.root)]) == 0
    assert_serving(state, 4)
    assert main(["bundle", "rollback", "--state", str(state.root)]) == 0
    assert_serving(state, 3)
    capsys.readouterr()
    assert main(["status", "--state", str(state.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("active: plant7 v3") and "kept for rollback: v4" in lines[1]


def test_old_bundles_are_pruned(state, files) -> None:
    installer.install(files["v4"], state)
    installer.install(files["v5"], state)
    assert state.versions() == [4, 5] and state.active_version() == 5


@pytest.mark.parametrize(("stage", "serving"), [("unpacking", 3), ("unpacked", 3), ("before_swap", 3),
                                                ("after_swap", 4)])
def test_kill_9_while_installing_leaves_old_or_new_never_a_mix(stage: str, serving: int, state, files) -> None:
    cmd = [sys.executable, "-m", "phibox.device.cli", "bundle", "install", str(files["v4"]), "--state", str(state.root),
           "--skip-health-check"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, installer.PAUSE_ENV: stage, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline().decode()
    assert line.strip() == f"paused at {stage}", line + proc.stdout.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert_serving(state, serving)
    nxt = files["v5"] if serving == 4 else files["v4"]
    installer.install(nxt, state)
    assert_serving(state, 5 if serving == 4 else 4)
    assert not list(state.bundles.glob("*.partial*")) and not list(state.root.glob(".current-*"))
