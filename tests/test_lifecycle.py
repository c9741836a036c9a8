"""Installing bundles on a device: signature first, hostile bundles refused, crash-safe activation,
health check with automatic rollback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from bundle_kit import member, resign, tamper

from phibox.device import bundle
from phibox.device.cli.main import main
from phibox.device.config import EngineConfig
from phibox.device.faults import PAUSE_ENV
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
    if case == "directory entry":
        return tamper(v4, out, add=member("model/extra", kind=tarfile.DIRTYPE))
    if case == "huge pax header":  # 200 MB that tarfile would read into memory before any check
        header = tarfile.TarInfo("././@PaxHeader")
        header.type, header.size = tarfile.XHDTYPE, 200 << 20
        with open(out, "wb") as fh:
            fh.write(header.tobuf(format=tarfile.USTAR_FORMAT))
            fh.seek(fh.tell() + header.size)  # a sparse hole: the test writes nothing big
            fh.write(v4.read_bytes())
        return out
    if case == "truncated":
        out.write_bytes(v4.read_bytes()[: v4.stat().st_size * 2 // 3])
        return out
    return {"lower version": files["v2"], "replay": files["v3"], "needs newer phibox": files["v9-future"]}[case]


REFUSALS = {
    "flipped byte": "sha256 differs", "wrong key": "does not verify with any trusted key", "unsigned": "manifest.sig",
    "dot-dot entry": "not a plain relative path", "absolute path": "not a plain relative path",
    "symlink": "regular files only", "device file": "regular files only", "directory entry": "regular files only",
    "huge pax header": "209715200-byte pax header", "setuid bit": "setuid", "extra file": "not listed in the manifest",
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

    with pytest.raises(installer.InstallError, match=r"failed its health check.*version 3 stays active"):
        installer.install(files["v4-broken"], state, health_check=health)
    assert_serving(state, 3)
    assert state.versions() == [3]
    events = [e["event"] for e in state.recent_events(3)]
    assert events[0] == "health_check_failed"
    assert not [e for e in state.recent_events(20) if e["event"] == "activated" and e["version"] == 4]


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


def install_paused_at(stage: str, bundle_file: Path, state: StateDir) -> subprocess.Popen:
    """`phibox bundle install` (with its health check) in another process, stopped at stage."""
    cmd = [sys.executable, "-m", "phibox.device.cli", "bundle", "install", str(bundle_file), "--state", str(state.root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, PAUSE_ENV: stage, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline().decode()
    assert line.strip() == f"paused at {stage}", line + proc.stdout.read().decode()
    return proc


@pytest.mark.parametrize(("stage", "serving"), [("unpacking", 3), ("unpacked", 3), ("health_check", 3),
                                                ("before_swap", 3), ("after_swap", 4)])
def test_kill_9_while_installing_leaves_old_or_new_never_a_mix(stage: str, serving: int, state, files) -> None:
    """The health check runs before `current` moves: until the swap, a crash leaves the old bundle."""
    proc = install_paused_at(stage, files["v4"], state)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert_serving(state, serving)
    nxt = files["v5"] if serving == 4 else files["v4"]
    installer.install(nxt, state)
    assert_serving(state, 5 if serving == 4 else 4)
    assert not list(state.bundles.glob("*.partial*")) and not list(state.root.glob(".current-*"))


def test_one_install_at_a_time_across_processes(state, files) -> None:
    first = install_paused_at("unpacking", files["v4"], state)
    try:
        with pytest.raises(installer.InstallBusyError, match=rf"under way in {state.root} \(pid {first.pid}\)"):
            installer.install(files["v5"], state)
        with pytest.raises(installer.InstallBusyError):
            installer.rollback(state)
        assert len(list(state.bundles.glob("*.partial*"))) == 1, "the running install's staging must survive"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert_serving(state, 3)
    installer.install(files["v5"], state)  # the lock went with the killed process; its leftovers too
    assert_serving(state, 5)
    assert not list(state.bundles.glob("*.partial*"))


def test_shell_install_is_refused_while_the_kiosk_serves_from_the_state(state, files, capsys) -> None:
    from test_serve import start_server

    proc, port = start_server(["--state", str(state.root)])
    try:
        assert state.running_server() == {"pid": proc.pid, "port": port, "url": f"http://127.0.0.1:{port}"}
        assert main(["bundle", "install", str(files["v4"]), "--state", str(state.root)]) == 1
        err = capsys.readouterr().err
        assert f"runs from {state.root}" in err and f"phibox push FILE --to http://127.0.0.1:{port}" in err
        assert main(["bundle", "rollback", "--state", str(state.root)]) == 1
        assert_serving(state, 3)
        assert state.versions() == [3]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert state.running_server() is None  # a stopped server leaves no claim behind
    assert main(["bundle", "install", str(files["v4"]), "--state", str(state.root)]) == 0
    assert_serving(state, 4)


def test_a_server_claim_left_by_a_crash_is_not_trusted_when_its_pid_is_reused(state, capsys) -> None:
    import json

    state.mark_server("0.0.0.0", 8080)
    assert state.running_server() == {"pid": os.getpid(), "port": 8080, "url": "http://127.0.0.1:8080"}
    claim = json.loads(state.server_file.read_text())
    claim["started"] -= 1  # the same pid, but another process: the server that wrote it is gone
    state.server_file.write_text(json.dumps(claim))
    assert state.running_server() is None
    assert main(["bundle", "install", str(state.root / "nothing.phibox"), "--state", str(state.root)]) == 1
    assert "no such bundle file" in capsys.readouterr().err  # not "the kiosk server runs from ..."


def test_a_model_that_never_loads_falls_back_to_the_previous_bundle(state, files, monkeypatch) -> None:
    import json

    from test_serve import get, start_server

    installer.install(files["v4-broken"], state)  # no health check asked: v4's model is damaged
    assert state.active_version() == 4
    monkeypatch.setenv("PHIBOX_LOAD_ATTEMPTS", "2")
    monkeypatch.setenv("PHIBOX_LOAD_RETRY_S", "0.2")
    # waits for "ready", which only v3 can reach: three model loads, so allow a busy machine time
    proc, port = start_server(["--state", str(state.root)], timeout_s=300)
    try:
        health = json.loads(get(port, "/healthz")[2])
        assert health["status"] == "ready" and health["bundle_version"] == 3
        # the kiosk answers from v3 once it loaded; `current` is swapped right after: wait for the record
        deadline = time.monotonic() + 60
        while not any(e["event"] == "fell_back" for e in state.recent_events(10)):
            assert time.monotonic() < deadline, state.recent_events(10)
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert_serving(state, 3)
    events = state.recent_events(10)
    assert [e["attempt"] for e in events if e["event"] == "model_load_failed"] == [2, 1]
    assert any(e["event"] == "fell_back" and e["failed"] == 4 and e["restored"] == 3 for e in events)


@pytest.fixture(scope="module")
def docs_bundles(tiny_bundle_dir: Path, admin_keys, tmp_path_factory) -> dict[str, Path]:
    """v4 and v5 shipping a prebuilt manuals index (as `phibox export --docs` makes): v4 with the press
    and conveyor manuals, v5 with a newer press manual only."""
    from bundle_kit import resign

    from phibox.device.documents import Documents
    from phibox.device.rag.embedder import OnnxEmbedder

    d = tmp_path_factory.mktemp("docs-bundles")

    def with_index(manuals: dict[str, str]):
        def edit(folder: Path) -> None:
            src = folder.parent / f"src-{folder.name}"
            src.mkdir()
            for name, text in manuals.items():
                (src / name).write_text(text)
            documents = Documents(folder / "index" / "documents.db")
            documents.ingest([src], OnnxEmbedder(folder / "embedder"), EngineConfig())
            documents.close()
            documents.make_standalone()
        return edit

    press = "# Hydraulic press HP-200\n\n## E42\n\nE42 means low hydraulic pressure: check the oil level first.\n"
    conveyor = "# Conveyor CV-1\n\n## Belt\n\nTrack the belt with the tail pulley screws.\n"
    newer = "# Hydraulic press HP-200\n\n## E42\n\nE42, low pressure: check relief valve RV-3 for leaks.\n"
    key = admin_keys[0]
    return {"v4": resign(tiny_bundle_dir, d / "plant7-v4.phibox", key, 4, scratch=d,
                         edit=with_index({"press.md": press, "conveyor.md": conveyor})),
            "v5": resign(tiny_bundle_dir, d / "plant7-v5.phibox", key, 5, scratch=d,
                         edit=with_index({"press.md": newer}))}


def test_a_bundles_manuals_merge_with_the_devices_own(state, docs_bundles, tiny_bundle_dir: Path, tmp_path: Path,
                                                      capsys) -> None:
    from phibox.device.documents import Documents
    from phibox.device.rag.embedder import OnnxEmbedder

    own = tmp_path / "manuals"
    own.mkdir()
    (own / "palletizer.md").write_text("# Palletizer PZ-9\n\nThe stretch wrapper film is changed with key SK-12.\n")
    documents = Documents(state.db)
    documents.ingest([own], OnnxEmbedder(tiny_bundle_dir / "embedder"), EngineConfig())  # an admin's manual
    assert main(["bundle", "install", str(docs_bundles["v4"]), "--state", str(state.root)]) == 0
    assert "2 manuals merged in, the device's own kept" in capsys.readouterr().out
    assert {d["source"] for d in documents.listing()} == {"palletizer.md", "press.md", "conveyor.md"}
    assert main(["bundle", "install", str(docs_bundles["v5"]), "--state", str(state.root)]) == 0
    sources = {d["source"]: d["path"] for d in documents.listing()}
    assert set(sources) == {"palletizer.md", "press.md"}, "v5 no longer ships conveyor.md; the admin's stays"
    assert sources["palletizer.md"] == str(own / "palletizer.md")
    store = documents.reader()
    text = store.conn.execute("SELECT group_concat(text) FROM chunks").fetchone()[0]
    assert "RV-3" in text and "oil level first" not in text  # the newer press manual replaced the older
    counts = documents.counts()
    assert counts["vectors"] == counts["chunks"] == counts["fts"] > 0
    documents.close()


def test_a_docs_bundle_pushed_to_the_running_kiosk_keeps_the_admins_manual(state, docs_bundles, tiny_bundle_dir,
                                                                         tmp_path: Path, capsys) -> None:
    import json
    import urllib.parse

    from test_serve import get, start_server

    from phibox.device.documents import Documents
    from phibox.device.rag.embedder import OnnxEmbedder

    own = tmp_path / "manuals"
    own.mkdir()
    (own / "palletizer.md").write_text("# Palletizer PZ-9\n\nThe stretch wrapper film is changed with key SK-12.\n")
    documents = Documents(state.db)
    documents.ingest([own], OnnxEmbedder(tiny_bundle_dir / "embedder"), EngineConfig())
    documents.close()
    token = tmp_path / "push.token"
    assert main(["admin", "new-token", "--state", str(state.root), "--out", str(token)]) == 0
    proc, port = start_server(["--state", str(state.root)])
    try:
        assert main(["push", str(docs_bundles["v4"]), "--to", f"http://127.0.0.1:{port}",
                     "--token-file", str(token)]) == 0

        def top(question: str) -> str:
            raw = get(port, "/api/search?q=" + urllib.parse.quote(question))[2]
            return json.loads(raw)["passages"][0]["source"]

        assert top("stretch wrapper film key SK-12") == "palletizer.md"  # the admin's manual survived
        assert top("track the conveyor belt tail pulley") == "conveyor.md"  # the bundle's arrived
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert any(e["event"] == "index_merged" and e["bundle_documents"] == 2 for e in state.recent_events(10))
