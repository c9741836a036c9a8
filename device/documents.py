"""The one owner of documents.db: every write goes through ``Documents``, one writer at a time.

Ingesting, deleting, re-indexing a folder, re-embedding for a new embedder and adopting a
bundle's prebuilt index all take the writer lock: an advisory ``flock`` on ``documents.db.lock``
beside the database, so it holds across processes (a `phibox ingest` on the shell while the
server re-indexes waits, or is told the index is busy) and across threads alike.

Readers (every search) use one long-lived read-only connection per thread, with sqlite-vec loaded
once; a connection notices when the file was replaced (a re-embed or an adopted index swaps the
file whole) and reopens on the new one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from phibox.device.config import EngineConfig
from phibox.device.errors import PhiboxError
from phibox.device.fsutil import fsync_dir, fsync_file
from phibox.device.rag import db
from phibox.device.rag.embedder import OnnxEmbedder
from phibox.device.rag.ingest import IngestReport, fill_missing_vectors, ingest
from phibox.device.rag.store import DocumentStore


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
        """Rebuild every vector with embedder in a copy, then swap the copy in: searches keep the
        old file (keyword search) until the new one is complete. Returns the chunks embedded."""
        tmp = self.path.with_name(self.path.name + ".reembed")
        with self.writer_lock():
            try:
                tmp.unlink(missing_ok=True)
                source, target = db.connect(self.path), db.connect(tmp)
                source.backup(target)
                source.close()
                target.close()
                store = DocumentStore.open(tmp)
                try:
                    store.bind_embedder(embedder.spec, reembed=True)
                    n = fill_missing_vectors(store, embedder, cfg, progress=False)
                finally:
                    store.close()
                self._replace_with(tmp)
            finally:
                tmp.unlink(missing_ok=True)
        return n

    def adopt(self, prebuilt: Path) -> None:
        """Put a bundle's prebuilt index in place of this database (atomically)."""
        with self.writer_lock():
            self._replace_with(prebuilt)

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

    def _replace_with(self, source: Path) -> None:
        if self.path.is_file():  # the old file's WAL goes into it first; the new file starts its own
            conn = db.connect(self.path)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()
        staging = self.path.with_name(self.path.name + ".incoming")
        shutil.copyfile(source, staging)
        fsync_file(staging)
        for suffix in ("-wal", "-shm"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)
        os.replace(staging, self.path)
        fsync_dir(self.path.parent)

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
