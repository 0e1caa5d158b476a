"""One recording, in four steps: plan, attach, poll, finish.

:class:`Recording` runs them for a :class:`RecordConfig` and releases everything on leaving its ``with``
block; :func:`record` runs the steps under :class:`tracekit.stopsignals.StopRequests`
(docs/recorder.md has the whole story).
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from tracekit.capabilities import recording_blockers
from tracekit.capture import CaptureWriter
from tracekit.capture.columns import SCHEMAS
from tracekit.errors import MissingCapability, RecorderError, UsageError
from tracekit.host import Host, tracefs_root
from tracekit.memtune import keep_freed_memory
from tracekit.recorder.backend_bcc import BccBackend, import_bcc
from tracekit.recorder.backend_tracefs import TracefsBackend, cleanup_stale_instances, pid_alive
from tracekit.recorder.inflight import blocked_kvm_ioctls, calls_in_flight
from tracekit.recorder.layoutdir import make_layout_dir, read_layout_record, reclaim_stale_layout_dirs
from tracekit.recorder.output import OutputTee
from tracekit.recorder.probe_family import ProbeFamily, ProbeStatus, RecordOptions
from tracekit.recorder.registry import make_family
from tracekit.recorder.status import StatusLine, banner, live_status_wanted, not_attached
from tracekit.recorder.tally import VmTally
from tracekit.recorder.target import GatedChild, ThreadWatch, resolve_targets, spawn_gated, tgid_of, thread_info
from tracekit.recorder.vcpus import VcpuFds
from tracekit.recorder.writequeue import WriteQueue
from tracekit.stopsignals import StopRequests
from tracekit.workload.published import LAYOUT_DIR_ENV, read_published_layout

__all__ = ["RecordConfig", "RecordSummary", "Recording", "record", "plan_families", "DEFAULT_FAMILIES"]

DEFAULT_FAMILIES = ("walk", "ioctl", "lock", "mmu")

_THREADS_S = 0.05  # how often the targets' task lists are read while recording
_FDS_S = 1.0  # how often their fd tables are, when no thread appeared
_LOST_S = 0.25  # how often the cumulative lost-event counters are read


@dataclass
class RecordConfig:
    output: Path
    pid_spec: str | None = None
    pid_specs: tuple[str, ...] = ()  # repeated --pid (pid_spec counts as one more)
    all_vms: bool = False  # every process holding a KVM VM
    command: list[str] = field(default_factory=list)
    duration: float | None = None
    families: tuple[str, ...] = DEFAULT_FAMILIES
    backend: str = "auto"
    options: RecordOptions = field(default_factory=RecordOptions)
    segment_seconds: float = 1.0
    poll_interval: float = 0.02
    status_interval: float = 0.5
    command_line: list[str] = field(default_factory=list)
    command_stdout_to_stderr: bool = False  # keep stdout for --json


@dataclass
class RecordSummary:
    output: str
    backend: str
    target: dict
    seconds: float
    rows: dict[str, int]
    lost: int
    bytes_written: int
    stop_reason: str
    attached: list[str]
    failed: list[dict]
    command_exit: int | None = None
    recorder_cpu_s: float = 0.0
    peak_rss_kb: int = 0
    recording_rss_kb: int = 0  # peak VmRSS sampled while recording (after the BPF compile)

    def to_json(self) -> dict:
        return dict(self.__dict__)

    def command_failure(self) -> tuple[int, str] | None:
        """When the command after ``--`` ended the recording by failing: the exit status a shell gives it
        (its own, or 128 + the signal that killed it) and what happened, as ``time`` and ``strace`` pass
        it on; None when it succeeded or the recording, not the command, ended first."""
        if self.stop_reason != "command exited" or not self.command_exit:
            return None
        if self.command_exit > 0:
            return self.command_exit, f"exited with {self.command_exit}"
        signum = -self.command_exit
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return 128 + signum, f"was killed by {name}"


def plan_families(names: tuple[str, ...], host: Host, options: RecordOptions
                  ) -> tuple[list[tuple[ProbeFamily, list[ProbeStatus]]], list[dict], list[str]]:
    """Families that can record here with their probe statuses; failed probes; requested probes."""
    chosen, failed, requested = [], [], []
    for name in names:
        family = make_family(name, options)  # UsageError for an unknown name
        statuses = family.check(host)
        requested += [s.probe for s in statuses]
        failed += [{"probe": s.probe, "family": name, "reason": s.reason} for s in statuses if not s.available]
        ok = {s.probe for s in statuses if s.available}
        missing_required = [tp for tp in family.required if tp not in ok]
        if missing_required or not ok:
            reason = (f"required tracepoint(s) absent: {', '.join(missing_required)}" if missing_required
                      else _none_available(statuses))
            failed.append({"probe": f"family:{name}", "family": name, "reason": reason})
            continue
        chosen.append((family, statuses))
    return chosen, failed, requested


def _none_available(statuses: list[ProbeStatus]) -> str:
    """Why no probe of a family can attach: the reasons every probe shares (e.g. no kprobes)."""
    parts = [set(s.reason.split("; ")) for s in statuses]
    shared = [r for r in statuses[0].reason.split("; ") if all(r in p for p in parts)] if statuses else []
    return f"none of its {len(statuses)} probes is available" + (f": {'; '.join(shared)}" if shared else "")


class Recording:
    """One recording of ``config`` (see the module docstring). Drive it as :func:`record` does::

        recording.plan()
        with recording:
            recording.attach()
            while recording.poll() is None:
                recording.pause()
            recording.finish()
        summary = recording.summary()

    ``stopper`` notes the stop signals (a :class:`StopRequests` already entered); ``stream`` gets the
    banner, live status and closing lines (None: silent)."""

    def __init__(self, config: RecordConfig, stopper: StopRequests, *, stream: Any = sys.stderr,
                 live_status: bool | None = None):
        self.config = config
        self.stopper = stopper
        self.stream = stream
        self.live_status = live_status
        self.output = Path(config.output)
        self.status = StatusLine(stream, config.status_interval,
                                 live_status_wanted(stream, live_status, bool(config.command)))
        # plan
        self.chosen: list[tuple[ProbeFamily, list[ProbeStatus]]] = []
        self.failed: list[dict] = []
        self.requested: list[str] = []
        self.backend_name = ""
        self.backend_note: str | None = None
        self.tracefs: Path | None = None
        self.stale: dict[str, list[str]] = {}
        # attach
        self.child: GatedChild | None = None
        self.tee: OutputTee | None = None
        self.layout_dir: str | None = None
        self.target: dict = {}
        self.threads: dict[int, dict] = {}
        self.event_seen: dict[int, list[int]] = {}  # tid -> [first, last] event time, threads /proc had not listed
        self.pre_exec_tid: int | None = None  # the started command's main thread, listed before its exec
        self.watch: ThreadWatch | None = None
        self.vcpus: VcpuFds | None = None
        self.backend: Any = None
        self.writer: CaptureWriter | None = None
        self._open_writer: CaptureWriter | None = None  # until closed, once
        self._queue: WriteQueue | None = None
        self.tally = VmTally()
        self.lost: dict[tuple[str, int], int] = {}
        self.t0 = time.monotonic()  # the window's start once armed (CLOCK_MONOTONIC s)
        self._rusage0 = resource.getrusage(resource.RUSAGE_SELF)
        # poll and finish
        self.stop_reason: str | None = None
        self.command_exit: int | None = None
        self.recording_rss = 0
        self._next_threads = self._next_fds = self._next_lost = 0.0

    @property
    def tgids(self) -> list[int]:
        return self.target["pids"]

    # -- plan ----------------------------------------------------------------------------------------

    def plan(self) -> None:
        """Check the options, privileges and output; choose the families and the backend. Nothing is
        started: UsageError or MissingCapability leave nothing behind."""
        _check_config(self.config)
        if self.config.duration is not None and math.isinf(self.config.duration):
            self.config = replace(self.config, duration=None)  # inf: until stopped
        blockers = recording_blockers(self.config.backend)
        if blockers:
            raise MissingCapability("cannot record as this user: " + "; ".join(blockers))
        _check_output(self.output)
        keep_freed_memory()
        self.tracefs = tracefs_root()
        self.stale = {"stale_tracefs_instances_removed":
                      cleanup_stale_instances(self.tracefs) if self.tracefs is not None else [],
                      "stale_layout_dirs_removed": reclaim_stale_layout_dirs()}
        plan, self.failed, self.requested = plan_families(tuple(self.config.families), Host(self.tracefs),
                                                          self.config.options)
        if not plan:
            reasons = "; ".join(f"{f['probe']}: {f['reason']}" for f in self.failed if f["probe"].startswith("family:"))
            raise MissingCapability(f"no requested probe family can record on this host ({reasons})")
        self.backend_name, self.backend_note = _choose_backend(self.config.backend)
        if self.backend_name == "tracefs":
            for family, _ in plan:
                if not family.supports_tracefs():
                    self.failed.append({"probe": f"family:{family.name}", "family": family.name,
                                        "reason": "no tracefs decoder"})
            plan = [(f, s) for f, s in plan if f.supports_tracefs()]
            if not plan:
                raise MissingCapability("none of the requested families can record through tracefs")
        self.chosen = plan
        if self.stopper.reason:
            raise self.stopper.stopped_early("recording began; no capture written")

    # -- attach --------------------------------------------------------------------------------------

    def attach(self, on_attached: Callable[[], None] | None = None) -> None:
        """Start the command held before exec (or resolve the processes), create the capture, attach
        every probe disarmed, start the writer thread, then arm every family at one instant and let
        the command go. ``on_attached()`` runs once armed, before the command is released."""
        self._start_targets()
        self.backend = self._make_backend()
        if self.stopper.reason:
            raise self.stopper.stopped_early("recording began; no capture written")
        self.writer = self._open_writer = CaptureWriter(self.output, self._manifest(),
                                                        segment_seconds=self.config.segment_seconds)
        self.backend.start()  # every probe attached, disarmed: nothing recorded yet
        self._rusage0 = resource.getrusage(resource.RUSAGE_SELF)  # recorder CPU counts from here, not the compile
        refused = getattr(self.backend, "refused", [])  # families whose program this kernel refused (bcc)
        if refused:
            self.failed += refused
            self.chosen = [(f, s) for f, s in self.chosen if f.name not in {r["family"] for r in refused}]
        for family, _ in self.chosen:
            for table, schema in family.tables().items():
                self.writer.declare(table, schema)
        self.writer.declare("threads", SCHEMAS["threads"])  # its rows at finish, the manifest's thread list
        self.writer.update_manifest(probes={**self.writer.manifest["probes"], "attached": self.backend.attached,
                                            "failed": self.failed, "families": [f.name for f, _ in self.chosen]})
        self._queue = WriteQueue(self.writer)
        self._arm()
        self.status.say(banner(self.target, self.backend_name, [f.name for f, _ in self.chosen], self.backend.attached,
                               self.output, self.config.duration))
        if self.failed:
            self.status.say("Not attached: " + not_attached(self.failed))
        if on_attached is not None:
            on_attached()
        if self.child is not None and not self.stopper.reason:  # stopped while attaching: it never runs
            self.child.release()
        self._next_threads = time.monotonic() + _THREADS_S
        self._next_fds = self._next_threads + _FDS_S

    def _start_targets(self) -> None:
        command = list(self.config.command)
        if command:
            self.tee = OutputTee(2 if self.config.command_stdout_to_stderr else 1)
            self.layout_dir = make_layout_dir()  # the built-in workload writes its layout record there
            self.child = spawn_gated(command, env={**os.environ, LAYOUT_DIR_ENV: self.layout_dir},
                                     stdout_fd=self.tee.child_fd)
            self.tee.child_started()
            self.target = {"pids": [self.child.pid], "comm": os.path.basename(command[0]), "name": None}
        else:
            found = resolve_targets(_pid_specs(self.config), all_vms=self.config.all_vms)
            self.target = {"pids": [t.pid for t in found], "comm": found[0].comm, "name": found[0].guest,
                           "vms": [t.to_json() for t in found]}
        self.watch = ThreadWatch(self.tgids)
        _merge_threads(self.threads, self.watch.refresh(full=True)[0])
        if self.child is not None and self.child.pid in self.threads:
            self.threads[self.child.pid]["pre_exec"] = True  # its name until the exec (this recorder's)
            self.pre_exec_tid = self.child.pid
        self.vcpus = VcpuFds(self.tgids)
        self.vcpus.scan()

    def _make_backend(self) -> Any:
        if self.backend_name == "bcc":
            return BccBackend(self.chosen, self.tgids)
        return TracefsBackend(self.tracefs, self.chosen, self.tgids, sorted(self.threads) or self.tgids,
                              buffer_kb=self.config.options.tracefs_buffer_kb)

    def _manifest(self) -> dict:
        manifest = {
            "target": {**self.target, "threads": []},
            "probes": {"requested": self.requested, "attached": [], "failed": self.failed,
                       "families": [f.name for f, _ in self.chosen]},
            "backend": self.backend_name,
            "command_line": self.config.command_line or sys.argv,
            "source": {"kind": "live", "description": "tracekit record on this host"},
            "recorder": {"pid": os.getpid(), **self.stale},
        }
        if self.backend_note:
            manifest["backend_note"] = self.backend_note
        return manifest

    def _arm(self) -> None:
        """One step for every family: the readers exist, the window opens; the duration counts from here."""
        blocked = blocked_kvm_ioctls(self.tgids)  # calls in flight as the window opens: read on both sides
        window_start = self.backend.arm()
        in_flight = calls_in_flight(blocked, blocked_kvm_ioctls(self.tgids))
        for family, _ in self.chosen:
            family.open_in_flight(in_flight, window_start)
        self.t0 = window_start / 1e9

    # -- poll ----------------------------------------------------------------------------------------

    def poll(self) -> str | None:
        """Drain the rings into the capture, follow the targets' threads, show the status; return why
        the recording should stop (also kept in ``stop_reason``), or None to go on."""
        now = time.monotonic()
        self._deliver(self.backend.poll())
        self._queue.submit(self.writer.tick)
        self.status.maybe_show(sum(self.lost.values()), lambda: _dir_bytes(self.output))
        if now >= self._next_threads:
            self.recording_rss = max(self.recording_rss, _vm_rss_kb())
            seen, settling = self.watch.refresh()
            _merge_threads(self.threads, seen)
            if settling or now >= self._next_fds:  # a new thread may open a vCPU fd; else now and then
                self.vcpus.scan()
                self._next_fds = now + _FDS_S
            self._next_threads = now + _THREADS_S
        self.stop_reason = self._why_stop()
        return self.stop_reason

    def _why_stop(self) -> str | None:
        if self.stopper.reason:
            return self.stopper.reason
        if self.config.duration is not None and time.monotonic() - self.t0 >= self.config.duration:
            return "duration"
        if self.child is not None and self.child.poll() is not None:
            self.command_exit = self.child.returncode
            return "command exited"
        if self.child is None and not any(_running(pid) for pid in self.tgids):
            return "target exited"
        return None

    def pause(self) -> None:
        """Sleep until the next poll: the poll interval, shortened so the loop wakes at the duration."""
        time.sleep(_next_sleep(self.config.poll_interval, self.config.duration, self.t0))

    def _deliver(self, batches: list, final: bool = False) -> None:
        for _family, tables in batches:
            for name, table in tables.items():
                if table.num_rows:
                    self._queue.submit(self.writer.append, name, table, rows=table.num_rows)
                    self.status.count(name, table.num_rows)
                    self.tally.add(name, table)
                    _note_event_threads(self.threads, table, self.event_seen, self.watch.seen)
                    self.vcpus.observe(name, table)
        if not final and time.monotonic() < self._next_lost:
            return
        self._next_lost = time.monotonic() + _LOST_S  # counters are cumulative: reading them often buys nothing
        for probe, cpu, count in self.backend.lost():
            if self.lost.get((probe, cpu)) != count:
                self.lost[(probe, cpu)] = count
                self._queue.submit(self.writer.add_lost, probe, cpu, count)

    # -- finish --------------------------------------------------------------------------------------

    def finish(self) -> None:
        """Close the window (every family at once), drain what is left, stop the command, write the
        end-of-run manifest (threads, vCPU fds, window, partial operations, the workload's record) and
        close the capture."""
        self.stop_reason = self.stop_reason or "unknown"
        batches, finals = self.backend.stop()  # closes the window first
        self._deliver(batches + finals, final=True)
        self._close_queue()
        notes: dict[str, Any] = {}
        partial: dict[str, int] = {}
        for family, _ in self.chosen:
            notes.update(family.manifest_notes())
            partial.update(family.partial_counts())
        _merge_threads(self.threads, self.watch.refresh(full=True)[0])
        self.vcpus.scan()
        child = self.child
        if child is not None and child.released and child.poll() is None and self.stop_reason != "command exited":
            child.terminate(_grace(self.stopper), lambda: self.stopper.hurry)
            self.command_exit = child.returncode
        workload = read_layout_record(self.layout_dir, child.pid) if child is not None and self.layout_dir else None
        if workload is None and len(self.tgids) == 1:  # one workload: its model applies to all
            workload = read_published_layout(self.tgids[0])
        extra: dict[str, Any] = {"workload": workload} if workload is not None else {}
        if self.tee is not None:
            extra["command_output"] = self.tee.finish()
        if child is not None:
            _name_exec(self.threads, child)
        _merge_threads(self.threads, [  # the workload's own record: threads too short-lived for /proc
            {"pid": workload.get("pid"), "tid": v["tid"], "comm": str(v.get("thread_name", "")), "vcpu": v.get("index")}
            for v in (workload or {}).get("vcpus", []) if isinstance(v, dict) and isinstance(v.get("tid"), int)])
        self.vcpus.mark_threads(self.threads)
        backend = self.backend
        threads = sorted(self.threads.values(), key=lambda t: t["tid"])
        self.writer.append("threads", thread_table(threads, self.watch.seen, self.event_seen, self.pre_exec_tid,
                                                   self.tgids))
        self.writer.update_manifest(
            target={**self.target, "threads": threads, "vcpu_fds": self.vcpus.manifest()},
            stop_reason=self.stop_reason, command_exit=self.command_exit, family_notes=notes,
            window=_window_record(backend.window), partial=partial,
            bytes_read=backend.bytes_read(), foreign_events_dropped=getattr(backend, "foreign_events", 0),
            **_ring_diagnostics(backend), **extra)
        self._close_writer(None)

    # -- every exit path -----------------------------------------------------------------------------

    def __enter__(self) -> "Recording":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        """Whatever happened: wait for the writer thread, close the capture (``aborted`` with the error),
        detach the probes, stop the command, remove the layout directory. Every step runs; a failed
        cleanup is reported (RecorderError) only when nothing else failed."""
        error = exc
        try:
            try:
                self._close_queue()
            except BaseException as queue_error:  # the writer's own error (disk full) is the one to report
                error = queue_error
                raise
            finally:
                self._close_writer(error)
        finally:
            failure = _release_resources(self.backend, self.child, self.layout_dir, self.stopper)
            if self.tee is not None:
                self.tee.finish(timeout=0)
        if exc_type is None and failure is not None:
            raise RecorderError(f"cleanup after the recording failed: {failure}") from failure

    def _close_queue(self) -> None:
        queue, self._queue = self._queue, None
        if queue is not None:
            queue.close()

    def _close_writer(self, error: BaseException | None) -> None:
        writer, self._open_writer = self._open_writer, None
        if writer is not None:
            writer.__exit__(type(error) if error is not None else None, error, None)

    def summary(self) -> RecordSummary:
        """The summary of a finished recording; prints the per-VM table and the closing line."""
        rusage = resource.getrusage(resource.RUSAGE_SELF)
        writer, target = self.writer, self.target
        rows = {name: writer.rows(name) for name in writer.families()} if writer else {}
        summary = RecordSummary(
            output=str(self.output), backend=self.backend_name,
            target={"pid": target["pids"][0], "pids": target["pids"], "comm": target["comm"]},
            seconds=round(_window_seconds(self.backend) or time.monotonic() - self.t0, 3), rows=rows,
            lost=writer.lost_total() if writer else 0, bytes_written=_dir_bytes(self.output),
            stop_reason=self.stop_reason or "unknown", attached=list(self.backend.attached if self.backend else []),
            failed=self.failed, command_exit=self.command_exit,
            recorder_cpu_s=round(rusage.ru_utime + rusage.ru_stime - self._rusage0.ru_utime - self._rusage0.ru_stime, 3),
            peak_rss_kb=rusage.ru_maxrss, recording_rss_kb=max(self.recording_rss, _vm_rss_kb()),
        )
        if writer is not None:
            vms = target.get("vms") or [{"pid": pid, "comm": target["comm"] if i == 0 else "", "name": target["name"]
                                         if i == 0 else None} for i, pid in enumerate(target["pids"])]
            self.status.say(self.tally.render(vms))
        self.status.say(f"Stopped ({summary.stop_reason}) after {summary.seconds:.1f} s: "
                        + (", ".join(f"{n} {r:,}" for n, r in rows.items() if r) or "no events")
                        + f"; lost {summary.lost}; {summary.bytes_written / 1e6:.1f} MB in {self.output}"
                        + "".join(f"; {f['family']} not recorded" for f in self.failed
                                  if f["probe"].startswith("family:")))
        return summary


def record(config: RecordConfig, stream: Any = sys.stderr, live_status: bool | None = None,
           on_attached: Callable[[], None] | None = None) -> RecordSummary:
    """Record as ``config`` says: the steps of :class:`Recording`, with stop signals noted from the first
    line to the last (one before the capture exists raises :class:`tracekit.stopsignals.StopSignal`, a
    second one hurries the cleanup, never skips it). ``on_attached()`` runs once the probes are armed."""
    with StopRequests(notify_fd=2 if stream is sys.stderr else None) as stopper:
        recording = Recording(config, stopper, stream=stream, live_status=live_status)
        recording.plan()
        with recording:
            recording.attach(on_attached)
            while recording.poll() is None:
                recording.pause()
            recording.finish()
        return recording.summary()


def _pid_specs(config: RecordConfig) -> list[str]:
    return ([config.pid_spec] if config.pid_spec else []) + list(config.pid_specs)


def _check_config(config: RecordConfig) -> None:
    """Raise UsageError, naming the option, for a config no recording can follow."""
    pid_specs = _pid_specs(config)
    if (pid_specs or config.all_vms) and config.command:
        raise UsageError("give either --pid or a command after --, not both (--all-vms counts as --pid)")
    if not pid_specs and not config.all_vms and not config.command:
        raise UsageError("nothing to record: give --pid PID|NAME, --all-vms or a command after --")
    if config.duration is not None and not config.duration > 0:  # NaN too
        raise UsageError(f"--duration must be positive, not {config.duration:g}: a number of seconds, "
                         "or inf (as without --duration) to record until stopped")
    if not (config.segment_seconds > 0 and math.isfinite(config.segment_seconds)):
        raise UsageError(f"--segment-seconds must be a positive, finite number of seconds, not {config.segment_seconds:g}")


def _choose_backend(name: str) -> tuple[str, str | None]:
    if name not in ("auto", "bcc", "tracefs"):
        raise UsageError(f"unknown backend {name!r} (use bcc, tracefs or auto)")
    if name != "auto":
        return name, None
    try:
        import_bcc()
    except MissingCapability as error:
        return "tracefs", f"bcc backend unavailable, used tracefs: {error}"
    return "bcc", None


def _check_output(path: Path) -> None:
    try:
        if path.is_symlink():
            raise UsageError(f"output {path} is a symbolic link; give a plain path")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UsageError(f"output {path} already exists; give a new path")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise UsageError(f"output directory {parent} does not exist")
    except OSError as error:  # e.g. a directory this user may not search
        raise UsageError(f"cannot use output {path}: {error.strerror or error}") from None


def _vm_rss_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path, followlinks=False):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _grace(stopper: StopRequests) -> float:
    """Seconds a stopped command gets between SIGTERM and SIGKILL: none once a second signal came."""
    return 0.0 if stopper.hurry else 3.0


def _release_resources(backend: Any, child: GatedChild | None, layout_dir: str | None,
                       stopper: StopRequests) -> BaseException | None:
    """Detach and free the probes, stop the command, remove the layout directory. Every step runs even
    when an earlier one failed; the first failure is returned. Signals are only noted meanwhile."""
    failure: BaseException | None = None
    if backend is not None:
        try:
            backend.close()
        except Exception as error:  # bcc raises plain Exceptions
            failure = error
    if child is not None:
        try:
            child.terminate(_grace(stopper), lambda: stopper.hurry)
        except OSError as error:
            failure = failure or error
    if layout_dir is not None:
        shutil.rmtree(layout_dir, ignore_errors=True)
    return failure


def _next_sleep(poll_interval: float, duration: float | None, t0: float) -> float:
    """The pause before the next poll: the poll interval, shortened so the loop wakes at the duration."""
    if duration is None:
        return poll_interval
    return max(0.0, min(poll_interval, t0 + duration - time.monotonic()))


def _window_seconds(backend: Any) -> float:
    """How long the recording window was open (0 when it never closed)."""
    window = getattr(backend, "window", {})
    return (window["stop_ns"] - window["start_ns"]) / 1e9 if "stop_ns" in window and "start_ns" in window else 0.0


def _window_record(window: dict[str, int]) -> dict[str, Any]:
    """Manifest ``window``: the instants every family started and stopped recording."""
    out: dict[str, Any] = {"clock": "CLOCK_MONOTONIC", **window}
    if "start_ns" in window and "stop_ns" in window:
        out["seconds"] = round((window["stop_ns"] - window["start_ns"]) / 1e9, 6)
    return out


def _ring_diagnostics(backend: Any) -> dict[str, Any]:
    """Manifest keys ``ring_failures`` (the first failed ring outputs of each batching family, with the
    ring's state then) and ``ring_failures_total``, for a backend that records them (bcc)."""
    if not hasattr(backend, "ring_failures"):
        return {}
    return {"ring_failures": backend.ring_failures(), "ring_failures_total": backend.ring_failure_total()}


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a target that exited but was not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return pid_alive(pid)
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return state not in (["Z"], ["X"])


def _note_event_threads(threads: dict[int, dict], table: Any, seen: dict[int, list[int]] | None = None,
                        listed: dict | None = None) -> None:
    """Add the threads that produced events but were never seen in /proc (too short-lived); ``seen`` keeps
    the first and last event time of the threads /proc has not ``listed`` (``{tid: [first, last]}``)."""
    if "tid" not in table.column_names:
        return
    tids = set(pc.unique(table.column("tid")).to_pylist())  # a hash, not a sort
    new = tids - threads.keys() - {0}
    again = (tids & seen.keys()) - (listed or {}).keys() if seen else set()
    if not new and not again:
        return
    names = table.column_names
    keys = [c for c in ("tid", "pid") if c in names]
    timed = seen is not None and "ts_ns" in names
    rows = table.filter(pc.is_in(table.column("tid"), pa.array(sorted(new | again), table.column("tid").type)))
    grouped = rows.select(keys + (["ts_ns"] if timed else [])).group_by(keys).aggregate(
        [("ts_ns", "min"), ("ts_ns", "max")] if timed else [])
    for row in grouped.to_pylist():
        tid = row["tid"]
        if tid in new and tid not in threads:
            pid = row.get("pid") or tgid_of(tid)  # the process its events carry
            threads[tid] = {**thread_info(pid or tid, tid), "pid": pid}
        if timed:
            first, last = seen.setdefault(tid, [row["ts_ns_min"], row["ts_ns_max"]])
            seen[tid] = [min(first, row["ts_ns_min"]), max(last, row["ts_ns_max"])]


def thread_table(threads: list[dict], listed: dict[int, list[int]], events: dict[int, list[int]],
                 pre_exec_tid: int | None, pids: list[int]) -> pa.Table:
    """The ``threads`` family (docs/capture-families-target.md) of the manifest's thread list: first and last
    seen from the /proc listings and, for threads seen in events, their event times; a thread known only
    from the workload's record is first seen now, last seen never; an unknown process is the only target's."""
    now = time.monotonic_ns()
    only_pid = pids[0] if len(pids) == 1 else 0
    rows = []
    for thread in threads:
        tid = thread["tid"]
        times = [t for t in (listed.get(tid), events.get(tid)) if t]
        rows.append({"ts_ns": min((t[0] for t in times), default=now), "cpu": -1,
                     "pid": thread.get("pid") or only_pid, "tid": tid,
                     "last_seen_ns": max((t[1] for t in times), default=None), "comm": thread.get("comm"),
                     "vcpu": thread.get("vcpu"), "vcpu_from": thread.get("vcpu_from"), "pre_exec": tid == pre_exec_tid})
    return pa.Table.from_pylist(rows, schema=SCHEMAS["threads"])


def _name_exec(threads: dict[int, dict], child: GatedChild) -> None:
    """The started command's main thread under the name it took at exec, if never seen after the exec."""
    main = threads.get(child.pid)
    if main is not None and main.get("pre_exec"):
        main.pop("pre_exec")
        main["comm"] = child.exec_name


def _merge_threads(known: dict[int, dict], seen: list[dict]) -> None:
    """Add threads; a later sighting's name wins until a name gives a vCPU index (threads are renamed
    after they start, a started command's main thread at its exec)."""
    for thread in seen:
        old = known.get(thread["tid"])
        if old is None:
            known[thread["tid"]] = thread
            continue
        if old.get("vcpu") is None and thread.get("comm") and thread["comm"] != old.get("comm"):
            old.pop("pre_exec", None)  # renamed, or exec'd: the newest name, until one names a vCPU
            old.update(comm=thread["comm"], vcpu=thread.get("vcpu"))
