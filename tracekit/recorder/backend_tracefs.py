"""The tracefs backend of the recorder: a private ftrace instance read as binary pages.

:class:`TracefsBackend` records the families' tracepoints in an instance of its own, decodes every
CPU's ``trace_pipe_raw`` pages in time order and removes the instance on close;
:func:`cleanup_stale_instances` removes those a killed recorder left (docs/recorder.md).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from tracekit.procs import pid_alive
from tracekit.errors import MissingCapability, RecorderError
from tracekit.recorder.probe_family import ProbeFamily, ProbeStatus, RecordOptions
from tracekit.recorder.ioctl_args import remove_stale_probes
from tracekit.recorder.ftrace_pages import EventFormat, decode_pages, parse_format
from tracekit.recorder.target import tgid_of

__all__ = ["TracefsBackend", "cleanup_stale_instances", "release_order", "delivered_until", "INSTANCE_PREFIX", "pid_alive"]

INSTANCE_PREFIX = "tracekit-"
_INSTANCE_RE = re.compile(rf"^{INSTANCE_PREFIX}(\d+)-[0-9a-f]+$")
_MAX_PAGES_PER_POLL = 4096
#: An event stamped this long before a CPU's buffer was read may still be committing (not yet readable).
_WRITE_MARGIN_NS = 10_000_000


def delivered_until(reads: list[tuple[int, bool, int]], *, flush: bool = False) -> int | None:
    """The time up to which every CPU has delivered its events, from each CPU's read ``(read_at,
    drained, newest event read)``: a CPU left with a backlog delivered up to its newest event; a drained
    one up to the read less :data:`_WRITE_MARGIN_NS` (events stamped just before may still be
    committing), or everything once tracing is off (``flush``). None: no limit."""
    limits = [newest if not drained else read_at - _WRITE_MARGIN_NS for read_at, drained, newest in reads
              if not (drained and flush)]
    return min(limits, default=None)


def release_order(events: dict[str, np.ndarray], complete_until: int | None
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Split decoded events (name -> array with ``ts_ns``) into those to hand out now, stamped at or
    before ``complete_until`` (None: all), and those to hold.

    Each CPU's buffer is read in order, but not every CPU as far: one with a backlog (more than a poll's
    pages), or read before another, still holds events older than some already read from the others. A
    thread that moved between those CPUs would get its events out of order (a walk's elements given to
    the thread's next walk), so only what every CPU has delivered is released (``complete_until``,
    :func:`delivered_until`)."""
    if complete_until is None:
        return events, {}
    now, held = {}, {}
    for name, array in events.items():
        ready = array["ts_ns"] <= complete_until
        if ready.all():
            now[name] = array
        else:
            now[name], held[name] = array[ready], array[~ready]
    return now, held
_CONTINUATION_GRACE_S = 0.01  # a walk's elements follow its start within microseconds


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as error:
        raise RecorderError(f"cannot write {value.strip()!r} to {path}: {error.strerror or error}") from error


def _remove_instance(directory: Path) -> None:
    for name, value in (("tracing_on", "0"), ("events/enable", "0")):
        try:
            with open(directory / name, "w") as f:
                f.write(value)
        except OSError:
            pass
    for attempt in range(20):
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno == errno.ENODEV:  # removed meanwhile by another recorder cleaning up the same leftovers
                return
            if error.errno != errno.EBUSY or attempt == 19:
                raise RecorderError(f"cannot remove tracefs instance {directory}: {error.strerror}") from error
            time.sleep(0.05)


def cleanup_stale_instances(tracefs: Path) -> list[str]:
    """Remove ``tracekit-<pid>-*`` instances whose recorder pid no longer runs, then the ioctl uprobes of
    such recorders (:func:`.ioctl_args.remove_stale_probes`); return their names."""
    removed = []
    instances = tracefs / "instances"
    if not instances.is_dir():
        return removed
    for entry in instances.iterdir():
        match = _INSTANCE_RE.match(entry.name)
        if match and not entry.is_symlink() and not pid_alive(int(match.group(1))):
            _remove_instance(entry)
            removed.append(entry.name)
    return removed + remove_stale_probes(tracefs, pid_alive)


