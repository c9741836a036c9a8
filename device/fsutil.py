"""Durable file writes, used by every stage: a file is either its old bytes or its new ones.

``atomic_write`` writes beside the target, fsyncs, renames over it and fsyncs the folder, so a
crash or power cut at any point leaves one complete version. ``fsync_dir`` makes a rename or an
unlink in a folder durable.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames, new and removed files) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file's bytes to disk."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace path with data in one step; the file has the given mode from its first byte."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
