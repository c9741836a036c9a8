"""`phibox serve`: the kiosk page and API on a production WSGI server (waitress)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="TOML server config (see device/serve_config.py)")
    parser.add_argument("--bundle", default=None, help="unpacked bundle folder (default: the active bundle)")
    parser.add_argument("--db", default=None, help="documents database (default: documents.db in the state dir)")
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="TCP port (default 8080)")
    parser.add_argument("--queue-size", type=int, default=None, help="questions allowed to wait (default 4)")
    parser.add_argument("--backend", choices=("gguf", "onnx"), default=None, help="model runtime")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: all)")
    parser.add_argument("--demo", action="store_true", default=None, help="show the demo notice on the page")


def run(args: argparse.Namespace) -> int:
    from waitress import serve

    from device.app import create_app
    from device.installed import default_bundle_dir, default_db_path
    from device.metrics import Metrics
    from device.serve_config import load_serve_config
    from device.service import DeviceService

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config, engine = load_serve_config(args.config, host=args.host, port=args.port, queue_size=args.queue_size,
                                       backend=args.backend, bundle=args.bundle, db=args.db, demo=args.demo,
                                       threads=args.threads)
    bundle = Path(config.bundle) if config.bundle else default_bundle_dir()
    db = Path(config.db) if config.db else default_db_path()
    service = DeviceService(bundle, db, config, engine, Metrics())
    service.start()
    app = create_app(service, config)
    print(f"phibox kiosk on http://{config.host}:{config.port}/  (bundle {service.bundle.manifest.name} "
          f"v{service.bundle.manifest.version}; model loading in the background)", flush=True)
    try:
        serve(app, host=config.host, port=config.port, threads=config.threads, channel_timeout=300,
              ident="phibox")
    finally:
        service.close()
    return 0
