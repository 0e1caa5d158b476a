"""The capture writer's calls run in order on a thread of their own, so encoding never stalls a drain.

:class:`WriteQueue` hands each call (:meth:`submit`) to one thread: Parquet encoding and compression
release the GIL, so the recorder keeps draining the rings meanwhile. Memory stays bounded: ``submit``
blocks while more than ``max_rows`` rows wait. The first error of a call (disk full) is raised by the
next ``submit`` or by :meth:`close`, which waits for every call submitted.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from tracekit.capture import CaptureWriter

__all__ = ["WriteQueue"]


class WriteQueue:
    """Calls on ``writer``'s behalf, in order, on the ``tracekit-writer`` thread (see the module docstring)."""

    def __init__(self, writer: CaptureWriter, max_rows: int = 2_000_000):
        self._writer = writer
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0
        self._max_rows = max_rows
        self._cond = threading.Condition()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tracekit-writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, rows: int = 0) -> None:
        if self.error is not None:
            raise self.error
        with self._cond:
            while self._pending > self._max_rows and self.error is None:
                self._cond.wait(0.1)
            self._pending += rows
        self._queue.put((fn, args, rows))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args, rows = item
            try:
                if self.error is None:
                    fn(*args)
            except BaseException as error:  # handed to the recording thread
                self.error = error
            finally:
                with self._cond:
                    self._pending -= rows
                    self._cond.notify_all()

    def close(self) -> None:
        """Wait for every submitted call; raise the first error of one."""
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error
