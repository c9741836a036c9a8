"""The model slot: the one holder of the loaded model, reference-counted.

Every generation ``acquire``s the model and releases it when done. ``replace`` puts a new model in
the slot at once; the old one is closed when its last user releases it, exactly once, never while
a generation still runs on it. There is no polling and no moment at which a closed model can be
handed out: handing out and retiring happen under one lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from phibox.device.errors import PhiboxError
from phibox.device.runtime.backend import Backend


class NoModelError(PhiboxError):
    """The slot is empty: no model is loaded (still loading, failed, or being replaced)."""


@dataclass
class _Entry:
    backend: Backend
    users: int = 0
    retired: bool = False
    closed: bool = False
    draining: bool = False
    """A ``drain`` waits for the last user and closes the model itself."""


class ModelSlot:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)
        self._entry: _Entry | None = None
        self.generation = 0
        """Counts the models put in the slot: answers of one model are told from another's by it."""

    @property
    def backend(self) -> Backend | None:
        """The model in the slot now (for reading its name or context; generate through acquire)."""
        entry = self._entry
        return None if entry is None else entry.backend

    def users(self) -> int:
        """Generations holding the current model."""
        with self._lock:
            return 0 if self._entry is None else self._entry.users

    @contextmanager
    def acquire(self, wait_s: float = 0.0) -> Iterator[Backend]:
        """The current model, held until the block ends. An empty slot is NoModelError, after waiting
        up to wait_s for a model to be put in (a drained switch is loading the next one)."""
        with self._lock:
            if self._entry is None and wait_s > 0:
                self._released.wait_for(lambda: self._entry is not None, timeout=wait_s)
            entry = self._entry
            if entry is None:
                raise NoModelError("no model is loaded")
            entry.users += 1
        try:
            yield entry.backend
        finally:
            self._release(entry)

    def replace(self, backend: Backend | None) -> None:
        """Put backend in the slot (None empties it); the old model closes after its last user."""
        with self._lock:
            old, self._entry = self._entry, (None if backend is None else _Entry(backend))
            self.generation += 1
            close_now = old is not None and self._retire(old)
            self._released.notify_all()  # jobs waiting for a model
        if close_now:
            self._close(old)

    def close(self) -> None:
        """Empty the slot (the model closes once no generation holds it)."""
        self.replace(None)

    def drain(self) -> None:
        """Empty the slot, wait until no generation holds the model, and close it before returning:
        its memory is free when this returns (for a new model that does not fit beside it)."""
        with self._lock:
            entry, self._entry = self._entry, None
            if entry is None:
                return
            entry.retired = entry.draining = True
            while entry.users > 0:
                self._released.wait()
            if entry.closed:
                return
            entry.closed = True
        self._close(entry)

    def _retire(self, entry: _Entry) -> bool:
        entry.retired = True
        if entry.users == 0 and not entry.closed:
            entry.closed = True
            return True
        return False

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.users -= 1
            self._released.notify_all()
            close_now = entry.retired and not entry.draining and entry.users == 0 and not entry.closed
            if close_now:
                entry.closed = True
        if close_now:
            self._close(entry)

    def _close(self, entry: _Entry) -> None:
        entry.backend.close()
