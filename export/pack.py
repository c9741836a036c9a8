"""Writing a bundle file: manifest.json and manifest.sig first, then every listed file, uncompressed
(weights do not compress), into a temporary file that is renamed into place only when complete."""

from __future__ import annotations

import io
import os
import tarfile
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from phibox.device.bundle import MANIFEST, SIGNATURE, Manifest, sign_manifest
from phibox.device.fsutil import fsync_dir, fsync_file


def _info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_bundle(files_root: Path, manifest: Manifest, key: Ed25519PrivateKey, out_path: Path, scratch: Path) -> Path:
    """Pack files_root's listed files with a signed manifest into out_path (atomic rename from scratch)."""
    mtime = int(datetime.strptime(manifest.created_at, "%Y-%m-%dT%H:%M:%SZ").timestamp())
    data = manifest.to_bytes()
    partial = scratch / (out_path.name + ".partial")
    with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, payload in ((MANIFEST, data), (SIGNATURE, sign_manifest(data, key))):
            tar.addfile(_info(name, len(payload), mtime), io.BytesIO(payload))
        for entry in manifest.files:
            with open(files_root / entry.path, "rb") as fh:
                tar.addfile(_info(entry.path, entry.size, mtime), fh)
    fsync_file(partial)
    os.rename(partial, out_path)
    fsync_dir(out_path.parent)
    return out_path
