"""``tracekit top``: the command line of the live per-VM view.

Watches the VMs ``-p`` names (matched as ``record --pid`` matches) or every KVM VM holder (rescanned
every 5 s), reads the counters once per ``-i`` seconds and redraws the view; ``q`` quits, ``s`` cycles
the sort key, ``--once [--json]`` prints one interval (docs/cli-json/top.md). On exit it prints the
whole run's totals per VM, like bcc's tools.
"""

from __future__ import annotations

import json
import math
import os
import select
import shutil
import signal
import sys
import termios
import time
import tty
from typing import Any, List, Optional

import typer

from tracekit.capabilities import recording_blockers
from tracekit.errors import MissingCapability, UsageError
from tracekit.host import Host, tracefs_root
from tracekit.recorder.target import ThreadWatch, kvm_processes, resolve_targets
from tracekit.top.sources import open_source
from tracekit.top.view import SORT_KEYS, make_view, render_text, sort_vms, summary_table, view_json

__all__ = ["register", "top_command"]

_HELP = """Live per-VM and per-vCPU view of KVM MMU work, counted in the kernel.

Shows, per VM and per vCPU thread, over each interval: guest page-table walks/s and their depth, write-protect faults/s, SPTE installs/s, huge-page splits and zaps/s, mmu_lock (spinning rwlock) waits by mode with their total wait, dirty-log GET/CLEAR ioctls with p50/p99 latency (log2 histograms, within a factor of 2) and the share of time each vCPU spends in KVM_RUN. Watches every process holding a KVM VM unless -p names some.

Keys: q quits, s cycles the sort key. The whole run's totals are printed on exit.

Examples:

  tracekit top

  tracekit top -p qemu -i 2 -s wp

  tracekit top --once --json | jq '.vms[] | {pid, walks_s}'
"""


_RESCAN_S = 5.0  # scanning every process's fds for KVM VMs costs tens of ms: not every interval


class _Keys:
    """Single keys from a terminal's stdin (cbreak mode, restored by :meth:`close`); none otherwise."""

    def __init__(self) -> None:
        self._saved = None
        self._fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
        if self._fd is not None:
            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)

    def wait(self, seconds: float) -> str | None:
        """The first key typed within ``seconds`` (None when none; sleeps the whole time without a tty)."""
        if self._fd is None:
            time.sleep(seconds)
            return None
        ready, _, _ = select.select([self._fd], [], [], seconds)
        return os.read(self._fd, 1).decode(errors="replace") if ready else None

    def close(self) -> None:
        if self._saved is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None


class _Stop:
    """Ctrl-C, SIGTERM and SIGHUP end the view like ``q`` (as a KeyboardInterrupt the loop catches)."""

    def __init__(self) -> None:
        self.requested = False
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> "_Stop":
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, _signum: int, _frame: Any) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def _watched(specs: list[str]) -> list[dict]:
    targets = resolve_targets(specs) if specs else kvm_processes()
    return [t.to_json() for t in targets]


def top_command(
    pid: List[str] = typer.Option(
        [], "--pid", "-p", help="VM to watch: a pid, a process name or unique prefix, or a QEMU -name guest name. "
        "Repeatable. Default: every process holding a KVM VM (--all-vms)."),
    all_vms: bool = typer.Option(False, "--all-vms", help="Watch every process holding a KVM VM, also with -p (the "
                                 "default without -p)."),
    interval: float = typer.Option(1.0, "--interval", "-i", help="Seconds between refreshes."),
    sort: str = typer.Option("walks", "--sort", "-s", help="Sort key: walks, wp, spte, splits, zaps, lock, run, "
                             "get, clear or pid."),
    once: bool = typer.Option(False, "--once", help="Print one interval and exit."),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-n", help="Stop after this many intervals."),
    json_out: bool = typer.Option(False, "--json", help="With --once: print the interval as JSON (docs/cli-json/top.md)."),
    backend: str = typer.Option("auto", "--backend", help="bcc (counts in the kernel), tracefs (raw buffers) or auto."),
) -> None:
    if not (interval > 0 and math.isfinite(interval)):  # NaN too
        raise UsageError(f"--interval must be a positive, finite number of seconds, not {interval:g}")
    if sort not in SORT_KEYS:
        raise UsageError(f"unknown sort key {sort!r} (use {', '.join(SORT_KEYS)})")
    if json_out and not once:
        raise UsageError("--json needs --once (one interval as one JSON document)")
    if iterations is not None and iterations <= 0:
        raise UsageError("--iterations must be positive")
    blockers = recording_blockers(backend)
    if blockers:  # before /proc: another user's file descriptors are unreadable, its VMs invisible
        raise MissingCapability("cannot watch VMs as this user: " + "; ".join(blockers))
    specs = [] if all_vms else list(pid)
    vms = _watched(specs)
    if not vms:
        raise UsageError("no process holds a KVM VM (no anon_inode:kvm-vm file descriptor in /proc/*/fd)")
    tracefs = tracefs_root()
    source = open_source(backend, Host(tracefs), tracefs)
    keys = None
    out = sys.stdout
    live = out.isatty() and not once
    every_vm: dict[int, dict] = {vm["pid"]: vm for vm in vms}
    threads = ThreadWatch(list(every_vm), recheck_s=_RESCAN_S)  # names of new threads read once, not every interval
    try:
        source.watch({vm["pid"] for vm in vms})
        first = previous = source.read()
        if not once and not json_out:
            note = f" ({source.note})" if source.note else ""
            typer.echo(f"Watching {len(vms)} VM(s) with {source.name}{note}; refreshing every {interval:g} s.",
                       err=True)
        keys = _Keys() if live else None
        shown = 0
        next_scan = time.monotonic() + _RESCAN_S
        with _Stop():
            try:
                while True:
                    key = keys.wait(interval) if keys is not None else (time.sleep(interval) or None)
                    current = source.read()
                    threads.refresh()
                    view = sort_vms(make_view(previous, current, vms, threads.vcpus()), sort)
                    previous = current
                    shown += 1
                    if once and json_out:
                        typer.echo(json.dumps(view_json(view, backend=source.name, sort=sort), sort_keys=True))
                        return
                    size = shutil.get_terminal_size((120, 40))
                    text = render_text(view, backend=source.name, sort=sort, width=size.columns,
                                       height=size.lines - 1 if live else None)
                    out.write(("\033[H\033[2J" + text + "\n") if live else (text + "\n\n"))
                    out.flush()
                    if once or key == "q" or (iterations is not None and shown >= iterations):
                        break
                    if key == "s":
                        names = list(SORT_KEYS)
                        sort = names[(names.index(sort) + 1) % len(names)]
                    if not specs and time.monotonic() >= next_scan:  # --all-vms: VMs come and go
                        next_scan = time.monotonic() + _RESCAN_S
                        vms = _watched(specs)
                        every_vm.update({vm["pid"]: vm for vm in vms})
                        threads.follow(list(every_vm))
                        source.watch({vm["pid"] for vm in vms})
            except KeyboardInterrupt:
                pass
        if keys is not None:
            keys.close()
        last = source.read()
        threads.refresh(full=True)
        typer.echo(summary_table(first, last, sorted(every_vm.values(), key=lambda vm: vm["pid"]), threads.vcpus(),
                                 width=shutil.get_terminal_size((120, 40)).columns))
    finally:
        if keys is not None:
            keys.close()
        source.close()


def register(app: typer.Typer) -> None:
    """Add ``tracekit top`` to the root app."""
    app.command("top", help=_HELP)(top_command)
