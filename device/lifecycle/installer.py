"""The one installer every bundle goes through (file, admin upload, fleet pull).

1. Signature first: manifest.json and manifest.sig are the first two tar members; nothing else is
   read before they verify against the device's trusted keys.
2. Version rules: newer than the active bundle (no replay, no downgrade unless an explicit admin
   rollback or --allow-downgrade); phibox itself must be new enough; enough free disk.
3. Unpack only regular files the manifest lists (absolute paths, '..', links, devices, setuid
   bits reject the whole bundle), hashing the bytes as they are written; never reopen a file
   after checking it. Into bundles/<v>.partial, then renamed to bundles/<v>.
4. Health-check the unpacked folder (the model loads and generates, retrieval answers), and only
   then swap the `current` symlink atomically: a crash or a restart at any point before the swap
   starts the old bundle, never an unverified one.

One install at a time, for every way in (CLI, upload, push, pull): a lock on ``install.lock`` in
the state directory, held across processes; staging folders have unique names and leftovers are
cleaned only under the lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import shutil
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from phibox.device import __version__
from phibox.device.bundle import (
    MANIFEST,
    SIGNATURE,
    BundleError,
    Manifest,
    load_trusted_keys,
    verify_signature,
    version_tuple,
)
from phibox.device.errors import PhiboxError
from phibox.device.faults import pause_at
from phibox.device.fsutil import fsync_dir
from phibox.device.lifecycle.bundle_tar import _read_small, listed_members, open_bundle
from phibox.device.lifecycle.state import StateDir


class InstallError(PhiboxError):
    """An install was refused or failed its health check; the active bundle is untouched."""


class InstallBusyError(InstallError):
    """Another install, activation or rollback is under way in the same state directory."""


LOCK_FILE = "install.lock"


@contextmanager
def install_lock(state: StateDir) -> Iterator[None]:
    """Hold the state directory's install lock (every process, every way in); busy is an error at once."""
    state.init()
    fd = os.open(state.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise InstallBusyError(f"another install, activation or rollback is under way in {state.root} "
                                   f"(pid {holder}): wait for it to finish, then try again") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@dataclass(frozen=True)
class InstallResult:
    version: int
    previous: int | None
    manifest: Manifest


HealthCheck = Callable[[Path], None]
"""Raises if the bundle in that folder cannot serve (model loads, generates, retrieval answers)."""


def check_disk(state: StateDir, needed: int) -> None:
    free = shutil.disk_usage(state.root).free
    if free < needed * 1.05 + (64 << 20):
        raise InstallError(f"not enough disk space in {state.root}: the bundle needs {needed / 1e6:.0f} MB, "
                           f"{free / 1e6:.0f} MB are free; remove old bundles or files first")


def check_versions(manifest: Manifest, active: int | None, allow_downgrade: bool) -> None:
    if version_tuple(manifest.min_device_version) > version_tuple(__version__):
        raise InstallError(f"{manifest.name} v{manifest.version} needs phibox {manifest.min_device_version} or "
                           f"newer; this device runs {__version__}: upgrade phibox first")
    if active is not None and manifest.version == active:
        raise InstallError(f"version {manifest.version} is already active (a replay); nothing to do")
    if active is not None and manifest.version < active and not allow_downgrade:
        raise InstallError(f"version {manifest.version} is older than the active {active}: refused. To go back, "
                           "use `phibox bundle rollback` or pass --allow-downgrade")


def unpack(path: Path, state: StateDir, *, allow_downgrade: bool = False) -> tuple[Manifest, Path]:
    """Verify and unpack a bundle file into bundles/<version>; returns the manifest and the folder."""
    trusted = load_trusted_keys([state.keys])
    if not path.is_file():
        raise InstallError(f"{path}: no such bundle file (a .phibox file from `phibox export`)")
    check_disk(state, path.stat().st_size)
    try:
        with open_bundle(path) as tar:
            manifest_bytes = _read_small(tar, tar.next(), MANIFEST, path)
            sig_bytes = _read_small(tar, tar.next(), SIGNATURE, path)
            verify_signature(manifest_bytes, sig_bytes, trusted)
            manifest = Manifest.from_bytes(manifest_bytes)
            check_versions(manifest, state.active_version(), allow_downgrade)
            staging = state.bundles / f"{manifest.version}.partial-{os.getpid()}-{secrets.token_hex(4)}"
            staging.mkdir()
            _extract_listed(tar, manifest, staging, path)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InstallError(f"{path}: the bundle is truncated or unreadable ({exc}); copy it again") from exc
    (staging / MANIFEST).write_bytes(manifest_bytes)
    (staging / SIGNATURE).write_bytes(sig_bytes)
    fsync_dir(staging)
    pause_at("unpacked")
    final = state.bundle_dir(manifest.version)
    if final.exists():
        shutil.rmtree(final)
    os.rename(staging, final)
    fsync_dir(state.bundles)
    return manifest, final


def _extract_listed(tar: tarfile.TarFile, manifest: Manifest, staging: Path, path: Path) -> None:
    for entry, source in listed_members(tar, manifest, path):
        target = staging / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        with open(target, "xb") as out:
            while chunk := source.read(1 << 20):
                digest.update(chunk)  # the bytes actually written, never re-read
                out.write(chunk)
                size += len(chunk)
                pause_at("unpacking")
            out.flush()
            os.fsync(out.fileno())
        if size != entry.size or digest.hexdigest() != entry.sha256:
            raise BundleError(f"{entry.path}: size or sha256 differs from the manifest; the bundle is damaged")


def install(path: Path, state: StateDir, *, health_check: HealthCheck | None = None, allow_downgrade: bool = False,
            keep: int = 2) -> InstallResult:
    """Verify and unpack a bundle file, health-check it, then make it the active one."""
    with install_lock(state):
        state.clean_partials()  # leftovers of a killed install; nobody else is installing now
        previous = state.active_version()
        try:
            manifest, _ = unpack(path, state, allow_downgrade=allow_downgrade)
        except PhiboxError as exc:
            state.clean_partials()
            state.record("install_refused", file=path.name, reason=str(exc))
            raise
        _check_then_swap(state, manifest.version, previous, health_check, reason="install")
        state.prune(keep)
    return InstallResult(manifest.version, previous, manifest)


def activate_version(state: StateDir, version: int, health_check: HealthCheck | None = None) -> None:
    """Make an installed version the active one (admin), health-checked first."""
    with install_lock(state):
        _check_then_swap(state, version, state.active_version(), health_check, reason="admin")


def rollback(state: StateDir, health_check: HealthCheck | None = None, why: str = "was rolled back by an admin") -> int:
    """Activate the newest installed version below the active one; the version left is blocked: a
    fleet pull does not bring it back until an admin allows it (`phibox bundle allow`)."""
    with install_lock(state):
        active, previous = state.active_version(), state.previous_version()
        if previous is None:
            raise InstallError(f"no older bundle is kept in {state.bundles} to roll back to")
        _check_then_swap(state, previous, active, health_check, reason="rollback")
        if active is not None:
            state.block(active, why)
    return previous


def allow(state: StateDir, version: int) -> bool:
    """An admin says a blocked version may be pulled again; False if it was not blocked."""
    with install_lock(state):
        return state.unblock(version)


def _check_then_swap(state: StateDir, version: int, previous: int | None, health_check: HealthCheck | None,
                     reason: str) -> None:
    """Health-check bundles/<version>, then swap `current` to it. Caller holds the install lock."""
    if health_check is not None:
        pause_at("health_check")
        try:
            health_check(state.bundle_dir(version))
        except Exception as exc:  # whatever breaks the new bundle, the active one stays
            if reason == "install":
                shutil.rmtree(state.bundle_dir(version), ignore_errors=True)
            state.record("health_check_failed", version=version, kept=previous,
                         error=f"{type(exc).__name__}: {exc}")
            state.block(version, f"failed its health check: {type(exc).__name__}: {exc}")
            raise InstallError(f"version {version} failed its health check ({exc}); "
                               f"{f'version {previous} stays active' if previous else 'no bundle is active'}"
                               ) from exc
    pause_at("before_swap")
    state.activate(version)
    state.unblock(version)  # installed or activated on purpose, and it passed: no longer blocked
    pause_at("after_swap")
    state.record("activated", version=version, previous=previous, reason=reason,
                 health="checked" if health_check is not None else "skipped")
