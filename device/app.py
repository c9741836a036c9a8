"""The kiosk's Flask app: ``create_app(service, config)`` builds everything; nothing at import time.

Routes live in web_kiosk.py (page and /api), web_openai.py (/v1) and here (/healthz, /metrics).
Every response carries a strict Content-Security-Policy: the page loads nothing from elsewhere.
"""

from __future__ import annotations

import json
import logging
import queue
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, g, jsonify, request

from device.serve_config import ServeConfig
from device.service import DeviceService
from device.worker import Job

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
access_log = logging.getLogger("phibox.access")


def create_app(service: DeviceService, config: ServeConfig) -> Flask:
    import secrets

    from device import admin_auth, web_admin, web_kiosk, web_openai

    app = Flask(__name__)
    app.config.update(
        PHIBOX_SERVICE=service, PHIBOX_SERVE=config, PHIBOX_LIMITER=admin_auth.LoginLimiter(),
        SECRET_KEY=admin_auth.session_secret(service.state_dir.root) if service.state_dir else secrets.token_bytes(32),
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_SECURE=config.secure_cookies,
        SESSION_COOKIE_NAME="phibox_admin", MAX_CONTENT_LENGTH=1 << 20,
    )  # uploads (admin) stream wsgi.input themselves under their own cap; JSON and forms stay small
    app.register_blueprint(web_kiosk.bp)
    app.register_blueprint(web_openai.bp)
    app.register_blueprint(web_admin.bp)

    @app.get("/healthz")
    def healthz() -> Response:
        body = {"status": service.state, "model": service.model_id, "bundle_version": service.bundle.manifest.version,
                "queue": service.worker.depth(), "generating": service.worker.busy.is_set(),
                "uptime_s": round(time.time() - service.started_at, 1)}
        if service.error:
            body["error"] = service.error
        return jsonify(body)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(service.metrics.render(), mimetype="text/plain; version=0.0.4")

    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def finish(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        route = request.url_rule.rule if request.url_rule else "unmatched"
        service.metrics.requests.labels(route, str(response.status_code)).inc()
        entry: dict[str, Any] = {"method": request.method, "path": request.path, "status": response.status_code,
                                 "ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 1)}
        if config.log_questions and g.get("question"):
            entry["question"] = g.question
        access_log.info(json.dumps(entry))
        return response

    @app.errorhandler(413)
    def too_large(_: Exception) -> tuple[Response, int]:
        return jsonify(error="the request body is too large"), 413

    @app.errorhandler(404)
    def not_found(_: Exception) -> tuple[Response, int]:
        return jsonify(error=f"no such page: {request.path}"), 404

    @app.errorhandler(405)
    def wrong_method(_: Exception) -> tuple[Response, int]:
        return jsonify(error=f"{request.method} is not allowed on {request.path}"), 405


    return app


def sse(event: str, data: Any) -> str:
    """One Server-Sent Event; data is JSON (so model text can never break the framing)."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def job_events(job: Job, keepalive_s: float = 1.0) -> Iterator[tuple[str, Any] | None]:
    """A job's events as they come; None every keepalive_s while waiting (so a vanished client is
    noticed on the next write). Leaving early, for any reason, cancels the job."""
    try:
        while True:
            try:
                kind, data = job.events.get(timeout=keepalive_s)
            except queue.Empty:
                yield None
                continue
            yield kind, data
            if kind in ("done", "error"):
                return
    finally:
        job.cancel.set()