class TracefsBackend:
    """Record families through a private tracefs instance (see the module docstring)."""

    name = "tracefs"

    def __init__(self, tracefs: Path | None, families: list[tuple[ProbeFamily, list[ProbeStatus]]],
                 target_tgid: int | list[int], tids: list[int], *,
                 buffer_kb: int = RecordOptions.tracefs_buffer_kb):
        if tracefs is None:
            raise MissingCapability("tracefs backend unavailable: tracefs is not mounted; fix: "
                                    "mount -t tracefs tracefs /sys/kernel/tracing")
        self.tracefs = tracefs
        self.families = families
        self.target_tgids = [target_tgid] if isinstance(target_tgid, int) else list(target_tgid)
        self.tids = tids
        self.buffer_kb = buffer_kb
        self.directory: Path | None = None
        self.attached: list[str] = []
        self.formats: dict[int, EventFormat] = {}
        self._fds: dict[int, int] = {}
        self._missed = 0
        self._bytes = 0
        self._tgid_of_tid: dict[int, int | None] = {}
        self._prepared: list[ProbeFamily] = []
        self._events_of: dict[int, list[str]] = {}
        self.foreign_events = 0
        self._held: dict[str, np.ndarray] = {}  # events not yet released (newer than a CPU's delivery)
        self.window: dict[str, int] = {}

    def start(self) -> None:
        name = f"{INSTANCE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        directory = self.tracefs / "instances" / name
        try:
            directory.mkdir()
        except OSError as error:
            raise RecorderError(f"cannot create tracefs instance {directory}: {error.strerror}") from error
        self.directory = directory
        _write(directory / "tracing_on", "0")
        _write(directory / "buffer_size_kb", str(self.buffer_kb))
        _write(directory / "trace_clock", "mono")
        _write(directory / "options" / "event-fork", "1")
        _write(directory / "set_event_pid", " ".join(str(t) for t in self.tids) + "\n")
        for family, statuses in self.families:
            self._prepared.append(family)
            names = family.tracefs_prepare(self.tracefs, statuses)
            self._events_of[id(family)] = names
            for name in names:
                system, _, event = name.partition(":")
                event_dir = directory / "events" / system / event
                try:
                    fmt = parse_format((event_dir / "format").read_text(), system)
                except OSError as error:
                    raise RecorderError(f"event {name} is not in the tracefs instance: {error.strerror}") from error
                self.formats[fmt.id] = fmt
                _write(event_dir / "enable", "1")
                self.attached.append(name)
        for cpu_dir in sorted((directory / "per_cpu").glob("cpu[0-9]*")):
            cpu = int(cpu_dir.name[3:])
            self._fds[cpu] = os.open(cpu_dir / "trace_pipe_raw", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def arm(self) -> int:
        """Turn the instance on: every event starts at this instant (CLOCK_MONOTONIC ns, returned)."""
        start = time.monotonic_ns()
        _write(self.directory / "tracing_on", "1")
        self.window = {"start_ns": start}
        return start

    def disarm(self) -> int:
        """Close the window (idempotent); return its end (CLOCK_MONOTONIC ns). The instance stays on a
        moment more for families with ``continuations`` (told the end in ``window_stop_ns``: a walk
        in progress keeps its last elements, a later start closes it); every other event after the
        end is dropped when read."""
        if self.directory is None or "stop_ns" in self.window:
            return self.window.get("stop_ns", 0)
        stop = self.window["stop_ns"] = time.monotonic_ns()
        continuing = [family for family, _ in self.families if family.continuations]
        for family in continuing:
            family.window_stop_ns = stop
        if continuing:
            time.sleep(_CONTINUATION_GRACE_S)
        _write(self.directory / "tracing_on", "0")
        return stop

    def _read_cpu(self, fd: int) -> tuple[bytes, bool]:
        """The pages readable now (at most :data:`_MAX_PAGES_PER_POLL`) and whether that drained the CPU."""
        chunks = []
        for _ in range(_MAX_PAGES_PER_POLL):
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                return b"".join(chunks), True
            except OSError as error:
                if error.errno == errno.EAGAIN:
                    return b"".join(chunks), True
                raise RecorderError(f"reading trace_pipe_raw failed: {error.strerror}") from error
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk + bytes(4096 - len(chunk)) if len(chunk) < 4096 else chunk)
        return b"".join(chunks), False

    def poll(self, *, flush: bool = False) -> list[tuple[ProbeFamily, dict[str, pa.Table]]]:
        """Read every CPU and decode; events newer than what every CPU has delivered are held for the next
        poll, see :func:`release_order`. ``flush`` (tracing is off, nothing more comes): a drained CPU holds
        nothing back, a CPU with a backlog still does."""
        by_name: dict[str, list[np.ndarray]] = {name: [held] for name, held in self._held.items()}
        reads = []
        for cpu, fd in self._fds.items():
            read_at = time.monotonic_ns()
            data, drained = self._read_cpu(fd)
            newest = 0
            if data:
                self._bytes += len(data)
                decoded = decode_pages(data, self.formats, cpu=cpu)
                self._missed += decoded.missed
                for event_id, events in decoded.events.items():
                    fmt = self.formats[event_id]
                    events["tgid"] = self._tgids(events["common_pid"])
                    by_name.setdefault(f"{fmt.system}:{fmt.name}", []).append(events)
                    if len(events):
                        newest = max(newest, int(events["ts_ns"].max()))
            reads.append((read_at, drained, newest))
        events = {name: np.concatenate(parts) if len(parts) > 1 else parts[0] for name, parts in by_name.items()}
        events, self._held = release_order(events, delivered_until(reads, flush=flush))
        if not any(len(a) for a in events.values()):
            return []
        events = self._drop_after_window(self._drop_foreign(events))
        out = []
        for family, _ in self.families:
            mine = {tp: events[tp] for tp in self._events_of.get(id(family), ()) if tp in events}
            if mine:
                out.append((family, family.decode_tracefs(mine)))
        return out

    def bytes_read(self) -> int:
        return self._bytes

    def _tgid(self, tid: int) -> int | None:
        """The process of thread ``tid`` (looked up once per tid); None when it is gone."""
        if tid not in self._tgid_of_tid:
            self._tgid_of_tid[tid] = tgid_of(tid)
        return self._tgid_of_tid[tid]

    def _tgids(self, tids: np.ndarray) -> np.ndarray | int:
        """The process id of each event's thread: the target's with one target; with several, each
        thread's (a thread gone before it was looked up, which set_event_pid let through as a child
        of a target thread, gets the first target's, the only guess left)."""
        if len(self.target_tgids) == 1:
            return self.target_tgids[0]
        threads, which = np.unique(tids, return_inverse=True)
        tgids = [self._tgid(int(tid)) for tid in threads.tolist()]
        return np.array([t if t in self.target_tgids else self.target_tgids[0] for t in tgids], np.int64)[which]

    def _foreign(self, tid: int) -> bool:
        """True when thread ``tid`` is alive and belongs to another process (checked once per tid), or is
        the idle task (tid 0, an event fired in interrupt context on an idle CPU: never a target's)."""
        if tid == 0:
            return True
        tgid = self._tgid(tid)  # None when gone: a short-lived thread of a target (set_event_pid let it through)
        return tgid is not None and tgid not in self.target_tgids

    def _drop_after_window(self, events: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Drop events stamped after the window closed, but continuations of operations begun in it."""
        stop = self.window.get("stop_ns")
        if stop is None:
            return events
        keep = {tp for family, _ in self.families if family.continuations for tp in family.tracepoints}
        return {name: array if name in keep else array[array["ts_ns"] <= stop] for name, array in events.items()}

    def _drop_foreign(self, events: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Drop events of other processes' threads that the pid filter let through.

        set_event_pid is decided at context switches, so events fired inside the scheduler (lock
        contention on a runqueue lock, say) can carry a task outside the filter."""
        out = {}
        for name, array in events.items():
            tids = np.unique(array["common_pid"])
            foreign = [t for t in tids.tolist() if self._foreign(int(t))]
            if foreign:
                keep = ~np.isin(array["common_pid"], foreign)
                self.foreign_events += int((~keep).sum())
                array = array[keep]
            out[name] = array
        return out

    def lost(self) -> list[tuple[str, int, int]]:
        out: list[tuple[str, int, int]] = []
        if self.directory is None:
            return out
        stats_read = False
        for cpu in self._fds:
            try:
                stats = (self.directory / "per_cpu" / f"cpu{cpu}" / "stats").read_text()
            except OSError:
                continue
            stats_read = True
            count = 0
            for key in ("overrun", "dropped events"):
                match = re.search(rf"^{key}:\s*(\d+)", stats, re.M)
                if match:
                    count += int(match.group(1))
            if count:
                out.append(("tracefs:ring_buffer", cpu, count))
        if self._missed and not stats_read:  # the pages' own marks count the same losses: use them only alone
            out.append(("tracefs:missed_pages", -1, self._missed))
        return out

    def stop(self) -> tuple[list, list]:
        if self.directory is None:
            return [], []
        stop_ns = self.disarm()
        batches = []
        while True:
            batch = self.poll(flush=True)
            batches += batch
            if not batch and not self._held:
                break
        finals = [(family, family.finish_tracefs(stop_ns)) for family, _ in self.families]
        return batches, finals

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        try:
            if self.directory is not None:
                directory, self.directory = self.directory, None
                _remove_instance(directory)
        finally:
            prepared, self._prepared = self._prepared, []
            for family in prepared:
                family.tracefs_cleanup(self.tracefs)

    def program_text(self) -> str:
        return "# tracefs backend: no BPF program\n"
