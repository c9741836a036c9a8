"""Fleet channels: a static HTTP folder (any web server, object store or CDN) holding the latest
bundle and a signed ``channel.json`` naming it.

``channel.json`` says which channel it is (``plant7-line2``), which bundle (name, version, file,
size, sha256), a ``sequence`` that grows with every publish, and when it expires. It is signed with
the admin key in its own signing context (the signed bytes start with ``CONTEXT``), so a
channel signature can never pass as a bundle manifest's, nor the other way round.

A device pins the channel it follows at its first pull (``--channel``) and remembers the newest
sequence it has seen (``channel-pin.json`` in the state directory). It refuses a channel that is
foreign (another name), replayed (an older sequence: a mirror frozen on an old release), or
expired (the build box stopped re-signing it: ``phibox publish --renew``), each with a message
that says which. The download is bounded by the channel's size and an overall deadline, checks
Content-Length and Content-Range, and resumes an interrupted ``.part`` with an HTTP Range request.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from phibox.device.bundle import (
    BundleError,
    Manifest,
    canonical_json,
    load_private_key,
    load_trusted_keys,
    sha256_file,
    sign_manifest,
    verify_signature,
)
from phibox.device.errors import PhiboxError
from phibox.device.fsutil import atomic_write
from phibox.device.lifecycle.bundle_tar import read_manifest, verify_tar
from phibox.device.lifecycle.state import StateDir

CHANNEL, CHANNEL_SIG, PIN = "channel.json", "channel.sig", "channel-pin.json"
CONTEXT = b"phibox fleet channel v2\n"
SCHEMA = 2
CHUNK = 1 << 20
VALID_DAYS = 30.0
DEADLINE_S = 3600.0
READ_TIMEOUT_S = 60.0
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_TIME = "%Y-%m-%dT%H:%M:%SZ"


class PullError(PhiboxError):
    """The channel or its bundle could not be fetched or trusted."""


@dataclass(frozen=True)
class Channel:
    channel: str
    """The channel's own name (plant7-line2); a device follows one."""
    name: str
    """The bundle's name (plant7)."""
    version: int
    file: str
    size: int
    sha256: str
    sequence: int
    """Grows with every publish or renewal; a device never goes back to a smaller one."""
    published_at: str
    expires_at: str
    schema: int = SCHEMA

    def signed_bytes(self) -> bytes:
        return canonical_json(asdict(self))


def _when(stamp: str) -> datetime:
    return datetime.strptime(stamp, _TIME).replace(tzinfo=UTC)


def check_channel_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise PullError(f"channel name {name!r}: use 1-64 lower-case letters, digits, '.', '_' or '-' "
                        "(for example plant7-line2)")
    return name


# --- the build box ---------------------------------------------------------------------------
def _sign(channel: Channel, key: Ed25519PrivateKey, folder: Path) -> Channel:
    data = channel.signed_bytes()
    atomic_write(folder / CHANNEL_SIG, sign_manifest(CONTEXT + data, key))
    atomic_write(folder / CHANNEL, data)  # last: readers never see a channel whose file is missing
    return channel


