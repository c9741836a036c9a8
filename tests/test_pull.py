"""Fleet pull from a static HTTP folder on 127.0.0.1: a channel the device pins and can't be frozen
on (foreign, replayed and expired channels are refused), downloads bounded by the channel's size and
a deadline that resume (also when the .part is already whole), versions that failed or were rolled
back are not pulled again until an admin allows them, and a running server gets the bundle live."""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from phibox.device.cli.main import main
from phibox.device.lifecycle.channel import CHANNEL, CHANNEL_SIG, publish, renew
from phibox.device.lifecycle.state import StateDir

LINE = "plant7-line2"


class StaticFolder(SimpleHTTPRequestHandler):
    """A static file server that honours single byte ranges (416 past the end), like nginx or an
    object store. Knobs for one test at a time: ``cut_after`` drops the connection mid-file once,
    ``pad`` sends that many extra bytes after the file with no Content-Length (a wrong or hostile
    mirror), ``lie_length`` announces a wrong Content-Length, ``trickle_s`` sleeps between 64 KB pieces."""

    cut_after: int | None = None
    pad = 0
    lie_length = 0
    trickle_s = 0.0
    ranges: list[str] = []  # noqa: RUF012 - reset by the fixture for every test

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.name.endswith(".phibox") or not path.is_file():
            return super().do_GET()
        data = path.read_bytes()
        header = self.headers.get("Range")
        StaticFolder.ranges.append(header or "")
        start = int(header.split("=")[1].split("-")[0]) if header else 0
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        body = data[start:] + b"\0" * StaticFolder.pad
        self.send_response(206 if header else 200)
        if not StaticFolder.pad:
            self.send_header("Content-Length", str(len(data) - start + StaticFolder.lie_length))
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if StaticFolder.cut_after is not None:
            body, StaticFolder.cut_after = body[: StaticFolder.cut_after], None
        for at in range(0, len(body), 1 << 16):
            self.wfile.write(body[at : at + (1 << 16)])
            time.sleep(StaticFolder.trickle_s)
        self.close_connection = True


