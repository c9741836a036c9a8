"""Fleet pull from a static HTTP folder on 127.0.0.1: verify, download (resuming), install, activate."""

from __future__ import annotations

import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from phibox.device.cli.main import main
from phibox.device.lifecycle.channel import CHANNEL, publish
from phibox.device.lifecycle.state import StateDir


class StaticFolder(SimpleHTTPRequestHandler):
    """A plain static file server that also honours single byte ranges, like nginx or an object store.
    ``cut_after`` makes the next bundle download stop mid-file once (a dropped connection)."""

    cut_after: int | None = None
    ranges: list[str] = []  # noqa: RUF012 - one server per test module

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
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(len(data) - start))
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        body = data[start:]
        if StaticFolder.cut_after is not None:
            body, StaticFolder.cut_after = body[: StaticFolder.cut_after], None
            self.wfile.write(body)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def channel_server(tmp_path: Path):
    folder = tmp_path / "channel"
    folder.mkdir()
    handler = type("Handler", (StaticFolder,), {"__init__": lambda self, *a, **k: StaticFolder.__init__(
        self, *a, directory=str(folder), **k)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StaticFolder.ranges = []
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture()
def state(v3_state) -> StateDir:
    return v3_state


def test_pull_resumes_an_interrupted_download_then_activates(channel_server, state, lifecycle_files, admin_keys,
                                                            capsys) -> None:
    folder, url = channel_server
    publish(lifecycle_files["v4"], admin_keys[0], folder)
    size = lifecycle_files["v4"].stat().st_size
    StaticFolder.cut_after = size // 3
    assert main(["pull", url, "--state", str(state.root)]) == 1
    assert "run the pull again to resume" in capsys.readouterr().err
    assert state.active_version() == 3
    part = state.incoming / "plant7-v4.phibox.part"
    assert part.stat().st_size == size // 3
    assert main(["pull", url, "--state", str(state.root)]) == 0
    assert "pulled and activated plant7 v4" in capsys.readouterr().out
    assert StaticFolder.ranges == ["", f"bytes={size // 3}-"]
    assert state.active_version() == 4 and not list(state.incoming.iterdir())
    assert main(["pull", url, "--state", str(state.root)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_a_channel_signed_by_another_key_is_refused(channel_server, state, tmp_path: Path, capsys) -> None:
    from phibox.device.bundle import canonical_json, generate_key, load_private_key, sign_manifest

    folder, url = channel_server
    generate_key(tmp_path / "other.key")
    data = canonical_json({"name": "plant7", "version": 9, "file": "evil.phibox", "size": 1, "sha256": "0" * 64,
                           "published_at": "2026-11-21T00:00:00Z", "schema": 1})
    (folder / CHANNEL).write_bytes(data)
    (folder / "channel.sig").write_bytes(sign_manifest(data, load_private_key(tmp_path / "other.key")))
    assert main(["pull", url, "--state", str(state.root)]) == 1
    assert "not signed by a trusted key" in capsys.readouterr().err
    assert state.active_version() == 3 and not list(state.incoming.iterdir())


def test_publish_refuses_a_bundle_its_key_did_not_sign(lifecycle_files, tmp_path: Path) -> None:
    from phibox.device.bundle import generate_key
    from phibox.device.errors import BundleError

    generate_key(tmp_path / "other.key")
    with pytest.raises(BundleError):
        publish(lifecycle_files["v4"], tmp_path / "other.key", tmp_path / "channel")
