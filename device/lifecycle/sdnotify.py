"""systemd notifications without libsystemd: READY=1 once the model is loaded, and WATCHDOG=1
only while the generation worker's heartbeat is fresh (a deadlocked worker stops the pings, and
systemd restarts the service)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable


def notify(message: str, env: dict[str, str] | None = None) -> bool:
    """Send one sd_notify datagram; False when not run by systemd (no NOTIFY_SOCKET)."""
    address = (env or os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def watchdog_interval(env: dict[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of WatchdogSec), or None when no watchdog is set."""
    env = env or os.environ
    usec = env.get("WATCHDOG_USEC")
    if not usec or env.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return None
    return int(usec) / 2_000_000


def start_notifier(ready: threading.Event, status: Callable[[], str], heartbeat: Callable[[], float],
                   stop: threading.Event) -> threading.Thread:
    """READY=1 after `ready`; then WATCHDOG=1 every interval while heartbeat() is younger than 2 intervals."""

    def run() -> None:
        ready.wait()
        notify(f"READY=1\nSTATUS={status()}")
        interval = watchdog_interval()
        if interval is None:
            return
        while not stop.wait(interval):
            if time.monotonic() - heartbeat() < 2 * interval:
                notify(f"WATCHDOG=1\nSTATUS={status()}")

    thread = threading.Thread(target=run, name="phibox-sdnotify", daemon=True)
    thread.start()
    return thread
