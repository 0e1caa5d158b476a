"""tracefs backend of the function probes: ``kprobe_events`` lines and a private instance.

:class:`TracefsFuncProbes` defines one entry/return probe per resolved probe
(:mod:`tracekit.funcprobes.kallsyms`) with the fetch arguments of this kernel; a line the kernel
refuses is kept with its ``error_log`` reason, or, with ``strict``, fails the start when the probe
is not optional (never a silent pass). It records in its own instance (``mono`` clock, a ``hist``
trigger per hot probe), marks steps in ``trace_marker_raw``, saves the raw pages, formats and
histograms, and :meth:`~TracefsFuncProbes.close` leaves tracefs as found. Standard library only.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from tracekit.errors import ProbeLoadError
from tracekit.funcprobes.kallsyms import MODES
from tracekit.funcprobes.spec import TRACEFS_GROUP, kprobe_event_lines
from tracekit.host import TRACEFS

if TYPE_CHECKING:
    from tracekit.funcprobes.kallsyms import Resolution

__all__ = ["TracefsFuncProbes", "define_kprobes", "drain_pipe", "append_line"]



class TracefsFuncProbes:
    """kprobe_events definitions plus a private instance (see the module contract)."""

    def __init__(self, resolutions: list, tracepoints: tuple = (), *, tracefs: Path = TRACEFS,
                 group: str = TRACEFS_GROUP, instance: str = "tracekit", buffer_kb: int = 65536,
                 strict: bool = False):  # fmt: skip
        self.tracefs = tracefs
        self.group = group
        self.resolutions = resolutions
        self.instance = tracefs / "instances" / instance
        self.buffer_kb = buffer_kb
        self.tracepoints = [tp for tp in tracepoints if (tracefs / "events" / tp[0] / tp[1]).is_dir()]
        self.defined: list[str] = []
        self.attached: list[str] = []
        self.failed: list[dict] = []
        self.hists: list[str] = []
        self.strict = strict
        self._made_instance = False

    def __enter__(self) -> "TracefsFuncProbes":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _events(self, name: str) -> Path:
        return self.instance / "events" / self.group / name

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        for res in self.resolutions:
            if not res.available:
                self.failed.append({"probe": res.probe.name, "reason": res.reason})
                continue
            refusal = define_kprobes(self.tracefs, res, self.defined, group=self.group)
            if refusal and self.strict and not res.probe.optional:
                raise ProbeLoadError(f"required probe {res.probe.name} ({MODES[res.mode]} at {res.symbol}): {refusal}")
            if refusal:
                self.failed.append({"probe": res.probe.name, "reason": refusal})
                continue
            self.attached.append(res.probe.name)
        self.instance.mkdir()
        self._made_instance = True
        _write(self.instance / "trace_clock", "mono")
        _write(self.instance / "buffer_size_kb", str(self.buffer_kb))
        for res in self.resolutions:
            keys = ",".join(name for name, _ in res.fetch if name in ("level", "visit"))
            if res.probe.name in self.attached and res.probe.hot and keys:
                _write(self._events(res.probe.name) / "trigger", f"hist:keys={keys}:vals=hitcount:size=256")
                self.hists.append(res.probe.name)
        for name in self.defined:
            _write(self._events(name) / "enable", "1")
        for system, event in self.tracepoints:
            _write(self.instance / "events" / system / event / "enable", "1")
        _write(self.instance / "tracing_on", "1")

    def set_hot(self, enabled: bool, hot: set[str]) -> None:
        """Enable or disable the per-entry (hot) probes' events in the instance."""
        for name in self.defined:
            if name in hot:
                _write(self._events(name) / "enable", "1" if enabled else "0")

    def mark(self, index: int, end: bool) -> None:
        """A ``trace_marker_raw`` record (ftrace ``raw_data``) with id ``2 * index + end``: step boundaries."""
        fd = os.open(self.instance / "trace_marker_raw", os.O_WRONLY)
        try:
            os.write(fd, struct.pack("<II", 2 * index + int(end), 0))
        finally:
            os.close(fd)

    def stop(self) -> None:
        _write(self.instance / "tracing_on", "0")

    def save(self, out: Path) -> dict:
        raw = out / "raw"
        raw.mkdir(parents=True)
        lost: dict[str, int] = {}
        for cpu_dir in sorted((self.instance / "per_cpu").iterdir()):
            cpu = cpu_dir.name[3:]
            with open(raw / f"cpu{cpu}.bin", "wb") as sink:
                sink.write(drain_pipe(cpu_dir / "trace_pipe_raw"))
            for line in (cpu_dir / "stats").read_text().splitlines():
                if line.startswith("overrun:") or line.startswith("dropped events:"):
                    lost[cpu] = lost.get(cpu, 0) + int(line.split(":")[1])
        formats = out / "formats"
        formats.mkdir()
        events = self.tracefs / "events"
        for name in self.defined:
            _copy(events / self.group / name / "format", formats / f"{self.group}__{name}")
        for system, event in self.tracepoints:
            _copy(events / system / event / "format", formats / f"{system}__{event}")
        _copy(events / "ftrace" / "raw_data" / "format", formats / "ftrace__raw_data")
        _copy(events / "header_page", formats / "header_page")
        _copy(events / "header_event", formats / "header_event")
        hist = out / "hist"
        hist.mkdir()
        for name in self.hists:
            _copy(self._events(name) / "hist", hist / f"{name}.txt")
        return lost

    def close(self) -> None:
        """Undo everything :meth:`start` did (safe to call twice, and after a partial start)."""
        try:
            if self._made_instance and self.instance.exists():
                _write(self.instance / "tracing_on", "0")
                for name in self.hists:
                    trigger = self._events(name) / "trigger"
                    for line in trigger.read_text().splitlines():
                        if line.startswith("hist:"):
                            _write(trigger, "!" + line.split(" [")[0])
                for name in self.defined:
                    _write(self._events(name) / "enable", "0")
                for system, event in self.tracepoints:
                    _write(self.instance / "events" / system / event / "enable", "0")
        finally:
            self.hists = []
            if self._made_instance and self.instance.exists():
                self.instance.rmdir()
            self._made_instance = False
            for name in reversed(self.defined):
                append_line(self.tracefs / "kprobe_events", f"-:{self.group}/{name}")
            self.defined = []


