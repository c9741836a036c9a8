"""The admin area (/admin) and the machine API for `phibox push` (/api/admin/bundles).

Admins log in with the password set by `phibox admin set-password` (scrypt hash); the session
cookie is HttpOnly and SameSite=Strict; every POST carries the session's CSRF token; repeated bad
passwords get 429. A session ends after `session_idle_min` without a request, `session_max_h`
after its login, and at once for every browser on a logout or a new password; admin pages are
never cached. Machines use the API token from `phibox admin new-token`. Uploads stream to
disk under a size cap and go through the one installer, with the live swap as health check.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, redirect, render_template, request, session, url_for

from phibox.device.errors import PhiboxError
from phibox.device.installed import InstalledBundle
from phibox.device.lifecycle import installer
from phibox.device.lifecycle.state import StateDir
from phibox.device.rag.readers import EXTENSIONS
from phibox.device.web import auth as admin_auth
from phibox.device.web import script_text
from phibox.device.web.context import bearer_token, service, settings
from phibox.device.web.i18n import gettext as _
from phibox.device.web.i18n import ngettext
from phibox.device.web.uploads import PIECE_BYTES, UploadArea, UploadError

bp = Blueprint("admin", __name__)
CHUNK = 1 << 20


def state() -> StateDir:
    svc = service()
    if svc.state_dir is None:
        raise UploadError(_("This server runs a bundle folder, not a device state directory: "
                            "the admin area is off."), 409)
    return svc.state_dir


def _public(message: str) -> str:
    """An error for the web: the device's own paths left out (they are in the log)."""
    root = service().state_dir.root if service().state_dir else None
    return message.replace(f"{root}/", "").replace(str(root), "the state directory") if root else message


@bp.errorhandler(UploadError)
def upload_error(exc: UploadError) -> tuple[Response, int]:
    return jsonify(error=_public(str(exc))), exc.status


@bp.errorhandler(PhiboxError)
def phibox_error(exc: PhiboxError) -> tuple[Response, int]:
    current_app.logger.warning("admin action refused: %s", exc)
    return jsonify(error=_public(str(exc))), 409


@bp.before_request
def guard() -> Any:
    """Session required for /admin (except the login page); CSRF token on every admin POST."""
    if request.path.startswith("/api/admin/"):
        token = bearer_token()
        if not token or not admin_auth.check_token(state(), token):
            return jsonify(error="missing or wrong API token: use the one from `phibox admin new-token`"), 401
        return None
    if session.get("admin") and not _session_alive():
        session.clear()
    if request.endpoint == "admin.login":
        session.setdefault("csrf", secrets.token_urlsafe(24))
    elif not session.get("admin"):
        if request.method == "GET":
            return redirect(url_for("admin.login"))
        return jsonify(error=_("Log in first.")), 401
    if request.method not in ("GET", "HEAD"):
        is_form = request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data")
        sent = request.headers.get("X-CSRF-Token") or (request.form.get("csrf", "") if is_form else "")
        if not sent or not secrets.compare_digest(sent, session.get("csrf", "")):
            stale = _("This page is out of date (its CSRF token is missing or stale): reload the page.")
            return jsonify(error=stale), 400
    return None


def _session_alive() -> bool:
    """Issued in the current generation, used lately, and not too old; marks it used now."""
    now, cfg = time.time(), settings()
    fresh = (session.get("generation") == admin_auth.session_generation(state())
             and now - float(session.get("seen_at", 0)) <= cfg.session_idle_min * 60
             and now - float(session.get("login_at", 0)) <= cfg.session_max_h * 3600)
    if fresh:
        session["seen_at"] = now
    return fresh


