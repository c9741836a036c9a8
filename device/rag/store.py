"""The documents database: documents, chunks, an FTS5 index and sqlite-vec vectors in one file.

Schema changes go through ordered migrations. Vectors are tagged with the embedder that made them
(id and dimension in ``meta``); a database is never queried with another embedder.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phibox.device.errors import DatabaseError
from phibox.device.rag import db
from phibox.device.rag.embedder import EmbedderSpec


class EmbedderMismatchError(DatabaseError):
    """The database's vectors come from another embedder than the one in use."""


def _run_script(conn: db.Connection, script: str) -> None:
    """Execute statements one by one (executescript would commit the migration's transaction)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _m1_initial(conn: db.Connection) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE documents(
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL UNIQUE,        -- absolute path on the box that ingested it
            source TEXT NOT NULL,             -- what citations show: path relative to the ingest root
            title TEXT NOT NULL,
            content_sha256 TEXT NOT NULL,
            n_chunks INTEGER NOT NULL,        -- written with the chunks, in the same transaction
            ingested_at TEXT NOT NULL
        );
        CREATE TABLE chunks(
            id INTEGER PRIMARY KEY,
            document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            heading TEXT NOT NULL,
            page INTEGER,
            text TEXT NOT NULL,
            tokens INTEGER NOT NULL
        );
        CREATE INDEX chunks_by_document ON chunks(document_id, position);
        -- heading holds "title > heading path": a document's name matches every one of its chunks
        CREATE VIRTUAL TABLE chunk_fts USING fts5(text, heading, tokenize = 'porter unicode61');
        """
    )


MIGRATIONS: list[Callable[[db.Connection], None]] = [_m1_initial]
"""Migration n (1-based) brings the schema from version n-1 to n. Append; never edit."""


