"""What a request sees of the running device: typed accessors for what ``create_app`` put in the
app's config, and the error that carries its HTTP status."""

from __future__ import annotations

import ipaddress

from flask import current_app, request

from phibox.device.errors import PhiboxError
from phibox.device.service import DeviceService
from phibox.device.web.settings import ServeConfig


class HttpError(PhiboxError):
    """A refusal with the HTTP status the edge answers with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def service() -> DeviceService:
    return current_app.config["PHIBOX_SERVICE"]


def settings() -> ServeConfig:
    return current_app.config["PHIBOX_SERVE"]


def is_loopback(address: str | None) -> bool:
    """Whether a client address is this machine (127.0.0.0/8, ::1)."""
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def bearer_token() -> str:
    """The token of the request's ``Authorization: Bearer TOKEN`` header, or ""."""
    sent = request.headers.get("Authorization", "")
    return sent.removeprefix("Bearer ").strip() if sent.startswith("Bearer ") else ""