@bp.after_request
def never_cache(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/admin/login", methods=["GET", "POST"])
def login() -> Any:
    st = state()
    if request.method == "GET":
        return render_template("admin_login.html", csrf=session["csrf"], error="",
                               configured=admin_auth.has_password(st))
    limiter: admin_auth.LoginLimiter = current_app.config["PHIBOX_LIMITER"]
    client = request.remote_addr or "?"
    wait = limiter.reserve(client)  # counted before hashing: concurrent guesses are counted too
    if wait:
        return (render_template("admin_login.html", csrf=session["csrf"], configured=True,
                                error=ngettext("Too many failed attempts. Try again in %(num)d second.",
                                               "Too many failed attempts. Try again in %(num)d seconds.", wait)), 429,
                {"Retry-After": str(wait)})
    if not admin_auth.check_password(st, request.form.get("password", "")):
        time.sleep(0.2)
        return render_template("admin_login.html", csrf=session["csrf"], configured=True,
                               error=_("Wrong password.")), 403
    limiter.succeeded(client)
    session.clear()
    now = time.time()
    session.update(admin=True, csrf=secrets.token_urlsafe(24), generation=admin_auth.session_generation(st),
                   login_at=now, seen_at=now)
    return redirect(url_for("admin.status"))


@bp.post("/admin/logout")
def logout() -> Any:
    admin_auth.end_sessions(state())  # this cookie, and any copy of it, stops working
    session.clear()
    return redirect(url_for("admin.login"))


@bp.get("/admin")
def status() -> str:
    svc, st = service(), state()
    active = st.active_version()
    bundles = []
    for version in reversed(st.versions()):
        m = InstalledBundle.open(st.bundle_dir(version)).manifest
        bundles.append({"version": version, "name": m.name, "created_at": m.created_at, "formats": m.formats,
                        "base_model": m.base_model, "parity": m.parity, "active": version == active,
                        "train": m.provenance.get("train", {}), "export": m.provenance.get("export", {})})
    disk = shutil.disk_usage(st.root)
    docs = svc.documents.listing()
    return render_template("admin.html", csrf=session["csrf"], bundles=bundles, active=active, svc=svc,
                           disk_free_gb=round(disk.free / 1e9, 1), disk_total_gb=round(disk.total / 1e9, 1),
                           memory_mb=_rss_mb(), uptime_s=int(time.time() - svc.started_at),
                           events=st.recent_events(15), documents=docs, ingest=svc.ingest_status,
                           max_upload_mb=settings().max_upload_mb, states=script_text.model_states(),
                           script_text=script_text.admin())


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def uploads() -> UploadArea:
    area: UploadArea | None = current_app.config["PHIBOX_UPLOADS"]
    if area is None:
        raise UploadError(_("This server runs a bundle folder, not a device state directory: uploads are off."), 409)
    return area


def _checked_name(kind: str, raw: object) -> str:
    name = os.path.basename(raw) if isinstance(raw, str) else ""
    if not name or name.startswith(".") or len(name.encode()) > 200 or any(ord(c) < 32 or c in "\\\x7f"
                                                                            for c in name):
        raise UploadError("the file name must be 1-200 bytes, not start with '.', and hold no control characters "
                          "or backslashes: rename the file and upload it again", 400)
    if kind == "document" and Path(name).suffix.lower() not in EXTENSIONS:
        raise UploadError(f"a manual must be one of {', '.join(EXTENSIONS)}", 400)
    return name


def _route(rule: str, **options: Any):
    """The same view for the admin page (session + CSRF) and for machines (/api/admin, push token)."""
    def register(view):
        bp.add_url_rule(f"/admin{rule}", view_func=view, **options)
        bp.add_url_rule(f"/api/admin{rule}", endpoint=f"api_{view.__name__}", view_func=view, **options)
        return view
    return register


@_route("/uploads", methods=["POST"])
def begin_upload() -> Response:
    """Declare an upload: {"kind": "bundle"|"document", "name", "size", "sha256"?}; resumes a match."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise UploadError('send JSON like {"kind": "bundle", "name": "plant7-v4.phibox", "size": 123}', 400)
    kind = body.get("kind")
    name = _checked_name(str(kind), body.get("name"))
    cfg = settings()
    cap = (cfg.max_upload_mb if kind == "bundle" else cfg.max_document_mb) << 20
    upload = uploads().begin(str(kind), name, body.get("size"), str(body.get("sha256") or ""), cap,
                             disk_factor=2.05 if kind == "bundle" else 1.05)
    return jsonify(id=upload.id, size=upload.size, received=uploads().received(upload), piece_bytes=PIECE_BYTES)


@_route("/uploads/<upload_id>", methods=["GET"])
def upload_status(upload_id: str) -> Response:
    upload = uploads().get(upload_id)
    return jsonify(id=upload.id, size=upload.size, received=uploads().received(upload))


@_route("/uploads/<upload_id>", methods=["PUT"])
def upload_piece(upload_id: str) -> Response:
    area = uploads()
    upload = area.get(upload_id)
    offset = request.args.get("offset", type=int)
    if offset is None:
        raise UploadError("send each piece with ?offset=N (where the upload stands)", 400)
    received = area.write(upload, offset, request.content_length, request.environ["wsgi.input"])
    return jsonify(id=upload.id, size=upload.size, received=received)


@_route("/uploads/<upload_id>", methods=["DELETE"])
def cancel_upload(upload_id: str) -> Response:
    uploads().cancel(uploads().get(upload_id))
    return jsonify(cancelled=upload_id)


@_route("/uploads/<upload_id>/finish", methods=["POST"])
def finish_upload(upload_id: str) -> Response:
    """All pieces are in: install the bundle (health-checked, live) or file the manual and re-index."""
    area = uploads()
    upload = area.get(upload_id)
    path = area.finish(upload)
    svc, st = service(), state()
    try:
        if upload.kind == "document":
            manuals = st.root / "manuals"
            manuals.mkdir(exist_ok=True)
            os.replace(path, manuals / upload.name)
            threading.Thread(target=svc.reindex, args=(manuals,), daemon=True).start()
            return jsonify(saved=upload.name, reindexing=True)
        result = installer.install(path, st, health_check=svc.activate,
                                   allow_downgrade=request.args.get("allow_downgrade") == "1",
                                   keep=settings().keep_bundles)
    finally:
        path.unlink(missing_ok=True)
    return jsonify(installed=result.version, previous=result.previous, name=result.manifest.name, health="ok",
                   active=st.active_version())


@bp.post("/admin/bundles/activate/<int:version>")
def activate(version: int) -> Any:
    st = state()
    installer.activate_version(st, version, service().activate)
    return redirect(url_for("admin.status"))


@bp.post("/admin/bundles/rollback")
def rollback() -> Any:
    installer.rollback(state(), service().activate)
    return redirect(url_for("admin.status"))


@bp.post("/admin/documents/delete")
def delete_document() -> Any:
    service().delete_document(request.form.get("path", ""))
    return redirect(url_for("admin.status"))


@bp.post("/admin/documents/reindex")
def reindex() -> Response:
    threading.Thread(target=service().reindex, args=(state().root / "manuals",), daemon=True).start()
    return jsonify(reindexing=True)


@bp.get("/admin/documents/progress")
def progress() -> Response:
    return jsonify(service().ingest_status)