def define_kprobes(tracefs: Path, res: Resolution, defined: list[str], *, group: str) -> str:
    """Write the ``kprobe_events`` lines of one resolved probe in ``group``, appending each event
    name to ``defined`` as soon as its line is written (so an interrupted caller still removes it).

    Returns the reason the kernel refused a line, with its ``error_log`` ("" when none was refused;
    the names defined before the refused line stay in ``defined``)."""
    try:
        for line in kprobe_event_lines(res.probe, res.symbol, res.fetch, group=group):
            append_line(tracefs / "kprobe_events", line)
            defined.append(line.split()[0].split("/", 1)[1])
    except OSError as error:
        return f"kprobe_events refused it: {error.strerror}: {_last_error(tracefs)}"
    return ""


def _last_error(tracefs: Path) -> str:
    """The last lines of tracefs ``error_log`` (the rejected command and the caret), one line."""
    try:
        lines = (tracefs / "error_log").read_text().strip().splitlines()
    except OSError:
        return "no error_log"
    return " | ".join(line.strip() for line in lines[-3:])


def _write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def append_line(path: Path, text: str) -> None:
    """Append one line to a tracefs definition file (kprobe_events, uprobe_events)."""
    # os.open, not open(..., "a"): Python's append mode seeks to the end, which tracefs refuses.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def _copy(src: Path, dst: Path) -> None:
    dst.write_bytes(src.read_bytes())


def drain_pipe(path: Path) -> bytes:
    """Read a ``trace_pipe_raw`` file page by page until it is empty (non-blocking)."""
    chunks = []
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)
