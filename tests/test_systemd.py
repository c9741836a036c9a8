"""The appliance units: systemd-analyze verify and security, W^X for the runtimes, and sd_notify
(READY only after the model loads; watchdog pings only from a live generation worker)."""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_serve import free_port, get
from unit_checks import exposure, needs_systemd, verify_errors

from phibox.device.lifecycle.sdnotify import start_notifier

ROOT = Path(__file__).resolve().parent.parent
UNITS = ("phibox.service", "phibox-pull.service", "phibox-pull.timer")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """The units as install.sh writes them, with @PREFIX@ set to this virtual environment."""
    out = tmp_path_factory.mktemp("units")
    for unit in UNITS:
        (out / unit).write_text((ROOT / "systemd" / unit).read_text().replace("@PREFIX@", sys.prefix))
    return out


@needs_systemd
def test_units_verify(rendered: Path) -> None:
    assert verify_errors(rendered, UNITS) == ""


@needs_systemd
@pytest.mark.parametrize("unit", ["phibox.service", "phibox-pull.service"])
def test_exposure_score_is_at_most_2(rendered: Path, unit: str) -> None:
    assert exposure(rendered / unit) <= 2.0


def test_service_is_notify_type_with_a_watchdog_and_restart_limits() -> None:
    unit = (ROOT / "systemd" / "phibox.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StartLimitBurst=", "MemoryMax=",
                 "MemoryDenyWriteExecute=yes", "SystemCallFilter=@system-service", "ProtectSystem=strict",
                 "CapabilityBoundingSet=\n", "NoNewPrivileges=yes", "StateDirectory=phibox"):
        assert line in unit, line


def test_pull_unit_has_a_start_timeout_follows_a_named_channel_and_finds_the_server_port() -> None:
    unit = (ROOT / "systemd" / "phibox-pull.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "TimeoutStartSec=" in unit and "--deadline" in exec_start and "--through-server" in exec_start
    assert "--channel ${PHIBOX_CHANNEL}" in exec_start
    assert "8080" not in exec_start and "--device" not in exec_start  # the port comes from serve's server.json
    assert "MemoryMax=" in unit and "IPAddressDeny=any" in unit and "IPAddressAllow=" in unit
    install = (ROOT / "systemd" / "install.sh").read_text()
    assert "PHIBOX_CHANNEL=" in install


def test_credentials_are_roots_and_read_only_for_the_service() -> None:
    install = (ROOT / "systemd" / "install.sh").read_text()
    unit = (ROOT / "systemd" / "phibox.service").read_text()
    assert 'install -m 0644 -o root -g root "$key" "$config/keys/' in install and "config=/etc/phibox" in install
    assert 'chown root:"$(id -gn "$user")" "$config" "$config/keys"' in install and "/var/lib/phibox/keys/" not in unit
    assert "PHIBOX_CONFIG_DIR=/etc/phibox" in unit and "ProtectSystem=strict" in unit
    assert "ReadWritePaths=/etc" not in unit


def test_runtimes_work_under_memory_deny_write_execute(tiny_bundle_dir: Path) -> None:
    """MemoryDenyWriteExecute=yes is only safe if llama.cpp, onnxruntime(-genai) and ctypes never map
    writable+executable memory: run them under the kernel's W^X switch (PR_SET_MDWE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    code = f"""
import ctypes, pathlib, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(77)
from phibox.device.runtime.llama import LlamaCppBackend
from phibox.device.runtime.onnx import OnnxGenaiBackend
from phibox.device.rag.embedder import OnnxEmbedder
b = pathlib.Path({str(tiny_bundle_dir)!r})
print(OnnxEmbedder(b / "embedder").embed(["x"]).shape)
prompt = "<|user|>\\nWhat do I do for fault E31?<|end|>\\n<|assistant|>\\n"
print("".join(LlamaCppBackend(b / "model" / "phi3-q4_k_m.gguf", 1024, 2).generate(prompt, 8)))
print("".join(OnnxGenaiBackend(b / "onnx", 2).generate(prompt, 8)))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if result.returncode == 77:
        pytest.skip(f"this kernel has no PR_SET_MDWE (errno {ctypes.get_errno()}, {libc})")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == "(1, 384)" and "Bleed air" in result.stdout


def listen(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.2)
    return sock


def drain(sock: socket.socket, seconds: float) -> list[str]:
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
    return out


def test_watchdog_pings_stop_when_the_worker_heartbeat_stops(tmp_path: Path, monkeypatch) -> None:
    sock = listen(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # ping every 0.2 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    ready, stop = threading.Event(), threading.Event()
    beat = {"t": time.monotonic()}
    start_notifier(ready, lambda: "ready", lambda: beat["t"], stop)
    assert drain(sock, 0.5) == []  # nothing before the model is loaded
    ready.set()
    alive = []
    end = time.monotonic() + 1.2
    while time.monotonic() < end:
        beat["t"] = time.monotonic()
        alive += drain(sock, 0.1)
    assert alive[0].startswith("READY=1") and sum(m.startswith("WATCHDOG=1") for m in alive) >= 3
    stuck = drain(sock, 1.2)  # the heartbeat froze: a deadlocked worker
    assert not [m for m in stuck[1:] if m.startswith("WATCHDOG=1")]
    stop.set()


def test_serve_sends_ready_only_after_the_model_is_loaded(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    sock = listen(tmp_path)
    port = free_port()
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    proc = subprocess.Popen([sys.executable, "-m", "phibox.device.cli", "serve", "--bundle", str(tiny_bundle_dir),
                             "--db", str(tmp_path / "docs.db"), "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        messages: list[str] = []
        deadline = time.monotonic() + 90
        while not any(m.startswith("READY=1") for m in messages):
            assert time.monotonic() < deadline and proc.poll() is None
            messages += drain(sock, 0.2)
        assert json.loads(get(port, "/healthz")[2])["status"] == "ready"
        assert "STATUS=ready: phibox-plant7 v3" in messages[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
