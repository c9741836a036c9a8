"""The first pass of a vector search: Hamming distance over every vector's sign bits, in memory.

sqlite-vec stores the bits (``vec_quantize_binary``, 48 bytes for a 384-d vector) but its KNN over
them costs more than the distances: 42 ms for 200 candidates out of 100k chunks, against 16 ms for
exact numpy on the floats. Held as one numpy array (4.8 MB at 100k chunks) the same scan takes a
few milliseconds. The array is read again when the database changed since it was read (another
connection committed, or this one wrote), so a search never misses a chunk an ingest added.
"""

from __future__ import annotations

import numpy as np

from phibox.device.rag import db


class BitScan:
    """One connection's copy of a vector table's sign bits."""

    def __init__(self) -> None:
        self._key: tuple[str, int, int] | None = None
        self._ids = np.zeros(0, dtype=np.int64)
        self._codes = np.zeros((0, 1), dtype=np.uint8)
        self._word: type[np.unsignedinteger] = np.uint8

    def _load(self, conn: db.Connection, table: str) -> None:
        key = (table, conn.execute("PRAGMA data_version").fetchone()[0], conn.total_changes)
        if key == self._key:
            return
        rows = conn.execute(f"SELECT rowid, coarse FROM {table}").fetchall()
        self._ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        width = len(rows[0][1]) if rows else 1
        self._word = np.uint64 if width % 8 == 0 else np.uint8  # popcount 8 bytes at a time where it can
        words = width // np.dtype(self._word).itemsize
        self._codes = np.frombuffer(b"".join(r[1] for r in rows), dtype=self._word).reshape(len(rows), words)
        self._key = key

    def candidates(self, conn: db.Connection, table: str, vector_blob: bytes, n: int) -> list[int]:
        """The n chunk ids whose bits are nearest (Hamming) to the vector's, in no particular order."""
        self._load(conn, table)
        if len(self._ids) <= n:
            return self._ids.tolist()
        bits = np.frombuffer(conn.execute("SELECT vec_quantize_binary(?)", (vector_blob,)).fetchone()[0],
                             dtype=self._word)
        distances = np.bitwise_count(self._codes ^ bits).sum(axis=1, dtype=np.int32)
        return self._ids[np.argpartition(distances, n)[:n]].tolist()
