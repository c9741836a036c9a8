"""The kiosk's Flask app: ``create_app(service, config)`` builds everything; nothing at import time.

Routes live in kiosk.py (page and /api), feedback.py (/api/feedback, /admin/feedback), openai_api.py
(/v1), admin.py (/admin) and here
(/healthz, /metrics).
Every response carries a strict Content-Security-Policy: the page loads nothing from elsewhere.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import socket
import time
from typing import Any

from flask import Flask, Response, g, jsonify, request

from phibox.device.service import DeviceService
from phibox.device.web import admin, auth, feedback, i18n, kiosk, openai_api
from phibox.device.web.answers import FeedbackInbox, RecentAnswers
from phibox.device.web.context import bearer_token, is_loopback
from phibox.device.web.metrics import Metrics
from phibox.device.web.settings import ServeConfig
from phibox.device.web.uploads import UploadArea

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
access_log = logging.getLogger("phibox.access")


def create_app(service: DeviceService, config: ServeConfig) -> Flask:
    """The Flask app serving service, whose observer must be this room's Prometheus ``Metrics``."""
    metrics = service.observer
    if not isinstance(metrics, Metrics):
        raise TypeError("create_app needs a DeviceService built with phibox.device.web.metrics.Metrics as observer")
    app = Flask(__name__)
    app.config.update(
        PHIBOX_SERVICE=service, PHIBOX_SERVE=config, PHIBOX_LIMITER=auth.LoginLimiter(),
        PHIBOX_CLIENT_JOBS=openai_api.ClientJobs(),
        PHIBOX_RECENT_ANSWERS=RecentAnswers(config.recent_answers),
        PHIBOX_FEEDBACK_INBOX=FeedbackInbox(service.documents),
        PHIBOX_UPLOADS=UploadArea(service.state_dir.incoming) if service.state_dir else None,
        SECRET_KEY=auth.session_secret(service.state_dir) if service.state_dir else secrets.token_bytes(32),
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=config.secure_cookies or config.tls,
        SESSION_COOKIE_NAME="phibox_admin", MAX_CONTENT_LENGTH=1 << 20,
    )  # upload pieces (web/uploads.py) stream wsgi.input themselves; JSON and forms stay small
    i18n.init_app(app, config.default_language)
    app.register_blueprint(kiosk.bp)
    app.register_blueprint(openai_api.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(feedback.kiosk_bp)
    app.register_blueprint(feedback.admin_bp)

    @app.get("/healthz")
    def healthz() -> Response:
        body = {"status": service.state, "model": service.model_id, "bundle_version": service.bundle.manifest.version,
                "queue": service.worker.depth(), "generating": service.worker.busy.is_set(),
                "uptime_s": round(time.time() - service.started_at, 1)}
        if service.error:  # the exception itself is in the log and on /admin, not on an open endpoint
            body["error"] = "the model did not load: see the admin page or the service log"
        return jsonify(body)

    @app.get("/metrics")
    def prometheus() -> Response | tuple[Response, int]:
        if not (config.metrics_public or _local() or _has_api_key(service)):
            return jsonify(error="/metrics is served to this machine or with a /v1 API key (metrics_public)"), 403
        return Response(metrics.render(), mimetype="text/plain; version=0.0.4")

    names = _own_names(config)

    @app.before_request
    def start_timer() -> Response | tuple[Response, int] | None:
        g.started = time.perf_counter()
        if not _host_allowed(request.host, names):
            return jsonify(error=f"this kiosk does not answer to the name {request.host!r}: open it by its address "
                                 "or add the name to allowed_hosts"), 421
        return None

    @app.after_request
    def finish(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(route, str(response.status_code)).inc()
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

    @app.errorhandler(RecursionError)
    def too_deep(_: Exception) -> tuple[Response, int]:
        return jsonify(error="the JSON is nested too deeply"), 400

    @app.errorhandler(405)
    def wrong_method(_: Exception) -> tuple[Response, int]:
        return jsonify(error=f"{request.method} is not allowed on {request.path}"), 405


    return app


def _own_names(config: ServeConfig) -> frozenset[str]:
    """Host names the server answers to: localhost, this machine's names, and allowed_hosts."""
    own = socket.gethostname().lower()
    return frozenset({"localhost", own, own.split(".")[0], f"{own.split('.')[0]}.local",
                      socket.getfqdn().lower(), *config.allowed_hosts})


def _host_allowed(host: str, names: frozenset[str]) -> bool:
    """An IP address (no DNS involved, so no rebinding) or one of the server's own names."""
    if host.startswith("[") and "]" in host:  # [v6 address] with or without a port
        name = host[1 : host.index("]")]
    else:
        name = host.split(":")[0] if host.count(":") == 1 else host
    name = name.lower()
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return name in names


def _local() -> bool:
    return is_loopback(request.remote_addr)


def _has_api_key(service: DeviceService) -> bool:
    key = bearer_token()
    return bool(key) and service.state_dir is not None and auth.api_key_name(service.state_dir, key) is not None
