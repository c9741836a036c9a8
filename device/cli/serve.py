"""`phibox serve`: the kiosk page and API on a production WSGI server (waitress)."""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from phibox.device.web.settings import ServeConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="TOML server config (see device/serve_config.py)")
    parser.add_argument("--state", default=None, help="device state directory (default $PHIBOX_STATE_DIR or "
                        "/var/lib/phibox): serves its active bundle, enables /admin")
    parser.add_argument("--bundle", default=None, help="serve this unpacked bundle folder instead (no admin installs)")
    parser.add_argument("--db", default=None, help="documents database (default: documents.db in the state dir)")
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="TCP port (default 8080)")
    parser.add_argument("--queue-size", type=int, default=None, help="questions allowed to wait (default 4)")
    parser.add_argument("--backend", choices=("gguf", "onnx"), default=None, help="model runtime")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: all)")
    parser.add_argument("--demo", action="store_true", default=None, help="show the demo notice on the page")


def run(args: argparse.Namespace) -> int:
    from phibox.device import paths
    from phibox.device.errors import ConfigError
    from phibox.device.lifecycle.sdnotify import start_notifier
    from phibox.device.lifecycle.state import StateDir
    from phibox.device.service import DeviceService
    from phibox.device.web.app import create_app
    from phibox.device.web.metrics import Metrics
    from phibox.device.web.settings import load_serve_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config, engine = load_serve_config(args.config, host=args.host, port=args.port, queue_size=args.queue_size,
                                       backend=args.backend, bundle=args.bundle, db=args.db, demo=args.demo,
                                       threads=args.threads, state=args.state)
    state = None if config.bundle else StateDir(Path(config.state) if config.state else paths.state_dir())
    if state is not None and state.active_version() is None:
        raise ConfigError(f"no bundle is active in {state.root}: `phibox bundle install FILE --state {state.root}` "
                          "first, or serve a folder with --bundle")
    bundle = Path(config.bundle) if config.bundle else state.current.resolve()
    db = Path(config.db) if config.db else (state.db if state else Path(config.bundle) / "documents.db")
    metrics = Metrics()
    service = DeviceService(bundle, db, engine, metrics, state=state, backend=config.backend,
                            queue_size=config.queue_size, load_attempts=config.load_attempts,
                            load_retry_s=config.load_retry_s, memory_budget_mb=config.memory_budget_mb)
    service.start()
    app = create_app(service, config)
    scheme = "https" if config.tls else "http"
    if state is not None:
        state.mark_server(config.host, config.port, scheme, _fingerprint(config))
    stop = threading.Event()
    start_notifier(service.ready, lambda: f"{service.state}: {service.model_id} v{service.bundle.manifest.version}",
                   lambda: service.worker.heartbeat, stop)
    print(f"phibox kiosk on {scheme}://{config.host}:{config.port}/  (bundle {service.bundle.manifest.name} "
          f"v{service.bundle.manifest.version}; model loading in the background)", flush=True)
    try:
        (_serve_https if config.tls else _serve_http)(app, config)
    finally:
        stop.set()
        service.close()
        if state is not None:
            state.clear_server()
    return 0


def _serve_http(app: Flask, config: ServeConfig) -> None:
    from waitress import serve

    from phibox.device.web.uploads import BODY_CAP_BYTES

    # Waitress reads a whole request body (spooled to a temporary file above 512 KB) before the app
    # runs, so the cap is one upload piece: big files come in pieces, each checked (web/uploads.py).
    # channel_request_lookahead lets a handler see that its client hung up (then the job is cancelled).
    serve(app, host=config.host, port=config.port, threads=config.threads, channel_timeout=300, ident="phibox",
          max_request_body_size=BODY_CAP_BYTES, channel_request_lookahead=1)


def _serve_https(app: Flask, config: ServeConfig) -> None:
    """HTTPS with cheroot (waitress has no TLS): its standard-library TLS adapter, the same body cap."""
    from cheroot import wsgi
    from cheroot.ssl.builtin import BuiltinSSLAdapter

    from phibox.device.web.uploads import BODY_CAP_BYTES

    server = wsgi.Server((config.host, config.port), app, numthreads=config.threads, server_name="phibox",
                         max=-1, request_queue_size=16, timeout=300, shutdown_timeout=5)
    server.max_request_body_size = BODY_CAP_BYTES
    server.ssl_adapter = BuiltinSSLAdapter(config.tls_cert, config.tls_key)
    try:
        server.start()
    finally:
        server.stop()


def _fingerprint(config: ServeConfig) -> str | None:
    from phibox.device.lifecycle.tls import fingerprint

    return fingerprint(Path(config.tls_cert)) if config.tls else None
