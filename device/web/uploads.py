"""Chunked, resumable uploads of bundles and manuals, for the admin page and `phibox push`.

A request body is never bigger than one piece (PIECE_BYTES; the server's own body cap sits just
above it), so nobody can fill the disk before logging in: an upload is declared first (kind, name,
size; the admin's session or the push token is checked, the size against its cap and the free
disk), then sent in pieces at the offset the device asks for, then finished (size and, when given,
sha256 checked). One upload at a time; an interrupted one is resumed by declaring it again (same
kind, name and size), and one left alone for an hour is removed.

Files live in the state directory's incoming/: ``upload-<id>.json`` (what was declared) and
``upload-<id>.part`` (the bytes so far; its size is the offset).
"""

from __future__ import annotations

import json
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from phibox.device.bundle import sha256_file
from phibox.device.fsutil import atomic_write
from phibox.device.web.context import HttpError

PIECE_BYTES = 8 << 20
"""Largest piece one request may carry."""
BODY_CAP_BYTES = PIECE_BYTES + (1 << 20)
"""The server-wide request body cap (waitress refuses bigger bodies itself)."""
KINDS = ("bundle", "document")


class UploadError(HttpError):
    """An upload refused, with its HTTP status."""


@dataclass(frozen=True)
class Upload:
    id: str
    kind: str
    name: str
    size: int
    sha256: str
    started_at: float


class UploadArea:
    """The uploads of one state directory's incoming/ folder."""

    def __init__(self, folder: Path, idle_s: float = 3600.0) -> None:
        self.folder, self.idle_s = folder, idle_s
        self.lock = threading.Lock()

    def _meta(self, upload_id: str) -> Path:
        return self.folder / f"upload-{upload_id}.json"

    def part(self, upload: Upload) -> Path:
        return self.folder / f"upload-{upload.id}.part"

    def received(self, upload: Upload) -> int:
        try:
            return self.part(upload).stat().st_size
        except FileNotFoundError:
            return 0

    def _all(self) -> list[Upload]:
        found = []
        for meta in sorted(self.folder.glob("upload-*.json")):
            try:
                found.append(Upload(**json.loads(meta.read_text())))
            except (OSError, ValueError, TypeError):
                meta.unlink(missing_ok=True)
        return found

    def _last_touched(self, upload: Upload) -> float:
        paths = [p for p in (self._meta(upload.id), self.part(upload)) if p.exists()]
        return max((p.stat().st_mtime for p in paths), default=0.0)

    def _drop(self, upload: Upload) -> None:
        self.part(upload).unlink(missing_ok=True)
        self._meta(upload.id).unlink(missing_ok=True)

    def begin(self, kind: str, name: str, size: int, sha256: str, cap: int, disk_factor: float) -> Upload:
        """Declare an upload (or find the interrupted one it continues). Refused when too big, when the
        disk can't hold it (disk_factor × size: a bundle is unpacked beside its file), or while
        another upload is under way."""
        if kind not in KINDS:
            raise UploadError(f"kind must be one of {', '.join(KINDS)}", 400)
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise UploadError("declare the upload's size in bytes (a whole number above 0)", 400)
        if size > cap:
            raise UploadError(f"the {kind} is {size / 2**20:.0f} MB; the limit is {cap >> 20} MB", 413)
        if sha256 and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256)):
            raise UploadError("sha256 must be 64 lower-case hex digits", 400)
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.lock:
            now = time.time()
            for done in self.folder.glob("upload-*.done"):  # left by a server stopped mid-install
                if now - done.stat().st_mtime > self.idle_s:
                    done.unlink(missing_ok=True)
            for other in self._all():
                if now - self._last_touched(other) > self.idle_s:
                    self._drop(other)
                elif (other.kind, other.name, other.size, other.sha256) == (kind, name, size, sha256):
                    return other  # the same upload, interrupted: go on where it stopped
                else:
                    raise UploadError(f"another upload ({other.name}, {self.received(other)} of {other.size} "
                                      "bytes) is under way: wait for it, or cancel it", 409)
            free = shutil.disk_usage(self.folder).free
            needed = int(size * disk_factor) + (64 << 20)
            if free < needed:
                raise UploadError(f"not enough disk: the {kind} needs {needed / 1e6:.0f} MB, {free / 1e6:.0f} MB are "
                                  "free; remove old bundles or files first", 507)
            upload = Upload(secrets.token_hex(12), kind, name, size, sha256, now)
            atomic_write(self._meta(upload.id), json.dumps(asdict(upload)).encode(), mode=0o600)
            return upload

    def get(self, upload_id: str) -> Upload:
        if not upload_id.isalnum():
            raise UploadError("no such upload", 404)
        try:
            return Upload(**json.loads(self._meta(upload_id).read_text()))
        except FileNotFoundError as exc:
            raise UploadError("no such upload (finished, cancelled, or left alone for an hour): start it again",
                              404) from exc

    def write(self, upload: Upload, offset: int, length: int | None, body: BinaryIO) -> int:
        """Append one piece at offset (which must be where the upload stands); returns the new offset.
        A piece cut short is taken back, so the upload resumes from a clean offset."""
        if length is None:
            raise UploadError("send each piece with a Content-Length", 411)
        if length > PIECE_BYTES:
            raise UploadError(f"a piece may hold at most {PIECE_BYTES} bytes", 413)
        with self.lock:
            have = self.received(upload)
            if offset != have:
                raise UploadError(f"the upload stands at byte {have}, not {offset}: send from there", 409)
            if have + length > upload.size:
                raise UploadError(f"the piece goes past the declared size ({upload.size} bytes)", 400)
            with open(self.part(upload), "ab") as out:
                copied = 0
                while copied < length:
                    chunk = body.read(min(1 << 20, length - copied))
                    if not chunk:
                        break
                    out.write(chunk)
                    copied += len(chunk)
                if copied < length:
                    out.truncate(have)
                    raise UploadError(f"the piece stopped after {copied} of {length} bytes; send it again", 400)
            return have + length

    def finish(self, upload: Upload) -> Path:
        """The complete file (size and sha256 checked), out of the upload area; the caller owns it."""
        with self.lock:
            have = self.received(upload)
            if have != upload.size:
                raise UploadError(f"the upload has {have} of {upload.size} bytes: send the rest first", 409)
            if upload.sha256 and sha256_file(self.part(upload))[1] != upload.sha256:
                self._drop(upload)
                raise UploadError("the upload's sha256 differs from the one declared: it was discarded, send the "
                                  "file again", 400)
            done = self.folder / f"upload-{upload.id}.done"
            self.part(upload).replace(done)
            self._meta(upload.id).unlink(missing_ok=True)
            return done

    def cancel(self, upload: Upload) -> None:
        with self.lock:
            self._drop(upload)


