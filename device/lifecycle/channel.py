"""Fleet channels: a static HTTP folder (any web server, object store or CDN) holding the latest
bundle and a signed ``channel.json`` naming it, its size and sha256.

``publish`` writes the folder on the build box; ``pull`` on each device reads the channel,
verifies its signature with the device's trusted keys, downloads the bundle (resuming an
interrupted download with an HTTP Range request), checks size and sha256, and hands it to the
installer (locally, or through the running server so it swaps live).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from phibox.device.bundle import (
    BundleError,
    Manifest,
    canonical_json,
    load_private_key,
    load_trusted_keys,
    sign_manifest,
    verify_signature,
)
from phibox.device.errors import PhiboxError
from phibox.device.fsutil import atomic_write
from phibox.device.lifecycle.bundle_tar import read_manifest, verify_tar
from phibox.device.lifecycle.state import StateDir
from phibox.device.provenance import utc_now

CHANNEL, CHANNEL_SIG = "channel.json", "channel.sig"
CHUNK = 1 << 20


class PullError(PhiboxError):
    """The channel or its bundle could not be fetched or trusted."""


@dataclass(frozen=True)
class Channel:
    name: str
    version: int
    file: str
    size: int
    sha256: str
    published_at: str
    schema: int = 1


def publish(bundle: Path, key_path: Path, folder: Path) -> Channel:
    """Copy bundle into folder and sign a channel.json pointing at it (the bundle is checked first)."""
    key = load_private_key(key_path)
    pub = key.public_key()
    manifest = verify_tar(bundle, [pub])  # a channel never names a bundle its own key did not sign
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / bundle.name
    if target.resolve() != bundle.resolve():
        shutil.copyfile(bundle, target)
    digest = hashlib.sha256()
    with open(target, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    channel = Channel(manifest.name, manifest.version, target.name, target.stat().st_size, digest.hexdigest(),
                      utc_now())
    data = canonical_json(asdict(channel))
    atomic_write(folder / CHANNEL_SIG, sign_manifest(data, key))
    atomic_write(folder / CHANNEL, data)  # last: readers never see a channel whose file is missing
    return channel


def _get(url: str, headers: dict[str, str] | None = None, timeout: float = 60):
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout)
    except (urllib.error.URLError, OSError) as exc:
        raise PullError(f"cannot fetch {url}: {exc}") from exc


def read_channel(base_url: str, state: StateDir) -> Channel:
    base = base_url.rstrip("/")
    with _get(f"{base}/{CHANNEL}") as r:
        data = r.read(1 << 20)
    with _get(f"{base}/{CHANNEL_SIG}") as r:
        sig = r.read(1 << 20)
    try:
        verify_signature(data, sig, load_trusted_keys([state.keys]))
    except BundleError as exc:
        raise PullError(f"{base}/{CHANNEL} is not signed by a trusted key: {exc}") from exc
    try:
        channel = Channel(**json.loads(data))
    except (ValueError, TypeError) as exc:
        raise PullError(f"{base}/{CHANNEL} is malformed: {exc}") from exc
    if "/" in channel.file or channel.file.startswith("."):
        raise PullError(f"{base}/{CHANNEL} names {channel.file!r}, not a plain file name")
    return channel


def download(base_url: str, channel: Channel, state: StateDir) -> Path:
    """The channel's bundle in state/incoming, resuming a previous partial download."""
    state.init()
    part = state.incoming / f"{channel.file}.part"
    done = state.incoming / channel.file
    have = part.stat().st_size if part.is_file() else 0
    if have > channel.size:
        part.unlink()
        have = 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with _get(f"{base_url.rstrip('/')}/{channel.file}", headers) as r:
        if have and r.status != 206:  # the server ignored the range: start over
            have = 0
        with open(part, "ab" if have else "wb") as out:
            try:
                while chunk := r.read(CHUNK):
                    out.write(chunk)
            except (OSError, http.client.HTTPException) as exc:
                raise PullError(f"download interrupted at {out.tell()} of {channel.size} bytes ({exc}); "
                                "run the pull again to resume") from exc
    size = part.stat().st_size
    if size < channel.size:
        raise PullError(f"download interrupted at {size} of {channel.size} bytes; run the pull again to resume")
    digest = hashlib.sha256()
    with open(part, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    if size != channel.size or digest.hexdigest() != channel.sha256:
        part.unlink()
        raise PullError(f"{channel.file} does not match the channel's size and sha256; the download was discarded")
    os.replace(part, done)
    return done


def check_is_channel_bundle(path: Path, channel: Channel) -> Manifest:
    manifest = Manifest.from_bytes(read_manifest(path)[0])
    if (manifest.name, manifest.version) != (channel.name, channel.version):
        raise PullError(f"{path.name} holds {manifest.name} v{manifest.version}, the channel says "
                        f"{channel.name} v{channel.version}")
    return manifest
