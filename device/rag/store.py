"""The documents database: documents, chunks, an FTS5 index and sqlite-vec vectors in one file.

Schema changes go through ordered migrations. Vectors are tagged with the embedder that made them
(id and dimension in ``meta``); a database is never queried with another embedder.

The vectors live in a table pair named by ``meta`` (``vec_table``: ``chunk_vec`` at first, and
``chunk_vec_float`` beside it).
A new embedder's vectors are built in a new table beside the old one and switched to in the same
transaction that drops the old table (vec0 tables cannot be renamed): a reader sees the old
embedder's vectors or the new one's, never a mix, and a kill leaves the old ones.

sqlite-vec's KNN is a full scan: over 100k float vectors it took 64 ms, 11x numpy. So the vec0
table holds each vector's sign bits (``coarse bit[dim]``, 1/32 of the floats), and the floats sit
in a plain table beside it (``<vec table>_float``, keyed by chunk id). A search scans the bits by
Hamming distance (in memory, bitscan.py) for a few hundred candidates, then ranks those by their
exact float distance (``nearest``). A dimension that is not a multiple of 8 has no bits: its
search reads every float (exact).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phibox.device.errors import DatabaseError
from phibox.device.faults import pause_at
from phibox.device.rag import cjk, db, feedback
from phibox.device.rag.bitscan import BitScan
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


CJK_FTS = cjk.TABLE


def _create_vectors(conn: db.Connection, table: str, dim: int) -> None:
    """A generation of vectors: the vec0 table of sign bits and the plain table of floats."""
    if dim % 8 == 0:
        conn.execute(f"CREATE VIRTUAL TABLE {table} USING vec0(coarse bit[{dim}])")
    else:
        conn.execute(f"CREATE TABLE {table}(rowid INTEGER PRIMARY KEY)")  # no bits: marks the generation
    conn.execute(f"CREATE TABLE {table}_float(id INTEGER PRIMARY KEY, embedding BLOB NOT NULL)")


def _drop_vectors(conn: db.Connection, table: str) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"DROP TABLE IF EXISTS {table}_float")


def _insert_vector(conn: db.Connection, table: str, chunk_id: int, blob: bytes, dim: int) -> None:
    conn.execute(f"INSERT INTO {table}_float(id, embedding) VALUES (?, ?)", (chunk_id, blob))
    if dim % 8 == 0:
        conn.execute(f"INSERT INTO {table}(rowid, coarse) VALUES (?, vec_quantize_binary(?))", (chunk_id, blob))
    else:
        conn.execute(f"INSERT INTO {table}(rowid) VALUES (?)", (chunk_id,))


def _m2_coarse_bits(conn: db.Connection) -> None:
    """Schema 1 kept float vectors in vec0; they move to the bits-and-floats pair under a new name,
    switched to as an embedder switch is."""
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if "embedder_dim" not in meta:
        return
    old, dim = meta.get("vec_table", FIRST_VEC_TABLE), int(meta["embedder_dim"])
    new = _free_vec_table(conn, old)
    _create_vectors(conn, new, dim)
    for rowid, blob in conn.execute(f"SELECT rowid, embedding FROM {old}").fetchall():
        _insert_vector(conn, new, int(rowid), blob, dim)
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('vec_table', ?)", (new,))
    conn.execute(f"DROP TABLE {old}")


MIGRATIONS: list[Callable[[db.Connection], None]] = [_m1_initial, _m2_coarse_bits, cjk.create_index,
                                                     feedback.create_table]
"""Migration n (1-based) brings the schema from version n-1 to n. Append; never edit. 3: the CJK bigram
index (rag/cjk.py), 4: the technicians' ratings (rag/feedback.py)."""


