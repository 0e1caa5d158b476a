"""What ``tracekit record`` tells its user: the banner, the live status line and the closing lines.

:class:`StatusLine` writes to a text stream (None: silent). The live line (events/s per table, lost
events, bytes written, redrawn in place) is shown only where :func:`live_status_wanted` says: on a
terminal that no traced command shares. :func:`banner` names the targets, backend, families and the
clock of ``--duration``; :func:`not_attached` lists what could not attach.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["StatusLine", "live_status_wanted", "banner", "not_attached", "targets_text"]


class StatusLine:
    """The banner, live status line and end summary (to a text stream)."""

    def __init__(self, stream: Any, interval: float, live: bool):
        self.stream = stream
        self.interval = interval
        self.live = live
        self.rows_by_family: dict[str, int] = {}
        self._last_rows: dict[str, int] = {}
        self._last_t = time.monotonic()
        self._printed = False

    def say(self, text: str) -> None:
        if self.stream is not None:
            if self._printed:
                self.stream.write("\n")
                self._printed = False
            self.stream.write(text + "\n")
            self.stream.flush()

    def count(self, family: str, rows: int) -> None:
        self.rows_by_family[family] = self.rows_by_family.get(family, 0) + rows

    def maybe_show(self, lost: int, written: Callable[[], int]) -> None:
        now = time.monotonic()
        if not self.live or self.stream is None or now - self._last_t < self.interval:
            return
        dt = now - self._last_t
        rates = " ".join(f"{name} {(n - self._last_rows.get(name, 0)) / dt:,.0f}/s"
                         for name, n in self.rows_by_family.items())
        self.stream.write(f"\r\033[K{rates or 'waiting for events'} | lost {lost} | written {written() / 1e6:.1f} MB")
        self.stream.flush()
        self._printed = True
        self._last_rows = dict(self.rows_by_family)
        self._last_t = now


def live_status_wanted(stream: Any, asked: bool | None, runs_command: bool) -> bool:
    """The live status line only on a terminal, and never beside a traced command's own output (it
    shares the terminal and would write into the middle of its lines): ``asked`` overrides."""
    if stream is None:
        return False
    if asked is not None:
        return asked
    return bool(getattr(stream, "isatty", lambda: False)()) and not runs_command


def targets_text(target: dict) -> str:
    """``pid 1234 (qemu-system-x86, guest vm1)`` for each recorded process."""
    vms = target.get("vms") or [{"pid": target["pids"][0], "comm": target["comm"], "name": target["name"]}]
    return ", ".join(f"pid {vm['pid']} ({vm['comm']}{', guest ' + vm['name'] if vm.get('name') else ''})" for vm in vms)


def banner(target: dict, backend_name: str, families: list[str], attached: list[str], output: Path,
           duration: float | None) -> str:
    return (f"Tracing {targets_text(target)} with {backend_name}: "
            f"{', '.join(families)} ({len(attached)} tracepoints) into {output}"
            + (f" for {duration:g} s of CLOCK_MONOTONIC from the moment every probe is armed" if duration else "")
            + ". Hit Ctrl-C to stop.")


def not_attached(failed: list[dict]) -> str:
    """Failures for the banner: a family that records nothing once, other probes one by one."""
    whole = {f["family"]: f["reason"] for f in failed if f["probe"].startswith("family:")}
    parts = [f"{name} ({reason})" for name, reason in whole.items()]
    parts += [f"{f['probe']} ({f['reason']})" for f in failed if f["family"] not in whole]
    return "; ".join(parts)
