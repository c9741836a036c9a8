"""Bundle files (``*.phibox``): an uncompressed tar whose first two members are manifest.json and
manifest.sig, followed by exactly the files the manifest lists.

Reading verifies as it streams: the signature before anything else is trusted, then every member's
type, path, size and sha256 against the manifest. Nothing is extracted here.

Before tarfile parses anything, the raw 512-byte headers are walked (type and size only, data
skipped by seeking): only regular files and small pax headers pass, so an unsigned file can't make
tarfile read a 200 MB pax header into memory, or smuggle in directories, links or devices.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from phibox.device.bundle import (
    MANIFEST,
    SIGNATURE,
    BundleError,
    FileEntry,
    Manifest,
    check_member_path,
    verify_signature,
)

MAX_MANIFEST_BYTES = 4 << 20
MAX_PAX_BYTES = 64 << 10
MAX_MEMBERS = 100_000
_BLOCK = 512
_REGULAR, _PAX = (b"0", b"\0"), (b"x", b"g")


def _field_size(raw: bytes) -> int:
    if raw[0] & 0x80:  # base-256, for sizes over 8 GB
        return int.from_bytes(raw[1:], "big")
    text = raw.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def check_raw_headers(path: Path) -> int:
    """Walk the tar's headers without tarfile: regular files and pax headers up to 64 KB only.
    Returns the number of members (pax headers included)."""
    with open(path, "rb") as fh:
        total = os.fstat(fh.fileno()).st_size
        pos = count = 0
        while True:
            fh.seek(pos)
            header = fh.read(_BLOCK)
            if len(header) < _BLOCK:
                raise BundleError(f"{path}: the bundle ends early (no end-of-archive marker); copy it again")
            if header == b"\0" * _BLOCK:
                return count
            kind = header[156:157]
            try:
                size = _field_size(header[124:136])
            except ValueError as exc:
                raise BundleError(f"{path}: a damaged tar header at byte {pos}; refusing the bundle") from exc
            if kind not in _REGULAR + _PAX:
                raise BundleError(f"{path}: a member of tar type {kind.decode(errors='replace')!r} at byte {pos}: "
                                  "bundles hold regular files only; refusing the bundle")
            if kind in _PAX and size > MAX_PAX_BYTES:
                raise BundleError(f"{path}: a {size}-byte pax header at byte {pos} (at most {MAX_PAX_BYTES}); "
                                  "refusing the bundle")
            pos += _BLOCK + -(-size // _BLOCK) * _BLOCK
            count += 1
            if pos > total:
                raise BundleError(f"{path}: the bundle ends early (truncated at {total} bytes); copy it again")
            if count > MAX_MEMBERS:
                raise BundleError(f"{path}: more than {MAX_MEMBERS} members; not a phibox bundle")


def _open(path: Path) -> tarfile.TarFile:
    check_raw_headers(path)
    try:
        return tarfile.open(path, mode="r:")
    except (OSError, tarfile.TarError) as exc:
        raise BundleError(f"{path}: not a phibox bundle (an uncompressed tar): {exc}") from exc


def open_bundle(path: Path) -> tarfile.TarFile:
    """A bundle file open for reading, its raw headers checked first."""
    return _open(path)


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo | None, name: str, path: Path) -> bytes:
    if member is None or member.name != name or not member.isreg():
        raise BundleError(f"{path}: {name} must be member {1 if name == MANIFEST else 2} of the bundle; "
                          "was it made with `phibox export`?")
    if member.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: {name} is {member.size} bytes, more than a manifest can be")
    fh = tar.extractfile(member)
    assert fh is not None
    return fh.read()


def read_manifest(path: Path) -> tuple[bytes, bytes]:
    """(manifest bytes, signature bytes) from the head of a bundle file, unverified."""
    with _open(path) as tar:
        manifest = _read_small(tar, tar.next(), MANIFEST, path)
        signature = _read_small(tar, tar.next(), SIGNATURE, path)
    return manifest, signature


def check_member(member: tarfile.TarInfo, path: Path) -> str:
    """A member's safe relative path, or an error naming what is wrong with it."""
    name = member.name
    check_member_path(name)
    if member.issym() or member.islnk():
        raise BundleError(f"{path}: {member.name} is a link; bundles hold regular files only")
    if not member.isreg():
        raise BundleError(f"{path}: {member.name} is a device, fifo or other special file; refusing the bundle")
    if member.mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX):
        raise BundleError(f"{path}: {member.name} has setuid/setgid/sticky bits; refusing the bundle")
    return name


def verify_tar(path: Path, trusted: Sequence[Ed25519PublicKey]) -> Manifest:
    """Verify a bundle file end to end without extracting it; returns its manifest."""
    try:
        return _verify_stream(path, trusted)
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"{path}: the bundle ends early or is corrupt ({exc}); download it again") from exc


def listed_members(tar: tarfile.TarFile, manifest: Manifest, path: Path) -> Iterator[tuple[FileEntry, IO[bytes]]]:
    """The remaining members of a bundle tar, each checked (safe path, regular file, listed, once)
    and paired with its manifest entry; raises at the end if a listed file never came."""
    listed = {f.path: f for f in manifest.files}
    seen: set[str] = set()
    while (member := tar.next()) is not None:
        name = check_member(member, path)
        entry = listed.get(name)
        if entry is None:
            raise BundleError(f"{path}: {name} is not listed in the manifest; refusing the bundle")
        if name in seen:
            raise BundleError(f"{path}: {name} appears twice in the bundle; refusing it")
        seen.add(name)
        if member.size != entry.size:
            raise BundleError(f"{name}: {member.size} bytes, the manifest says {entry.size}; the bundle is damaged")
        fh = tar.extractfile(member)
        assert fh is not None
        yield entry, fh
    missing = sorted(set(listed) - seen)
    if missing:
        raise BundleError(f"{path}: {missing[0]} is listed in the manifest but missing (truncated download?)")


def _verify_stream(path: Path, trusted: Sequence[Ed25519PublicKey]) -> Manifest:
    with _open(path) as tar:
        manifest_bytes = _read_small(tar, tar.next(), MANIFEST, path)
        verify_signature(manifest_bytes, _read_small(tar, tar.next(), SIGNATURE, path), trusted)
        manifest = Manifest.from_bytes(manifest_bytes)
        for entry, fh in listed_members(tar, manifest, path):
            digest = hashlib.sha256()
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
            if digest.hexdigest() != entry.sha256:
                raise BundleError(f"{entry.path}: sha256 differs from the manifest; the file was altered or damaged")
    return manifest
