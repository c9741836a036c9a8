"""The SQLite helper: a real file with sqlite-vec and FTS5, WAL and foreign keys, on this Python."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from phibox.device.errors import DatabaseError
from phibox.device.rag import db


def vec(*xs: float) -> bytes:
    return struct.pack(f"{len(xs)}f", *xs)


def test_vec0_knn_and_fts5_work_on_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "docs.db"
    conn = db.connect(path)
    conn.execute("CREATE VIRTUAL TABLE chunk_vec USING vec0(embedding float[3])")
    conn.execute("CREATE VIRTUAL TABLE chunk_fts USING fts5(text)")
    rows = [(1, vec(1, 0, 0), "E42 low hydraulic pressure"), (2, vec(0, 1, 0), "labeller glue"),
            (3, vec(0.9, 0.1, 0), "press relief valve")]
    for rowid, v, text in rows:
        conn.execute("INSERT INTO chunk_vec(rowid, embedding) VALUES (?, ?)", (rowid, v))
        conn.execute("INSERT INTO chunk_fts(rowid, text) VALUES (?, ?)", (rowid, text))
    conn.commit()
    conn.close()

    again = db.connect(path)
    knn = again.execute(
        "SELECT rowid FROM chunk_vec WHERE embedding MATCH ? AND k = 2 ORDER BY distance", (vec(1, 0, 0),)
    ).fetchall()
    assert [r[0] for r in knn] == [1, 3]
    fts = again.execute("SELECT rowid FROM chunk_fts WHERE chunk_fts MATCH 'E42'").fetchall()
    assert fts == [(1,)]
    assert again.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert again.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_foreign_keys_are_enforced(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "fk.db")
    conn.execute("CREATE TABLE documents(id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE chunks(id INTEGER PRIMARY KEY, doc INTEGER NOT NULL REFERENCES documents(id))")
    with pytest.raises(db.sqlite_module().IntegrityError):
        conn.execute("INSERT INTO chunks(doc) VALUES (42)")


def test_readonly_connection_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    db.connect(path).execute("CREATE TABLE t(x)")
    ro = db.connect(path, readonly=True)
    assert ro.execute("SELECT vec_version()").fetchone()[0].startswith("v")
    with pytest.raises(db.sqlite_module().OperationalError):
        ro.execute("INSERT INTO t VALUES (1)")


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="does not exist: create it or choose another --db"):
        db.connect(tmp_path / "nope" / "docs.db")


def test_uses_a_sqlite_that_loads_extensions() -> None:
    module = db.sqlite_module()
    assert hasattr(module.Connection, "enable_load_extension")
