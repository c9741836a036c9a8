"""The one owner of documents.db: every write goes through ``Documents``, one writer at a time.

Ingesting, deleting, re-indexing a folder, re-embedding for a new embedder and merging a bundle's
prebuilt index (in place: the device's own manuals stay) all take the writer lock: an advisory
``flock`` on ``documents.db.lock`` beside the database, so it holds across processes (a `phibox
ingest` on the shell while the server re-indexes waits, or is told the index is busy) and across
threads alike.

Nothing replaces the file under open connections: a re-embed builds the new vectors beside the old
ones and switches in one transaction (rag/store.py), a bundle's index is merged document by
document. Readers (every search) use one long-lived read-only connection per thread, with
sqlite-vec loaded once; a connection reopens if the file was replaced from outside (a restore).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

from phibox.device.config import EngineConfig
from phibox.device.errors import PhiboxError
from phibox.device.faults import pause_at
from phibox.device.rag import db
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.ingest import IngestReport, ingest, reembed_all
from phibox.device.rag.store import ChunkRow, DocumentStore

BUNDLE_PREFIX = "bundle:"
"""Documents that came with a bundle's prebuilt index are stored under path "bundle:<source>"."""


def _read_chunks(store: DocumentStore, doc_id: int) -> tuple[list[ChunkRow], np.ndarray]:
    rows = store.vectors_of(doc_id)
    chunks = [chunk for chunk, _ in rows]
    vectors = np.stack([np.frombuffer(blob, dtype=np.float32) for _, blob in rows]) if rows else np.zeros((0, 1))
    return chunks, vectors


class DocumentsBusyError(PhiboxError):
    """Another writer (a re-index, an ingest, a re-embed) holds the documents database."""


