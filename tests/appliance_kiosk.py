"""Run inside a network namespace by tests/test_appliance.py, with the appliance's own Python (the
standard library only): install a bundle with the installed phibox, index a manual with its embedder,
serve, ask one question over HTTP, print the answer and its sources as JSON on the last line.

    python appliance_kiosk.py PREFIX STATE BUNDLE PORT
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def call(url: str, body: dict | None = None, timeout: float = 120) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


def main(prefix: Path, state: Path, bundle: Path, port: int) -> int:
    phibox = str(prefix / "current" / "bin" / "phibox")
    subprocess.run([phibox, "bundle", "install", str(bundle), "--state", str(state)], check=True)
    manual = state.parent / "press-manual.md"
    manual.write_text("# Hydraulic press HP-200\n\n## Error E42\n\nE42 means the hydraulic oil is too hot. "
                      "Stop the press, let the oil cool for 20 minutes and check the cooler fan.\n")
    subprocess.run([phibox, "ingest", str(manual), "--no-progress"], check=True,
                   env={**os.environ, "PHIBOX_STATE_DIR": str(state)})
    server = subprocess.Popen([phibox, "serve", "--state", str(state), "--port", str(port), "--threads", "1"])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise SystemExit(f"phibox serve exited with {server.returncode}")
            try:
                if json.loads(call(base + "/healthz", timeout=2)[1])["status"] == "ready":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the kiosk did not become ready in 120 s")
            time.sleep(0.3)
        model = json.loads(call(base + "/v1/models")[1])["data"][0]["id"]
        status, body = call(base + "/v1/chat/completions", {
            "model": model, "max_tokens": 24,
            "messages": [{"role": "user", "content": "What does error E42 on the press mean?"}],
        })
        page_status, page = call(base + "/")
        answer = json.loads(body)
        print(json.dumps({"status": status, "page_status": page_status, "page_bytes": len(page),
                          "content": answer["choices"][0]["message"]["content"],
                          "completion_tokens": answer["usage"]["completion_tokens"],
                          "passages": [p["source"] for p in answer["passages"]]}))
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])))