@pytest.fixture()
def channel_server(tmp_path: Path):
    folder = tmp_path / "channel"
    folder.mkdir()
    handler = type("Handler", (StaticFolder,), {"__init__": lambda self, *a, **k: StaticFolder.__init__(
        self, *a, directory=str(folder), **k)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StaticFolder.ranges, StaticFolder.cut_after, StaticFolder.pad = [], None, 0
    StaticFolder.lie_length, StaticFolder.trickle_s = 0, 0.0
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture()
def state(v3_state) -> StateDir:
    return v3_state


def pull(url: str, state: StateDir, *extra: str) -> int:
    return main(["pull", url, "--state", str(state.root), "--channel", LINE, *extra])


def test_pull_resumes_an_interrupted_download_then_activates(channel_server, state, lifecycle_files, admin_keys,
                                                            capsys) -> None:
    folder, url = channel_server
    publish(lifecycle_files["v4"], admin_keys[0], folder, LINE)
    size = lifecycle_files["v4"].stat().st_size
    StaticFolder.cut_after = size // 3
    assert pull(url, state) == 1
    assert "run the pull again to resume" in capsys.readouterr().err
    assert state.active_version() == 3
    part = state.incoming / "plant7-v4.phibox.part"
    assert part.stat().st_size == size // 3
    assert main(["pull", url, "--state", str(state.root)]) == 0  # the channel is pinned: no --channel needed
    assert f"pulled and activated plant7 v4 from channel {LINE}" in capsys.readouterr().out
    assert StaticFolder.ranges == ["", f"bytes={size // 3}-"]
    assert state.active_version() == 4 and not list(state.incoming.iterdir())
    assert pull(url, state) == 0
    assert "up to date" in capsys.readouterr().out


def test_a_part_that_is_already_whole_is_checked_not_fetched_again(channel_server, state, lifecycle_files,
                                                                   admin_keys, capsys) -> None:
    """A pull killed between the last byte and the rename left a whole .part: the next pull used to
    ask for bytes=SIZE- and get 416 on every run."""
    folder, url = channel_server
    publish(lifecycle_files["v4"], admin_keys[0], folder, LINE)
    state.incoming.mkdir(exist_ok=True)
    shutil.copyfile(lifecycle_files["v4"], state.incoming / "plant7-v4.phibox.part")
    assert pull(url, state) == 0, capsys.readouterr()
    assert StaticFolder.ranges == [] and state.active_version() == 4


def test_the_download_stops_at_the_channels_size(channel_server, state, lifecycle_files, admin_keys, capsys) -> None:
    folder, url = channel_server
    publish(lifecycle_files["v4"], admin_keys[0], folder, LINE)
    StaticFolder.pad = 50 << 20  # a mirror that keeps sending, with no Content-Length
    assert pull(url, state) == 0, capsys.readouterr()
    assert state.active_version() == 4


def test_a_wrong_content_length_is_refused_before_writing(channel_server, state, lifecycle_files, admin_keys,
                                                          capsys) -> None:
    folder, url = channel_server
    publish(lifecycle_files["v4"], admin_keys[0], folder, LINE)
    StaticFolder.lie_length = 1 << 30
    assert pull(url, state) == 1
    assert "the server sends" in capsys.readouterr().err
    assert state.active_version() == 3


def test_a_slow_download_gives_up_at_the_deadline_and_resumes(channel_server, state, lifecycle_files, admin_keys,
                                                             capsys) -> None:
    folder, url = channel_server
    publish(lifecycle_files["v4"], admin_keys[0], folder, LINE)
    StaticFolder.trickle_s = 0.05  # 64 KB every 50 ms: well over the 1 s deadline for the whole file
    assert pull(url, state, "--deadline", "1") == 1
    assert "longer than 1 s" in capsys.readouterr().err
    have = (state.incoming / "plant7-v4.phibox.part").stat().st_size
    assert 0 < have < lifecycle_files["v4"].stat().st_size
    StaticFolder.trickle_s = 0.0
    assert pull(url, state) == 0
    assert StaticFolder.ranges[-1] == f"bytes={have}-" and state.active_version() == 4


def test_a_channel_signed_by_another_key_is_refused(channel_server, state, tmp_path: Path, capsys) -> None:
    from phibox.device.bundle import generate_key

    folder, url = channel_server
    generate_key(tmp_path / "other.key")
    bundle = folder / "x.phibox"
    bundle.write_bytes(b"x")
    (folder / CHANNEL).write_bytes(json.dumps({
        "channel": LINE, "name": "plant7", "version": 9, "file": "x.phibox", "size": 1, "sha256": "0" * 64,
        "sequence": 1, "published_at": "2026-11-21T00:00:00Z", "expires_at": "2099-01-01T00:00:00Z",
        "schema": 2}).encode())
    from phibox.device.bundle import load_private_key, sign_manifest
    from phibox.device.lifecycle.channel import CONTEXT

    (folder / CHANNEL_SIG).write_bytes(sign_manifest(CONTEXT + (folder / CHANNEL).read_bytes(),
                                                     load_private_key(tmp_path / "other.key")))
    assert pull(url, state) == 1
    assert "not signed by a trusted key" in capsys.readouterr().err
    assert state.active_version() == 3 and not list(state.incoming.iterdir())


def test_a_signature_made_outside_the_channel_context_is_refused(channel_server, state, lifecycle_files, admin_keys,
                                                                 capsys) -> None:
    """The admin key signs manifests too: a signature over the bare bytes (how a manifest is signed)
    must not make a channel."""
    from phibox.device.bundle import load_private_key, sign_manifest

    folder, url = channel_server
    publish(lifecycle_files["v4"], admin_keys[0], folder, LINE)
    (folder / CHANNEL_SIG).write_bytes(sign_manifest((folder / CHANNEL).read_bytes(), load_private_key(admin_keys[0])))
    assert pull(url, state) == 1
    assert "not signed by a trusted key as a channel" in capsys.readouterr().err


def test_a_foreign_channel_or_another_plants_bundle_is_refused(channel_server, state, lifecycle_files, admin_keys,
                                                               tiny_bundle_dir: Path, tmp_path: Path, capsys) -> None:
    from bundle_kit import resign

    folder, url = channel_server
    publish(lifecycle_files["v4"], admin_keys[0], folder, "plant9-line1")
    assert pull(url, state) == 1
    assert f"serves channel 'plant9-line1', this device follows '{LINE}'" in capsys.readouterr().err
    assert main(["pull", url, "--state", str(state.root)]) == 1  # the pin is set only by a channel that passed
    assert "--channel NAME on the first pull" in capsys.readouterr().err

    other = resign(tiny_bundle_dir, tmp_path / "plant9-v8.phibox", admin_keys[0], 8, name="plant9", scratch=tmp_path)
    for stale in folder.iterdir():
        stale.unlink()
    publish(other, admin_keys[0], folder, LINE)  # same key, same channel name, another plant's bundle
    assert pull(url, state) == 1
    assert "offers plant9 bundles; this device runs plant7" in capsys.readouterr().err
    assert state.active_version() == 3 and StaticFolder.ranges == []


def test_a_replayed_older_channel_is_refused(channel_server, state, lifecycle_files, admin_keys, capsys) -> None:
    folder, url = channel_server
    publish(lifecycle_files["v4"], admin_keys[0], folder, LINE)
    old = {name: (folder / name).read_bytes() for name in (CHANNEL, CHANNEL_SIG)}
    assert pull(url, state) == 0 and state.active_version() == 4
    publish(lifecycle_files["v5"], admin_keys[0], folder, LINE)
    assert pull(url, state) == 0 and state.active_version() == 5
    for name, data in old.items():  # a mirror frozen on the old channel, validly signed, not expired
        (folder / name).write_bytes(data)
    assert pull(url, state) == 1
    assert "older than one this device already saw" in capsys.readouterr().err


def test_an_expired_channel_is_refused_until_renewed(channel_server, state, lifecycle_files, admin_keys,
                                                     capsys) -> None:
    folder, url = channel_server
    publish(lifecycle_files["v4"], admin_keys[0], folder, LINE, valid_days=1 / 86400)  # one second
    time.sleep(2.1)
    assert pull(url, state) == 1
    err = capsys.readouterr().err
    assert f"channel '{LINE}' expired" in err and "phibox publish --renew" in err and "clock says" in err
    assert main(["publish", "--renew", "--key", str(admin_keys[0]), "--dir", str(folder)]) == 0
    assert pull(url, state) == 0 and state.active_version() == 4
    pinned = json.loads((state.root / "channel-pin.json").read_text())
    assert pinned["sequence"] == json.loads((folder / CHANNEL).read_text())["sequence"]
    assert renew(admin_keys[0], folder).sequence > pinned["sequence"]  # every renewal moves the sequence on


def test_a_version_that_failed_here_is_not_pulled_again_until_allowed(channel_server, state, lifecycle_files,
                                                                      admin_keys, capsys) -> None:
    folder, url = channel_server
    publish(lifecycle_files["v4-broken"], admin_keys[0], folder, LINE)
    assert pull(url, state) == 1
    assert "failed its health check" in capsys.readouterr().err
    requests = len(StaticFolder.ranges)
    assert pull(url, state) == 0
    out = capsys.readouterr().out
    assert "not pulling plant7 v4" in out and "phibox bundle allow 4" in out
    assert len(StaticFolder.ranges) == requests, "a blocked version is not even downloaded"
    assert main(["status", "--state", str(state.root)]) == 0
    assert "blocked: v4" in capsys.readouterr().out
    assert main(["bundle", "allow", "4", "--state", str(state.root)]) == 0
    assert pull(url, state) == 1  # allowed: tried again (and, still broken, blocked again)
    assert len(StaticFolder.ranges) == requests + 1 and state.active_version() == 3


def test_a_rolled_back_version_is_not_reinstalled_by_the_next_pull(channel_server, state, lifecycle_files,
                                                                   admin_keys, capsys) -> None:
    folder, url = channel_server
    publish(lifecycle_files["v4"], admin_keys[0], folder, LINE)
    assert pull(url, state) == 0 and state.active_version() == 4
    assert main(["bundle", "rollback", "--state", str(state.root)]) == 0 and state.active_version() == 3
    capsys.readouterr()
    assert pull(url, state) == 0
    assert "was rolled back by an admin" in capsys.readouterr().out and state.active_version() == 3
    publish(lifecycle_files["v5"], admin_keys[0], folder, LINE)  # a newer version is pulled as usual
    assert pull(url, state) == 0 and state.active_version() == 5


def test_a_pull_hands_the_bundle_to_the_running_server(channel_server, state, lifecycle_files, admin_keys,
                                                       capsys) -> None:
    from test_serve import get, start_server

    from phibox.device.web import auth

    folder, url = channel_server
    publish(lifecycle_files["v4"], admin_keys[0], folder, LINE)
    (state.root / "push.token").write_text(auth.new_token(state) + "\n")
    proc, port = start_server(["--state", str(state.root)], timeout_s=300)
    try:
        assert pull(url, state) == 0
        out = capsys.readouterr().out
        assert f"through http://127.0.0.1:{port}" in out
        health = json.loads(get(port, "/healthz")[2])
        assert health["bundle_version"] == 4  # switched live, by the server
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert state.active_version() == 4


def test_publish_refuses_a_bundle_its_key_did_not_sign(lifecycle_files, tmp_path: Path) -> None:
    from phibox.device.bundle import generate_key
    from phibox.device.errors import BundleError

    generate_key(tmp_path / "other.key")
    with pytest.raises(BundleError):
        publish(lifecycle_files["v4"], tmp_path / "other.key", tmp_path / "channel", LINE)


def test_a_channel_folder_keeps_its_name(lifecycle_files, admin_keys, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "channel"
    args = ["publish", str(lifecycle_files["v4"]), "--key", str(admin_keys[0]), "--dir", str(folder)]
    assert main(args) == 1
    assert "name it with --channel" in capsys.readouterr().err
    assert main([*args, "--channel", LINE]) == 0
    assert main(["publish", str(lifecycle_files["v5"]), "--key", str(admin_keys[0]), "--dir", str(folder)]) == 0
    assert json.loads((folder / CHANNEL).read_text())["channel"] == LINE
    assert main([*args, "--channel", "plant7-line3"]) == 1
    assert "would move every device off it" in capsys.readouterr().err


def test_moving_a_device_to_another_channel_takes_repin(channel_server, state, lifecycle_files, admin_keys,
                                                        capsys) -> None:
    folder, url = channel_server
    publish(lifecycle_files["v4"], admin_keys[0], folder, LINE)
    assert pull(url, state) == 0
    publish(lifecycle_files["v5"], admin_keys[0], folder / "line3", "plant7-line3")
    line3 = main(["pull", f"{url}line3/", "--state", str(state.root), "--channel", "plant7-line3"])
    assert line3 == 1 and f"follows channel '{LINE}'" in capsys.readouterr().err
    assert main(["pull", f"{url}line3/", "--state", str(state.root), "--channel", "plant7-line3", "--repin"]) == 0
    assert state.active_version() == 5
    assert json.loads((state.root / "channel-pin.json").read_text())["channel"] == "plant7-line3"


def test_the_timers_pull_never_installs_by_itself(channel_server, state, lifecycle_files, admin_keys,
                                                  capsys) -> None:
    """--through-server (what phibox-pull.service runs under 512 MB) refuses when no kiosk takes the
    bundle, instead of loading the model for a health check itself."""
    folder, url = channel_server
    publish(lifecycle_files["v4"], admin_keys[0], folder, LINE)
    assert pull(url, state, "--through-server") == 1
    assert "no kiosk server runs" in capsys.readouterr().err
    assert state.active_version() == 3 and StaticFolder.ranges == []