def _published(folder: Path) -> Channel | None:
    """The channel already in folder (the publisher's own copy, read without a signature check)."""
    try:
        raw = json.loads((folder / CHANNEL).read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise PullError(f"{folder / CHANNEL} is not valid JSON ({exc}); remove it to start the channel anew") from exc
    if isinstance(raw, dict) and raw.get("schema") != SCHEMA:
        return None  # written by an older phibox: this publish replaces it
    return _parse(raw, str(folder / CHANNEL))


def _stamps(valid_days: float, previous: Channel | None) -> tuple[int, str, str]:
    if not 0 < valid_days <= 366:
        raise PullError(f"--valid-days {valid_days}: give more than 0 and at most 366 days")
    now = datetime.now(UTC)
    sequence = max(int(now.timestamp()), previous.sequence + 1 if previous else 0)
    return sequence, now.strftime(_TIME), (now + timedelta(days=valid_days)).strftime(_TIME)


def publish(bundle: Path, key_path: Path, folder: Path, channel_name: str | None = None,
            valid_days: float = VALID_DAYS) -> Channel:
    """Copy bundle into folder and sign a channel.json pointing at it (the bundle is checked first).
    A folder holds one channel: its name is given the first time and kept after."""
    key = load_private_key(key_path)
    manifest = verify_tar(bundle, [key.public_key()])  # a channel never names a bundle its key did not sign
    previous = _published(folder)
    if previous is not None and channel_name is not None and channel_name != previous.channel:
        raise PullError(f"{folder} publishes channel {previous.channel!r}; publishing {channel_name!r} there "
                        "would move every device off it: use another folder for another channel")
    name = channel_name or (previous.channel if previous else None)
    if name is None:
        raise PullError(f"{folder} holds no channel yet: name it with --channel (for example plant7-line2)")
    check_channel_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / bundle.name
    if target.resolve() != bundle.resolve():
        shutil.copyfile(bundle, target)
    sequence, now, expires = _stamps(valid_days, previous)
    channel = Channel(name, manifest.name, manifest.version, target.name, target.stat().st_size,
                      sha256_file(target)[1], sequence, now, expires)
    return _sign(channel, key, folder)


def renew(key_path: Path, folder: Path, valid_days: float = VALID_DAYS) -> Channel:
    """Sign the folder's channel again with a new sequence and expiry (a timer on the build box runs
    it, so devices can tell a live channel from a frozen copy)."""
    previous = _published(folder)
    if previous is None:
        raise PullError(f"{folder} holds no {CHANNEL}: publish a bundle there first")
    key = load_private_key(key_path)
    verify_tar(folder / previous.file, [key.public_key()])
    sequence, now, expires = _stamps(valid_days, previous)
    return _sign(replace(previous, sequence=sequence, published_at=now, expires_at=expires), key, folder)


# --- the device ------------------------------------------------------------------------------
def _parse(raw: object, where: str) -> Channel:
    if not isinstance(raw, dict):
        raise PullError(f"{where} must hold a JSON object")
    if raw.get("schema") != SCHEMA:
        raise PullError(f"{where} has schema {raw.get('schema')!r}, this phibox reads {SCHEMA}: re-publish the "
                        "channel with this phibox (`phibox publish BUNDLE --channel NAME ...`)")
    names = {f.name for f in fields(Channel)}
    try:
        channel = Channel(**{k: v for k, v in raw.items() if k in names})
        for stamp in (channel.published_at, channel.expires_at):
            _when(stamp)
    except (TypeError, ValueError) as exc:
        raise PullError(f"{where} is malformed: {exc}") from exc
    if "/" in channel.file or channel.file.startswith(".") or not channel.file.endswith(".phibox"):
        raise PullError(f"{where} names {channel.file!r}, not a plain .phibox file name")
    if not (isinstance(channel.size, int) and channel.size > 0 and isinstance(channel.version, int)
            and isinstance(channel.sequence, int) and re.fullmatch(r"[0-9a-f]{64}", str(channel.sha256))):
        raise PullError(f"{where} is malformed: size, version, sequence or sha256 has the wrong type")
    return channel


def _get(url: str, headers: dict[str, str] | None = None, timeout: float = READ_TIMEOUT_S):
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise PullError(f"cannot fetch {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise PullError(f"cannot fetch {url}: {exc}") from exc


def read_pin(state: StateDir) -> dict[str, object] | None:
    try:
        return json.loads((state.root / PIN).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise PullError(f"{state.root / PIN} is damaged ({exc}): delete it and pull with --channel NAME") from exc


def read_channel(base_url: str, state: StateDir, follow: str | None = None, repin: bool = False) -> Channel:
    """The channel at base_url, verified: trusted signature in the channel context, the channel this
    device follows (``follow``, pinned at the first pull), not older than one already seen, not
    expired. The pin is updated only once all of that holds."""
    base = base_url.rstrip("/")
    pin = read_pin(state)
    pinned = str(pin["channel"]) if pin else None
    if follow is not None:
        check_channel_name(follow)
        if pinned is not None and follow != pinned and not repin:
            raise PullError(f"this device follows channel {pinned!r} (pinned at its first pull), not {follow!r}: "
                            f"to move it, pull with --channel {follow} --repin")
    expected = follow or pinned
    if expected is None:
        raise PullError("which channel does this device follow? Give --channel NAME on the first pull "
                        "(it is remembered; PHIBOX_CHANNEL in /etc/phibox/phibox.env for the timer)")
    with _get(f"{base}/{CHANNEL}") as r:
        data = r.read(1 << 16)
    with _get(f"{base}/{CHANNEL_SIG}") as r:
        sig = r.read(1 << 16)
    try:
        verify_signature(CONTEXT + data, sig, load_trusted_keys([state.keys]), what=CHANNEL)
    except BundleError as exc:
        raise PullError(f"{base}/{CHANNEL} is not signed by a trusted key as a channel: {exc}") from exc
    try:
        channel = _parse(json.loads(data), f"{base}/{CHANNEL}")
    except ValueError as exc:
        raise PullError(f"{base}/{CHANNEL} is not valid JSON: {exc}") from exc
    if channel.channel != expected:
        raise PullError(f"{base} serves channel {channel.channel!r}, this device follows {expected!r}: "
                        "check the channel URL (PHIBOX_CHANNEL_URL)")
    seen = int(pin["sequence"]) if pin and pinned == expected else 0
    if channel.sequence < seen:
        raise PullError(f"{base}/{CHANNEL} is older than one this device already saw (sequence {channel.sequence} "
                        f"< {seen}, published {channel.published_at}): a stale mirror or a replay; nothing installed")
    now = datetime.now(UTC)
    if _when(channel.expires_at) < now:
        raise PullError(f"channel {channel.channel!r} expired at {channel.expires_at} (published "
                        f"{channel.published_at}; this device's clock says {now.strftime(_TIME)}): the build box "
                        "must re-sign it with `phibox publish --renew`, or this device's clock is wrong")
    atomic_write(state.root / PIN, json.dumps({"channel": channel.channel, "sequence": channel.sequence,
                                               "published_at": channel.published_at}).encode())
    return channel




def download(base_url: str, channel: Channel, state: StateDir, deadline_s: float = DEADLINE_S) -> Path:
    """The channel's bundle in state/incoming, resuming a previous partial download. Never reads more
    than the channel's size, and gives up (resumable) after deadline_s."""
    state.init()
    part = state.incoming / f"{channel.file}.part"
    done = state.incoming / channel.file
    have = part.stat().st_size if part.is_file() else 0
    if have > channel.size:
        part.unlink()
        have = 0
    if have < channel.size:
        _fetch_into(f"{base_url.rstrip('/')}/{channel.file}", part, have, channel.size, deadline_s)
    if sha256_file(part)[1] != channel.sha256:
        part.unlink()
        raise PullError(f"{channel.file} does not match the channel's sha256; the download was discarded: "
                        "run the pull again")
    part.replace(done)
    return done


def _fetch_into(url: str, part: Path, have: int, size: int, deadline_s: float) -> None:
    started = time.monotonic()
    with _get(url, {"Range": f"bytes={have}-"} if have else {}) as r:
        start = _check_range(r, url, have, size)
        length = r.headers.get("Content-Length")
        if length is not None and int(length) != size - start:
            raise PullError(f"{url}: the server sends {length} bytes, the channel says {size - start} remain: "
                            "the file on the server is not the one the channel names")
        with open(part, "r+b" if start else "wb") as out:
            out.seek(start)
            out.truncate()
            try:
                while (left := size - out.tell()) > 0:
                    if time.monotonic() - started > deadline_s:
                        raise PullError(f"download took longer than {deadline_s:.0f} s (at {out.tell()} of {size} "
                                        "bytes); run the pull again to resume")
                    chunk = r.read(min(CHUNK, left))
                    if not chunk:
                        break
                    out.write(chunk)
            except (OSError, http.client.HTTPException) as exc:
                raise PullError(f"download interrupted at {out.tell()} of {size} bytes ({exc}); "
                                "run the pull again to resume") from exc
            got = out.tell()
    if got < size:
        raise PullError(f"download interrupted at {got} of {size} bytes; run the pull again to resume")


def _check_range(r, url: str, have: int, size: int) -> int:
    """Where the response's body starts in the file: ``have`` for a matching 206, 0 for a plain 200."""
    if not have or r.status == 200:
        return 0  # no range asked, or the server ignored it: start over
    if r.status != 206:
        raise PullError(f"{url}: unexpected HTTP {r.status} to a range request")
    expected = f"bytes {have}-{size - 1}/{size}"
    if r.headers.get("Content-Range") != expected:
        raise PullError(f"{url}: the server answered range {r.headers.get('Content-Range')!r}, expected {expected!r}")
    return have


def check_is_channel_bundle(path: Path, channel: Channel) -> Manifest:
    manifest = Manifest.from_bytes(read_manifest(path)[0])
    if (manifest.name, manifest.version) != (channel.name, channel.version):
        raise PullError(f"{path.name} holds {manifest.name} v{manifest.version}, the channel says "
                        f"{channel.name} v{channel.version}")
    return manifest
