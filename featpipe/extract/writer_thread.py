"""HDF5 writes on a background thread, so that compute never waits on the disk."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

WriteChunk = Callable[[int, Any], int]  # (chunk index, the chunk's features) -> bytes written
_STOP = object()


class BackgroundWriter:
    """Calls ``write(chunk_index, features)`` on a thread, fed through a bounded queue.

    ``submit`` blocks only when ``max_pending`` chunks are waiting. An error in the writer
    stops it and is raised again in the caller (by the next ``submit`` or by ``close``).
    Leaving the ``with`` block waits for the chunks already submitted to be written, even when
    the block ends with an exception, so every computed chunk is kept. ``idle`` (e.g. the
    store's commit of its done flags) runs whenever no chunk came for ``idle_seconds``.
    """

    def __init__(
        self,
        write: WriteChunk,
        max_pending: int = 4,
        idle: Callable[[], None] | None = None,
        idle_seconds: float = 0.5,
    ):
        self._write = write
        self._idle = idle
        self._idle_seconds = idle_seconds
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self.bytes_written = 0
        self.chunks_written = 0
        self._thread = threading.Thread(target=self._run, name="featpipe-store-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._idle_seconds if self._idle else None)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if self._error is not None:
                continue  # keep draining so that a blocked submit() wakes up
            try:
                if item is None:
                    self._idle()
                else:
                    self.bytes_written += self._write(*item)
                    self.chunks_written += 1
            except BaseException as exc:  # handed to the main thread, never swallowed
                self._error = exc

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, chunk: int, features: Any) -> None:
        """Queue one chunk for writing; raises the writer's error if it has failed."""
        self._raise_error()
        while True:
            try:
                self._queue.put((chunk, features), timeout=0.5)
                return
            except queue.Full:
                self._raise_error()
                if not self._thread.is_alive():
                    raise RuntimeError("The store writer thread stopped unexpectedly.") from None

    def close(self) -> None:
        """Write what is queued, stop the thread, and raise the writer's error if any."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._raise_error()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # Already failing: still finish the queued chunks, but let the first error propagate.
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        if self._error is not None and exc is not None and exc is not self._error:
            exc.add_note(f"The store writer failed too: {self._error!r}")
