"""The traced command's standard output: shown to the user as it comes, and kept for the capture.

:class:`OutputTee` copies the command's stdout pipe, unchanged, to the recorder's own output and keeps
the first ``limit`` bytes; :meth:`OutputTee.finish` returns the manifest's ``command_output`` record
(docs/capture-format.md). The copier drains the pipe every :data:`DRAIN_INTERVAL_S` instead of waiting
on it, so the command's writes wake no recorder thread (one woken per line took a CPU from a selftest's
spinning threads and stretched its timed passes); a command that fills half the pipe is read at once.
"""

from __future__ import annotations

import fcntl
import os
import threading

__all__ = ["OutputTee", "OUTPUT_LIMIT", "DRAIN_INTERVAL_S"]

#: Bytes of the command's stdout kept in the capture's manifest.
OUTPUT_LIMIT = 1 << 20
#: Seconds between drains of the command's stdout: how late its output may reach the user.
DRAIN_INTERVAL_S = 0.05
#: The pipe's size asked for (the kernel's default is 64 KiB; ``fs.pipe-max-size`` caps it).
PIPE_BYTES = 1 << 20


class OutputTee:
    """Copy a command's stdout to ``dest_fd`` and keep it (see the module docstring)."""

    def __init__(self, dest_fd: int, limit: int = OUTPUT_LIMIT):
        self._read_fd, self.child_fd = os.pipe()
        try:
            self._pipe_bytes = fcntl.fcntl(self._read_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:  # above this user's limit: the default size
            self._pipe_bytes = fcntl.fcntl(self._read_fd, fcntl.F_GETPIPE_SZ)
        os.set_blocking(self._read_fd, False)
        self._dest_fd: int | None = dest_fd
        self._limit = limit
        self._kept = bytearray()
        self._total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracekit-stdout", daemon=True)
        self._thread.start()

    def child_started(self) -> None:
        """Close the recorder's copy of the write end (the child holds its own), so its exit ends the file."""
        if self.child_fd >= 0:
            os.close(self.child_fd)
            self.child_fd = -1

    def _run(self) -> None:
        while True:
            read, ended = self._drain()
            if ended:
                return
            if read >= self._pipe_bytes // 2:  # a command that prints fast: read on at once
                if self._stop.is_set():
                    return
            elif self._stop.wait(DRAIN_INTERVAL_S):
                self._drain()  # what came before the stop
                return

    def _drain(self) -> tuple[int, bool]:
        """Read what the pipe holds now: (bytes read, end of file seen)."""
        read = 0
        while True:
            try:
                data = os.read(self._read_fd, 65536)
            except BlockingIOError:
                return read, False
            if not data:
                return read, True
            read += len(data)
            self._total += len(data)
            room = self._limit - len(self._kept)
            if room > 0:
                self._kept += data[:room]
            self._forward(data)

    def _forward(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self._dest_fd is not None:
            try:
                view = view[os.write(self._dest_fd, view):]
            except InterruptedError:
                continue
            except OSError:
                self._dest_fd = None

    def finish(self, timeout: float = 2.0) -> dict:
        """Wait for end of file (at most ``timeout`` s), release the pipe, return the manifest record."""
        self.child_started()
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join()
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1
        return {"stdout": bytes(self._kept).decode("utf-8", errors="replace"), "bytes": self._total,
                "dropped_bytes": self._total - len(self._kept)}