def migrate(conn: db.Connection) -> int:
    """Apply pending migrations, each in its own transaction; returns the schema version."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > len(MIGRATIONS):
        raise DatabaseError(
            f"the documents database has schema {current}, newer than this phibox knows: upgrade phibox")
    for version in range(current + 1, len(MIGRATIONS) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:  # another connection (a rating beside an ingest) may have migrated since the first look
            if conn.execute("PRAGMA user_version").fetchone()[0] < version:
                MIGRATIONS[version - 1](conn)
                conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


def pack(vector: np.ndarray) -> bytes:
    return struct.pack(f"{len(vector)}f", *np.asarray(vector, dtype=np.float32))


FIRST_VEC_TABLE = "chunk_vec"
_VEC_TABLE = re.compile(r"chunk_vec(_[0-9]+)?")
OVERSAMPLE = 10
MIN_CANDIDATES = 200
"""The bit scan passes max(MIN_CANDIDATES, OVERSAMPLE * k) chunks to the exact ranking. Over 100k
chunks of real embeddings (`phibox bench`), 100 of them gave recall@10 0.97, 200 gave 0.986."""


def _free_vec_table(conn: db.Connection, old: str | None) -> str:
    """The next unused vector table name after old."""
    taken = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    n = int(old.rsplit("_", 1)[1]) + 1 if old and old != FIRST_VEC_TABLE else 2
    while f"chunk_vec_{n}" in taken:
        n += 1
    return f"chunk_vec_{n}"

ChunkText = tuple[int, str, str, str]
"""(chunk id, document title, heading, text): what a chunk's vector is computed from."""


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
        self.bits = BitScan()

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

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; nested uses join the outer one (so several changes commit as one)."""
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction: several queries see the same state, even across an embedder switch."""
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    def vec_table(self) -> str:
        """The name of the vec0 table holding the current embedder's vectors."""
        name = self.meta("vec_table") or FIRST_VEC_TABLE
        if not _VEC_TABLE.fullmatch(name):
            raise DatabaseError(f"{self.path}: meta names vector table {name!r}; the database is damaged")
        return name

    def bind_embedder(self, spec: EmbedderSpec) -> None:
        """Tie an empty database to spec; a database of a different embedder is EmbedderMismatchError
        (``switch_embedder`` rebuilds its vectors)."""
        current = self.embedder()
        if current == (spec.id, spec.dim):
            return
        if current is not None:
            raise EmbedderMismatchError(
                f"{self.path} was embedded with {current[0]} ({current[1]}-d) but the bundle's embedder is "
                f"{spec.id} ({spec.dim}-d): run `phibox ingest --reembed` to rebuild the vectors"
            )
        with self.transaction():
            _drop_vectors(self.conn, FIRST_VEC_TABLE)
            _create_vectors(self.conn, FIRST_VEC_TABLE, spec.dim)
            self._set_meta(embedder_id=spec.id, embedder_dim=str(spec.dim), vec_table=FIRST_VEC_TABLE)

    def switch_embedder(self, spec: EmbedderSpec, embed: Callable[[list[ChunkText]], np.ndarray],
                        batch: int = 256, on_batch: Callable[[int, int], None] | None = None) -> int:
        """Vectors for every chunk from spec's embedder, in a new table beside the old one, switched to
        (meta updated, old table dropped) in one transaction. Returns the chunks embedded; 0 when the
        database already uses spec. ``embed`` turns chunk texts into vectors."""
        if self.embedder() == (spec.id, spec.dim):
            return 0
        with self.transaction():
            old = self.vec_table() if self.embedder() is not None else None
            new = _free_vec_table(self.conn, old)
            _create_vectors(self.conn, new, spec.dim)
            rows = self.chunk_texts()
            for start in range(0, len(rows), batch):
                part = rows[start : start + batch]
                for (cid, *_), vector in zip(part, embed(part), strict=True):
                    _insert_vector(self.conn, new, cid, pack(vector), spec.dim)
                if on_batch is not None:
                    on_batch(start + len(part), len(rows))
                pause_at("reembed")
            self._set_meta(embedder_id=spec.id, embedder_dim=str(spec.dim), vec_table=new)
            if old is not None:
                _drop_vectors(self.conn, old)
        return len(rows)

    def _floats(self) -> tuple[str, str]:
        """(table, key column) of the float vectors: the plain table, or vec0 in a schema-1 file opened
        read-only (an index an older phibox wrote, e.g. in an older bundle)."""
        if self.conn.execute("PRAGMA user_version").fetchone()[0] < 2:
            return self.vec_table(), "rowid"
        return f"{self.vec_table()}_float", "id"

    def nearest(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(chunk id, L2 distance) of the k chunks nearest to a unit vector, nearest first: a Hamming
        scan of the sign bits (bitscan.py) for the candidates, ranked by their exact distance."""
        (floats_table, key), blob = self._floats(), pack(vector)
        if key == "rowid":  # schema 1, opened read-only: sqlite-vec's exact KNN over the floats in vec0
            return [(int(r), float(d)) for r, d in self.conn.execute(
                f"SELECT rowid, distance FROM {floats_table} WHERE embedding MATCH ? AND k = ? ORDER BY distance",
                (blob, k))]
        if len(vector) % 8:
            rows = self.conn.execute(f"SELECT id, embedding FROM {floats_table}").fetchall()
        else:
            candidates = self.bits.candidates(self.conn, self.vec_table(), blob, max(MIN_CANDIDATES, k * OVERSAMPLE))
            rows = self.conn.execute(f"SELECT id, embedding FROM {floats_table} WHERE id IN "
                                     f"({','.join('?' * len(candidates))})", candidates).fetchall()
        if not rows:
            return []
        floats = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        distances = np.linalg.norm(floats - np.asarray(vector, dtype=np.float32), axis=1)
        order = np.argsort(distances, kind="stable")[:k]
        return [(int(rows[i][0]), float(distances[i])) for i in order]

    def _set_meta(self, **values: str) -> None:
        for key, value in values.items():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def has_cjk_index(self) -> bool:
        """False for a database of schema < 3 opened read-only (an older bundle's index)."""
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (CJK_FTS,)).fetchone() is not None

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
        vec = self.vec_table()
        with self.transaction():
            self._delete(path)
            cur = self.conn.execute(
                "INSERT INTO documents(path, source, title, content_sha256, n_chunks, ingested_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", (path, source, title, sha256, len(chunks), ingested_at))
            doc_id = int(cur.lastrowid)
            for position, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True)):
                cid = self.conn.execute(
                    "INSERT INTO chunks(document_id, position, heading, page, text, tokens) VALUES (?, ?, ?, ?, ?, ?)",
                    (doc_id, position, chunk.heading, chunk.page, chunk.text, chunk.tokens)).lastrowid
                heading = " > ".join(p for p in (title, chunk.heading) if p)
                self.conn.execute("INSERT INTO chunk_fts(rowid, text, heading) VALUES (?, ?, ?)",
                                  (cid, chunk.text, heading))
                cjk.index_chunk(self.conn, int(cid), heading, chunk.text)
                _insert_vector(self.conn, vec, cid, pack(vector), len(vector))
            pause_at("ingest")
            return doc_id

    def delete_document(self, path: str) -> None:
        with self.transaction():
            self._delete(path)
            pause_at("delete")

    def _delete(self, path: str) -> None:
        vec = self.vec_table() if self.embedder() is not None else None
        ids = [r[0] for r in self.conn.execute(
            "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.path = ?", (path,))]
        for cid in ids:
            self.conn.execute("DELETE FROM chunk_fts WHERE rowid = ?", (cid,))
            self.conn.execute(f"DELETE FROM {CJK_FTS} WHERE rowid = ?", (cid,))
            if vec is not None:
                self.conn.execute(f"DELETE FROM {vec} WHERE rowid = ?", (cid,))
                self.conn.execute(f"DELETE FROM {vec}_float WHERE id = ?", (cid,))
        self.conn.execute("DELETE FROM documents WHERE path = ?", (path,))

    def paths_under(self, root: str) -> list[str]:
        prefix = root.rstrip("/") + "/"
        return [r[0] for r in self.conn.execute("SELECT path FROM documents WHERE substr(path, 1, ?) = ?",
                                                (len(prefix), prefix))]

    def chunk_texts(self) -> list[ChunkText]:
        """Every chunk's (id, title, heading, text), in id order."""
        rows = self.conn.execute(
            "SELECT c.id, d.title, c.heading, c.text FROM chunks c JOIN documents d ON d.id = c.document_id "
            "ORDER BY c.id")
        return [(int(cid), title, heading, text) for cid, title, heading, text in rows]

    def vectors_of(self, document_id: int) -> list[tuple[ChunkRow, bytes]]:
        """A document's chunks in order, each with its stored vector."""
        table, key = self._floats()
        rows = self.conn.execute(
            "SELECT c.heading, c.page, c.text, c.tokens, v.embedding FROM chunks c "
            f"JOIN {table} v ON v.{key} = c.id WHERE c.document_id = ? ORDER BY c.position",
            (document_id,)).fetchall()
        return [(ChunkRow(heading, page, text, tokens), blob) for heading, page, text, tokens, blob in rows]

    def counts(self) -> dict[str, int]:
        q = self.conn.execute
        out = {
            "documents": q("SELECT count(*) FROM documents").fetchone()[0],
            "chunks": q("SELECT count(*) FROM chunks").fetchone()[0],
            "fts": q("SELECT count(*) FROM chunk_fts").fetchone()[0],
        }
        out["vectors"] = q(f"SELECT count(*) FROM {self._floats()[0]}").fetchone()[0] if self.embedder() else 0
        return out