class Documents:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self._local = threading.local()
        self._readers: list[DocumentStore] = []
        self._readers_lock = threading.Lock()

    # --- writing: one writer, across processes -----------------------------------------------
    @contextmanager
    def writer_lock(self, wait: bool = True) -> Iterator[None]:
        """Hold the writer lock; with wait=False a held lock is DocumentsBusyError at once."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError as exc:
                raise DocumentsBusyError(f"{self.path} is being written by another task (an ingest, re-index "
                                         "or re-embed): try again when it has finished") from exc
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    @contextmanager
    def writing(self, wait: bool = True) -> Iterator[DocumentStore]:
        """The database open for writing, under the writer lock."""
        with self.writer_lock(wait):
            store = DocumentStore.open(self.path)
            try:
                yield store
            finally:
                store.close()

    def ingest(self, paths: Iterable[Path], embedder: OnnxEmbedder, cfg: EngineConfig, *, prune: bool = False,
               reembed: bool = False, progress: bool = False, wait: bool = True,
               on_file: Callable[[int, int, str], None] | None = None) -> IngestReport:
        """Index the manuals under paths (see rag/ingest.py)."""
        with self.writing(wait) as store:
            return ingest(list(paths), store, embedder, cfg, prune=prune, reembed=reembed, progress=progress,
                          on_file=on_file)

    def delete(self, path: str) -> None:
        """Remove one document and its chunks; PhiboxError if it is not in the index."""
        with self.writing() as store:
            if store.document_hash(path) is None:
                raise PhiboxError(f"no document {path!r} in the index")
            store.delete_document(path)

    def reembed(self, embedder: OnnxEmbedder, cfg: EngineConfig) -> int:
        """Rebuild every vector with embedder beside the old ones, switched to in one transaction:
        searches use the old vectors (keyword search, for a new embedder) until it commits.
        Returns the chunks embedded."""
        with self.writing() as store:
            return reembed_all(store, embedder, cfg, progress=False)

    def adopt(self, prebuilt: Path, embedder: OnnxEmbedder, cfg: EngineConfig) -> dict[str, int]:
        """Merge a bundle's prebuilt index (made with embedder) into this database, in place: each of
        its documents replaces the documents of the same source; documents of an earlier bundle that
        this one no longer has go; the device's own manuals (ingested here, e.g. from /admin) stay.
        One transaction per document; one transaction for all of it when the bundle brings another
        embedder (the device's own manuals are re-embedded inside it, so no search sees a mix)."""
        bundle = DocumentStore.open(prebuilt, readonly=True)
        try:
            if bundle.embedder() != (embedder.spec.id, embedder.spec.dim):
                raise PhiboxError(f"{prebuilt} was embedded with {bundle.embedder()}, not with the bundle's "
                                  f"embedder {embedder.spec.id}: rebuild the bundle with `phibox export --docs`")
            docs = bundle.conn.execute("SELECT id, source, title, content_sha256, ingested_at FROM documents "
                                       "ORDER BY source").fetchall()
            sources = {source for _, source, *_ in docs}
            with self.writing() as store:
                new_embedder = store.embedder() not in (None, bundle.embedder())
                with store.transaction() if new_embedder else nullcontext():
                    for path, source in store.conn.execute("SELECT path, source FROM documents").fetchall():
                        shipped_again = source in sources
                        if shipped_again != path.startswith(BUNDLE_PREFIX):  # bundle docs are replaced in place
                            store.delete_document(path)
                    own = reembed_all(store, embedder, cfg, progress=False)
                    for doc_id, source, title, sha, at in docs:
                        chunks, vectors = _read_chunks(bundle, doc_id)
                        store.replace_document(BUNDLE_PREFIX + source, source, title, sha, at, chunks, vectors)
                        pause_at("adopt")
                return {"bundle_documents": len(docs), "reembedded_chunks": own}
        finally:
            bundle.close()

    def make_standalone(self) -> None:
        """One self-contained file (WAL folded in, rollback journal): to ship inside a bundle, whose
        folder is read-only on the device."""
        with self.writer_lock():
            conn = db.connect(self.path)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.execute("PRAGMA journal_mode = DELETE")
            finally:
                conn.close()
        self.lock_path.unlink(missing_ok=True)  # nothing beside the file: it is shipped, not written

    @contextmanager
    def feedback(self) -> Iterator[db.Connection]:
        """A connection for the feedback table (rag/feedback.py), schema up to date, each statement its
        own short transaction. It does not take the writer lock: a rating made while a re-index or
        ingest runs waits only for the document being committed (SQLite's busy timeout), not the job."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        store = DocumentStore.open(self.path)  # migrates; a migration commits in one short transaction
        try:
            yield store.conn
        finally:
            store.close()

    # --- reading: one long-lived connection per thread ---------------------------------------
    def exists(self) -> bool:
        return self.path.is_file()

    def reader(self) -> DocumentStore:
        """This thread's read-only connection, reopened if the file was replaced since."""
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = None
        store: DocumentStore | None = getattr(self._local, "store", None)
        if store is not None and getattr(self._local, "inode", None) == inode:
            return store
        if store is not None:
            self._forget(store)
        store = DocumentStore.open(self.path, readonly=True)
        self._local.store, self._local.inode = store, inode
        with self._readers_lock:
            self._readers.append(store)
        return store

    def embedder_id(self) -> tuple[str, int] | None:
        """(id, dim) of the embedder that made the vectors, or None (no database, no vectors)."""
        return self.reader().embedder() if self.exists() else None

    def listing(self) -> list[dict[str, object]]:
        """Every indexed document: path, source, title, chunk count, when it was ingested."""
        if not self.exists():
            return []
        rows = self.reader().conn.execute(
            "SELECT path, source, title, n_chunks, ingested_at FROM documents ORDER BY source").fetchall()
        return [{"path": r[0], "source": r[1], "title": r[2], "chunks": r[3], "ingested_at": r[4]} for r in rows]

    def counts(self) -> dict[str, int]:
        return self.reader().counts()

    def _forget(self, store: DocumentStore) -> None:
        with self._readers_lock:
            if store in self._readers:
                self._readers.remove(store)
        store.close()

    def close(self) -> None:
        """Close every thread's reader (at shutdown)."""
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for store in readers:
            store.close()
        self._local = threading.local()
