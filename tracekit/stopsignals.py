"""Stop signals (SIGINT, SIGTERM, SIGHUP) from the console script's first line to the process's exit.

:func:`note_early` notes them while the command line is imported, :func:`install_early` makes them raise
:class:`StopSignal`, and :class:`StopRequests` lets a command that must clean up take them over without
ever raising; docs/recorder.md ("Safety") tells the whole story.
"""

from __future__ import annotations

import os
import signal

__all__ = ["STOP_SIGNALS", "StopSignal", "StopRequests", "note_early", "install_early"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignal(BaseException):
    """A stop signal that arrived where nothing needed cleaning up; ``exit_code`` is 128 + the signal
    number. A BaseException but not a KeyboardInterrupt: no ``except Exception`` on its way swallows it,
    and typer does not turn it into a silent exit 130 (a command that wants Ctrl-C as KeyboardInterrupt
    installs its own handler, as ``top`` does)."""

    def __init__(self, signum: int, message: str | None = None):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")


def _raise_stop(signum: int, _frame: object) -> None:
    raise StopSignal(signum)


_noted: list[int] = []  # stop signals that came between note_early() and install_early()


def _note_stop(signum: int, _frame: object) -> None:
    _noted.append(signum)


def note_early() -> None:
    """Make every stop signal be noted, not raised (main thread only; run as the entry module is imported,
    where a raised signal would escape every ``try``), then unblock them: the console script starts Python
    with them blocked (:mod:`tracekit.launcher`), so one sent during Python's start-up is noted now."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _note_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def install_early() -> None:
    """Make every stop signal raise :class:`StopSignal` (main thread only; the console script's first act),
    and raise the first one :func:`note_early`'s handlers noted."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_stop)
    if _noted:
        raise StopSignal(_noted[0])


class StopRequests:
    """Notes stop signals while active (a context manager); never raises from a handler."""

    def __init__(self, notify_fd: int | None = None) -> None:
        self.signum: int | None = None
        self.count = 0
        self._notify_fd = notify_fd
        self._saved: dict[int, object] = {}

    def __enter__(self) -> "StopRequests":
        for sig in STOP_SIGNALS:
            try:
                self._saved[sig] = signal.signal(sig, self._note)
            except ValueError:  # not the main thread: the caller handles signals
                pass
        return self

    def _note(self, signum: int, _frame: object) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
        if self._notify_fd is None or self.count < 2:
            return
        text = ("stopping faster: the command gets no grace period; the probes are still detached and the "
                "capture closed" if self.count == 2 else
                f"still cleaning up; kill -9 {os.getpid()} abandons it (the next run reclaims what is left)")
        try:
            os.write(self._notify_fd, f"\ntracekit: {text}\n".encode())
        except OSError:
            pass

    @property
    def reason(self) -> str | None:
        """Name of the first stop signal (``"SIGINT"``), or None."""
        return signal.Signals(self.signum).name if self.signum is not None else None

    @property
    def hurry(self) -> bool:
        """True once a second stop signal arrived: finish the cleanup without waiting."""
        return self.count > 1

    def stopped_early(self, what: str) -> StopSignal:
        """The :class:`StopSignal` to raise when the first signal came before ``what`` began."""
        assert self.signum is not None
        return StopSignal(self.signum, f"stopped by {self.reason} before {what}")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()
