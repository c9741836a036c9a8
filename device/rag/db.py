"""One way to open the documents database: sqlite-vec and FTS5 loaded, WAL, foreign keys on.

Some Pythons (pyenv builds among them) ship an ``sqlite3`` that cannot load extensions, and old
SQLites lack features vec0 relies on. ``connect`` uses the standard library when it can load
extensions and falls back to the packaged SQLite of ``sqlean.py`` otherwise. Both expose the
DB-API of ``sqlite3``, so callers never care which one they got.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import ModuleType
from typing import Any

import sqlite_vec

from phibox.device.errors import DatabaseError

Connection = Any
"""A DB-API connection from ``sqlite3`` or ``sqlean`` (same interface, different classes)."""

BUSY_TIMEOUT_MS = 5000


def sqlite_module() -> ModuleType:
    """The SQLite binding to use: the standard library if it can load extensions, else sqlean."""
    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3
    try:
        import sqlean
    except ImportError as exc:
        raise DatabaseError(
            "this Python's sqlite3 cannot load extensions and sqlean.py is not installed: "
            "install phibox with its `device` extra (pip install 'phibox[device]')"
        ) from exc
    return sqlean


def connect(path: Path | str, *, readonly: bool = False) -> Connection:
    """Open (creating if needed) a SQLite database with sqlite-vec and FTS5 ready to use.

    The connection is in WAL mode with foreign keys on and a busy timeout, so a reader and the
    single writer of the device do not block each other.
    """
    module = sqlite_module()
    target = Path(path)
    if readonly:
        uri, is_uri = f"file:{target}?mode=ro", True
    else:
        if not target.parent.is_dir():
            raise DatabaseError(f"{target.parent} does not exist: create it or choose another --db")
        uri, is_uri = str(target), False
    try:
        conn = module.connect(uri, uri=is_uri, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    except module.Error as exc:
        raise DatabaseError(f"cannot open {target}: {exc}") from exc
    try:
        _load_vec(conn)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        if not readonly:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise DatabaseError(f"{target}: could not switch to WAL mode (got {mode})")
        check_features(conn)
    except Exception:
        conn.close()
        raise
    return conn


def _load_vec(conn: Connection) -> None:
    conn.enable_load_extension(True)
    try:
        sqlite_vec.load(conn)
    finally:
        conn.enable_load_extension(False)


def check_features(conn: Connection) -> None:
    """Fail loudly if vec0 or FTS5 is missing rather than at the first query."""
    try:
        conn.execute("SELECT vec_version()").fetchone()
    except Exception as exc:
        raise DatabaseError(f"sqlite-vec did not load: {exc}") from exc
    options = {row[0] for row in conn.execute("PRAGMA compile_options")}
    if "ENABLE_FTS5" not in options:
        raise DatabaseError("this SQLite was built without FTS5; install phibox's `device` extra")


def sqlite_version(conn: Connection) -> tuple[int, ...]:
    """The SQLite library version of this connection, e.g. (3, 50, 4)."""
    return tuple(int(p) for p in conn.execute("SELECT sqlite_version()").fetchone()[0].split("."))
