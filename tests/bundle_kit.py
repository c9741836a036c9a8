"""Bundle files for lifecycle tests: real signed bundles, and hostile variants of them."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

from phibox.device.bundle import MANIFEST, SIGNATURE, Manifest, file_entry, load_private_key
from phibox.device.lifecycle import installer
from phibox.device.lifecycle.state import StateDir
from phibox.export.pack import write_bundle
from phibox.export.pipeline import roles_for


def resign(source_dir: Path, out: Path, key: Path, version: int, *, edit=None, min_device_version: str | None = None,
           scratch: Path, name: str | None = None) -> Path:
    """A copy of an unpacked bundle as a new signed bundle file with another version (edit(dir) may change files)."""
    work = scratch / f"resign-{version}-{out.stem}"
    shutil.copytree(source_dir, work, ignore=shutil.ignore_patterns(MANIFEST, SIGNATURE))
    if edit is not None:
        edit(work)
    old = Manifest.from_bytes((source_dir / MANIFEST).read_bytes())
    rels = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
    manifest = Manifest(
        name=name or old.name, version=version, created_at=old.created_at,
        min_device_version=min_device_version or old.min_device_version, base_model=old.base_model,
        files=tuple(file_entry(work, r, roles_for(r)) for r in rels), formats=old.formats, embedder=old.embedder,
        stop_tokens=old.stop_tokens, chat_template=old.chat_template, provenance=old.provenance, parity=old.parity)
    return write_bundle(work, manifest, load_private_key(key), out, scratch)


def tamper(source: Path, out: Path, *, drop: str | None = None, add: tuple[tarfile.TarInfo, bytes] | None = None,
           flip: str | None = None, no_signature: bool = False) -> Path:
    """Rewrite a bundle file member by member: drop one, add one, flip a byte in one, drop the signature."""
    with tarfile.open(source) as src, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else b""
            if member.name == drop or (no_signature and member.name == SIGNATURE):
                continue
            if member.name == flip:
                data = bytes([data[0] ^ 1]) + data[1:]
            dst.addfile(member, io.BytesIO(data))
            if add is not None and member.name == SIGNATURE:
                info, payload = add
                dst.addfile(info, io.BytesIO(payload))
    return out


def member(name: str, payload: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644):
    info = tarfile.TarInfo(name)
    info.size = len(payload) if kind == tarfile.REGTYPE else 0
    info.type, info.linkname, info.mode = kind, link, mode
    return info, payload if kind == tarfile.REGTYPE else b""


def device_state(root: Path, bundle_file: Path, trusted_pub: Path, config: Path | None = None) -> StateDir:
    """A device state directory that trusts trusted_pub and has bundle_file installed (no health check)."""
    state = StateDir(root, config=config).init()
    state.keys.mkdir(parents=True, exist_ok=True)
    shutil.copy(trusted_pub, state.keys / "admin.pub")
    installer.install(bundle_file, state)
    return state