def migrate(conn: db.Connection) -> int:
    """Apply pending migrations, each in its own transaction; returns the schema version."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > len(MIGRATIONS):
        raise DatabaseError(
            f"the documents database has schema {current}, newer than this phibox knows: upgrade phibox")
    for version in range(current + 1, len(MIGRATIONS) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version - 1](conn)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except Exception:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


def pack(vector: np.ndarray) -> bytes:
    return struct.pack(f"{len(vector)}f", *np.asarray(vector, dtype=np.float32))


@dataclass(frozen=True)
class ChunkRow:
    heading: str
    page: int | None
    text: str
    tokens: int


class DocumentStore:
    """Open with ``DocumentStore.open(path)``; every write method is one transaction."""

    def __init__(self, conn: db.Connection, path: Path) -> None:
        self.conn, self.path = conn, path

    @classmethod
    def open(cls, path: Path, readonly: bool = False) -> DocumentStore:
        if readonly and not path.is_file():
            raise DatabaseError(f"{path} does not exist: ingest the manuals first with `phibox ingest`")
        conn = db.connect(path, readonly=readonly)
        conn.isolation_level = None  # explicit BEGIN/COMMIT: one transaction per document
        if not readonly:
            migrate(conn)
        return cls(conn, path)

    def close(self) -> None:
        self.conn.close()

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def embedder(self) -> tuple[str, int] | None:
        """(id, dim) of the embedder that made this database's vectors, if any."""
        emb_id, dim = self.meta("embedder_id"), self.meta("embedder_dim")
        return (emb_id, int(dim)) if emb_id and dim else None

    def bind_embedder(self, spec: EmbedderSpec, reembed: bool = False) -> bool:
        """Tie the database to spec, or fail on a different one. Returns True if vectors must be rebuilt."""
        current = self.embedder()
        if current == (spec.id, spec.dim):
            return False
        if current is not None and not reembed:
            raise EmbedderMismatchError(
                f"{self.path} was embedded with {current[0]} ({current[1]}-d) but the bundle's embedder is "
                f"{spec.id} ({spec.dim}-d): run `phibox ingest --reembed` to rebuild the vectors"
            )
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("DROP TABLE IF EXISTS chunk_vec")
            self.conn.execute(f"CREATE VIRTUAL TABLE chunk_vec USING vec0(embedding float[{spec.dim}])")
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('embedder_id', ?), ('embedder_dim', ?)",
                              (spec.id, str(spec.dim)))
            self.conn.execute("COMMIT")
        except Exception:
            self.conn.execute("ROLLBACK")
            raise
        return current is not None

    def check_embedder(self, spec: EmbedderSpec) -> None:
        """Before a query: the vectors must come from spec's embedder."""
        current = self.embedder()
        if current is None:
            raise DatabaseError(f"{self.path} holds no vectors yet: run `phibox ingest` first")
        if current != (spec.id, spec.dim):
            raise EmbedderMismatchError(
                f"{self.path} was embedded with {current[0]} ({current[1]}-d), the bundle uses {spec.id} "
                f"({spec.dim}-d): run `phibox ingest --reembed` before searching"
            )

    def document_hash(self, path: str) -> str | None:
        row = self.conn.execute("SELECT content_sha256 FROM documents WHERE path = ?", (path,)).fetchone()
        return row[0] if row else None

    def replace_document(self, path: str, source: str, title: str, sha256: str, ingested_at: str,
                         chunks: Sequence[ChunkRow], vectors: np.ndarray) -> int:
        """Insert or replace a document with all its chunks, text index rows and vectors, atomically."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self._delete(path)
            cur = self.conn.execute(
                "INSERT INTO documents(path, source, title, content_sha256, n_chunks, ingested_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", (path, source, title, sha256, len(chunks), ingested_at))
            doc_id = int(cur.lastrowid)
            for position, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True)):
                cid = self.conn.execute(
                    "INSERT INTO chunks(document_id, position, heading, page, text, tokens) VALUES (?, ?, ?, ?, ?, ?)",
                    (doc_id, position, chunk.heading, chunk.page, chunk.text, chunk.tokens)).lastrowid
                self.conn.execute("INSERT INTO chunk_fts(rowid, text, heading) VALUES (?, ?, ?)",
                                  (cid, chunk.text, " > ".join(p for p in (title, chunk.heading) if p)))
                self.conn.execute("INSERT INTO chunk_vec(rowid, embedding) VALUES (?, ?)", (cid, pack(vector)))
            self.conn.execute("COMMIT")
            return doc_id
        except Exception:
            self.conn.execute("ROLLBACK")
            raise

    def delete_document(self, path: str) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self._delete(path)
            self.conn.execute("COMMIT")
        except Exception:
            self.conn.execute("ROLLBACK")
            raise

    def _delete(self, path: str) -> None:
        ids = [r[0] for r in self.conn.execute(
            "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.path = ?", (path,))]
        for cid in ids:
            self.conn.execute("DELETE FROM chunk_fts WHERE rowid = ?", (cid,))
            self.conn.execute("DELETE FROM chunk_vec WHERE rowid = ?", (cid,))
        self.conn.execute("DELETE FROM documents WHERE path = ?", (path,))

    def paths_under(self, root: str) -> list[str]:
        prefix = root.rstrip("/") + "/"
        return [r[0] for r in self.conn.execute("SELECT path FROM documents WHERE substr(path, 1, ?) = ?",
                                                (len(prefix), prefix))]

    def chunks_without_vectors(self) -> list[tuple[int, str, str, str]]:
        """(id, title, heading, text) of chunks lacking a vector: after --reembed, or an interrupted rebuild."""
        have = {int(r[0]) for r in self.conn.execute("SELECT rowid FROM chunk_vec")}
        rows = self.conn.execute(
            "SELECT c.id, d.title, c.heading, c.text FROM chunks c JOIN documents d ON d.id = c.document_id "
            "ORDER BY c.id")
        return [(int(cid), title, heading, text) for cid, title, heading, text in rows if int(cid) not in have]

    def put_vectors(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """(Re)write vectors for existing chunks, in one transaction."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for cid, vector in zip(ids, vectors, strict=True):
                self.conn.execute("DELETE FROM chunk_vec WHERE rowid = ?", (cid,))
                self.conn.execute("INSERT INTO chunk_vec(rowid, embedding) VALUES (?, ?)", (cid, pack(vector)))
            self.conn.execute("COMMIT")
        except Exception:
            self.conn.execute("ROLLBACK")
            raise

    def counts(self) -> dict[str, int]:
        q = self.conn.execute
        out = {
            "documents": q("SELECT count(*) FROM documents").fetchone()[0],
            "chunks": q("SELECT count(*) FROM chunks").fetchone()[0],
            "fts": q("SELECT count(*) FROM chunk_fts").fetchone()[0],
        }
        has_vec = q("SELECT 1 FROM sqlite_master WHERE name = 'chunk_vec'").fetchone()
        out["vectors"] = q("SELECT count(*) FROM chunk_vec").fetchone()[0] if has_vec else 0
        return out
