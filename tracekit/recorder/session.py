"""One recording: target, probe families, backend, capture writer, poll loop, clean stop.

Contract: :func:`record` takes a :class:`RecordConfig` and writes a capture directory with
:class:`tracekit.capture.CaptureWriter`; it returns a :class:`RecordSummary`. It

1. removes tracefs instances left by a killed recorder (``tracekit-<pid>-*`` whose pid is gone);
2. resolves the targets (``pid_spec``/``pid_specs``/``all_vms``, each holding a KVM VM; manifest
   ``target.pids`` and ``target.vms``) or starts ``command`` held before ``exec`` until the probes
   are armed, with a private directory in ``$TRACEKIT_LAYOUT_DIR`` where the built-in workload leaves
   its layout record (stored under manifest key ``workload``); a workload found by pid is asked for the record it publishes while it runs
   (:mod:`tracekit.workload.published`);
3. checks every probe of the requested families (``probes.failed`` in the manifest lists each absent
   probe with the reason; a family whose required tracepoints are absent is skipped);
4. chooses the backend (``auto``: bcc when it imports and headers exist, else tracefs, with a note
   in the manifest), attaches every probe disarmed, makes the ring readers, then arms every
   family at one instant (the recording window, manifest ``window``), hands the families the KVM ioctls
   ``/proc`` shows blocked on both sides of that instant (:mod:`tracekit.recorder.inflight`), and polls every
   ``poll_interval`` seconds: batches go straight into the writer, lost-event counters into
   ``writer.add_lost``;
5. stops at ``duration`` (CLOCK_MONOTONIC seconds from the arming), on SIGINT/SIGTERM/SIGHUP, or
   when the target exits; closes the window, detaches, drains, writes the end-of-run tables
   (aggregates, stacks, calls still running), the operations the window cut (manifest
   ``partial``), the target threads (vCPU ones marked), and closes the capture.

Whatever happens (exception, signal, disk full) the probes are detached, the tracefs instance is
removed, signal handlers are restored, a started command is stopped, and the capture is closed
(status ``aborted`` with the reason on error) so every finished segment stays readable. Stop signals
are only noted from the first line of :func:`record` to its last (:class:`StopRequests`): one that
comes before the capture is created raises :class:`tracekit.stopsignals.StopSignal` (nothing was
recorded), a later one stops the recording as above, and a second one only hurries the cleanup (the
command gets no grace period), never skips a step. Raises :class:`tracekit.errors.UsageError` for bad
arguments, :class:`MissingCapability` (also for a user without the privileges, in one line),
:class:`ProbeLoadError` and :class:`RecorderError` otherwise.
"""

from __future__ import annotations

import math
import os
import queue
import resource
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import pyarrow.compute as pc

from tracekit.capabilities import recording_blockers
from tracekit.host import Host, tracefs_root
from tracekit.capture import CaptureWriter
from tracekit.errors import MissingCapability, RecorderError, UsageError
from tracekit.memtune import keep_freed_memory
from tracekit.recorder.probe_family import ProbeFamily, ProbeStatus, RecordOptions
from tracekit.recorder.registry import make_family
from tracekit.recorder.inflight import blocked_kvm_ioctls, calls_in_flight
from tracekit.recorder.layoutdir import make_layout_dir, read_layout_record, reclaim_stale_layout_dirs
from tracekit.recorder.tally import VmTally
from tracekit.recorder.target import GatedChild, ThreadWatch, resolve_targets, spawn_gated, tgid_of, thread_info
from tracekit.recorder.output import OutputTee
from tracekit.recorder.backend_tracefs import cleanup_stale_instances, pid_alive
from tracekit.stopsignals import StopRequests
from tracekit.recorder.vcpus import VcpuFds
from tracekit.workload.published import LAYOUT_DIR_ENV, read_published_layout

__all__ = ["RecordConfig", "RecordSummary", "record", "plan_families", "DEFAULT_FAMILIES"]

DEFAULT_FAMILIES = ("walk", "ioctl", "lock", "mmu")


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


def _not_attached(failed: list[dict]) -> str:
    """Failures for the banner: a family that records nothing once, other probes one by one."""
    whole = {f["family"]: f["reason"] for f in failed if f["probe"].startswith("family:")}
    parts = [f"{name} ({reason})" for name, reason in whole.items()]
    parts += [f"{f['probe']} ({f['reason']})" for f in failed if f["family"] not in whole]
    return "; ".join(parts)


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


class _AsyncWriter:
    """Runs the capture writer's calls, in order, on one thread of their own.

    Parquet encoding and compression (which release the GIL) then never stall the ring drain.
    Memory stays bounded: :meth:`submit` blocks while more than ``max_rows`` rows wait. The first
    error of a call (disk full) is raised by the next :meth:`submit` or by :meth:`close`."""

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


class _Status:
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


def _choose_backend(name: str) -> tuple[str, str | None]:
    if name not in ("auto", "bcc", "tracefs"):
        raise UsageError(f"unknown backend {name!r} (use bcc, tracefs or auto)")
    if name != "auto":
        return name, None
    from tracekit.recorder.backend_bcc import import_bcc

    try:
        import_bcc()
    except MissingCapability as error:
        return "tracefs", f"bcc backend unavailable, used tracefs: {error}"
    return "bcc", None


def record(config: RecordConfig, stream: Any = sys.stderr, live_status: bool | None = None,
           on_attached: Callable[[], None] | None = None) -> RecordSummary:
    """Record as ``config`` says (see the module docstring); ``on_attached()`` runs once the probes are
    attached (before a command is released)."""
    with StopRequests(notify_fd=2 if stream is sys.stderr else None) as stopper:
        return _record(config, stream, live_status, on_attached, stopper)


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


def _record(config: RecordConfig, stream: Any, live_status: bool | None, on_attached: Callable[[], None] | None,
            stopper: StopRequests) -> RecordSummary:
    _check_config(config)
    pid_specs = _pid_specs(config)
    if config.duration is not None and math.isinf(config.duration):
        config = replace(config, duration=None)  # inf: until stopped
    blockers = recording_blockers(config.backend)
    if blockers:
        raise MissingCapability("cannot record as this user: " + "; ".join(blockers))
    output = Path(config.output)
    _check_output(output)
    keep_freed_memory()
    tracefs = tracefs_root()
    stale = cleanup_stale_instances(tracefs) if tracefs is not None else []
    stale_layouts = reclaim_stale_layout_dirs()
    host = Host(tracefs)
    plan, failed, requested = plan_families(tuple(config.families), host, config.options)
    if not plan:
        reasons = "; ".join(f"{f['probe']}: {f['reason']}" for f in failed if f["probe"].startswith("family:"))
        raise MissingCapability(f"no requested probe family can record on this host ({reasons})")
    backend_name, backend_note = _choose_backend(config.backend)
    if backend_name == "tracefs":
        unsupported = [f.name for f, _ in plan if not f.supports_tracefs()]
        for name in unsupported:
            failed.append({"probe": f"family:{name}", "family": name, "reason": "no tracefs decoder"})
        plan = [(f, s) for f, s in plan if f.supports_tracefs()]
        if not plan:
            raise MissingCapability("none of the requested families can record through tracefs")

    if stopper.reason:
        raise stopper.stopped_early("recording began; no capture written")
    child: GatedChild | None = None
    layout_dir: str | None = None
    command = list(config.command)
    backend: Any = None
    status = _Status(stream, config.status_interval, _live_status_wanted(stream, live_status, bool(command)))
    rusage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    stop_reason = "unknown"
    command_exit = None
    threads: dict[int, dict] = {}
    writer: CaptureWriter | None = None
    recording_rss = 0
    tally = VmTally()
    cleanup_failure: BaseException | None = None
    tee: OutputTee | None = None
    try:
        if command:
            tee = OutputTee(2 if config.command_stdout_to_stderr else 1)
            layout_dir = make_layout_dir()  # the built-in workload writes its layout record there
            child = spawn_gated(command, env={**os.environ, LAYOUT_DIR_ENV: layout_dir}, stdout_fd=tee.child_fd)
            tee.child_started()
            target = {"pids": [child.pid], "comm": os.path.basename(command[0]), "name": None}
        else:
            found = resolve_targets(pid_specs, all_vms=config.all_vms)
            target = {"pids": [t.pid for t in found], "comm": found[0].comm, "name": found[0].guest,
                      "vms": [t.to_json() for t in found]}
        tgids = target["pids"]
        watch = ThreadWatch(tgids)
        _merge_threads(threads, watch.refresh(full=True)[0])
        if child is not None and child.pid in threads:
            threads[child.pid]["pre_exec"] = True  # its name until the exec (this recorder's)
        vcpus = VcpuFds(tgids)
        vcpus.scan()
        if backend_name == "bcc":
            from tracekit.recorder.backend_bcc import BccBackend

            backend = BccBackend(plan, tgids)
        else:
            from tracekit.recorder.backend_tracefs import TracefsBackend

            backend = TracefsBackend(tracefs, plan, tgids, sorted(threads) or tgids)
        manifest = {
            "target": {**target, "threads": []},
            "probes": {"requested": requested, "attached": [], "failed": failed,
                       "families": [f.name for f, _ in plan]},
            "backend": backend_name,
            "command_line": config.command_line or sys.argv,
            "source": {"kind": "live", "description": "tracekit record on this host"},
            "recorder": {"pid": os.getpid(), "stale_tracefs_instances_removed": stale,
                         "stale_layout_dirs_removed": stale_layouts},
        }
        if backend_note:
            manifest["backend_note"] = backend_note
        if stopper.reason:
            raise stopper.stopped_early("recording began; no capture written")
        writer = CaptureWriter(output, manifest, segment_seconds=config.segment_seconds)
        with writer:
            for family, _ in plan:
                for table, schema in family.tables().items():
                    writer.declare(table, schema)
            backend.start()  # every probe attached, disarmed: nothing recorded yet
            rusage0 = resource.getrusage(resource.RUSAGE_SELF)  # recorder CPU counts from here, not the compile
            writer.update_manifest(probes={**writer.manifest["probes"], "attached": backend.attached})
            sink = _AsyncWriter(writer)
            lost: dict[tuple[str, int], int] = {}

            next_lost = [0.0]

            def deliver(batches: list, final: bool = False) -> None:
                for _family, tables in batches:
                    for name, table in tables.items():
                        if table.num_rows:
                            sink.submit(writer.append, name, table, rows=table.num_rows)
                            status.count(name, table.num_rows)
                            tally.add(name, table)
                            _note_event_threads(threads, table)
                            vcpus.observe(name, table)
                if not final and time.monotonic() < next_lost[0]:
                    return
                next_lost[0] = time.monotonic() + 0.25  # counters are cumulative: reading them often buys nothing
                for probe, cpu, count in backend.lost():
                    if lost.get((probe, cpu)) != count:
                        lost[(probe, cpu)] = count
                        sink.submit(writer.add_lost, probe, cpu, count)

            try:
                # One step for every family: the readers exist, the window opens; the duration counts from here.
                blocked = blocked_kvm_ioctls(tgids)  # calls in flight as the window opens: read on both sides
                window_start = backend.arm()
                in_flight = calls_in_flight(blocked, blocked_kvm_ioctls(tgids))
                for family, _ in plan:
                    family.open_in_flight(in_flight, window_start)
                t0 = window_start / 1e9
                status.say(_banner(target, backend_name, plan, backend.attached, output, config.duration))
                if failed:
                    status.say("Not attached: " + _not_attached(failed))
                if on_attached is not None:
                    on_attached()
                if child is not None and not stopper.reason:  # stopped while attaching: it never runs
                    child.release()
                next_threads = time.monotonic() + 0.05
                next_fd_scan = next_threads + 1.0
                while True:
                    now = time.monotonic()
                    deliver(backend.poll())
                    sink.submit(writer.tick)
                    status.maybe_show(sum(lost.values()), lambda: _dir_bytes(output))
                    if now >= next_threads:
                        recording_rss = max(recording_rss, _vm_rss_kb())
                        seen, settling = watch.refresh()
                        _merge_threads(threads, seen)
                        if settling or now >= next_fd_scan:  # a new thread may open a vCPU fd; else now and then
                            vcpus.scan()
                            next_fd_scan = now + 1.0
                        next_threads = now + 0.05
                    if stopper.reason:
                        stop_reason = stopper.reason
                        break
                    if config.duration is not None and time.monotonic() - t0 >= config.duration:
                        stop_reason = "duration"
                        break
                    if child is not None and child.poll() is not None:
                        command_exit = child.returncode
                        stop_reason = "command exited"
                        break
                    if child is None and not any(_running(pid) for pid in tgids):
                        stop_reason = "target exited"
                        break
                    time.sleep(_next_sleep(config.poll_interval, config.duration, t0))
                batches, finals = backend.stop()  # closes the window first
                deliver(batches + finals, final=True)
            finally:
                sink.close()
            notes: dict[str, Any] = {}
            partial: dict[str, int] = {}
            for family, _ in plan:
                notes.update(family.manifest_notes())
                partial.update(family.partial_counts())
            _merge_threads(threads, watch.refresh(full=True)[0])
            vcpus.scan()
            if child is not None and child.released and child.poll() is None and stop_reason != "command exited":
                child.terminate(_grace(stopper), lambda: stopper.hurry)
                command_exit = child.returncode
            workload = read_layout_record(layout_dir, child.pid) if child is not None and layout_dir else None
            if workload is None and len(tgids) == 1:  # one workload: its model applies to all
                workload = read_published_layout(tgids[0])
            extra: dict[str, Any] = {"workload": workload} if workload is not None else {}
            if tee is not None:
                extra["command_output"] = tee.finish()
            if child is not None:
                _name_exec(threads, child)
            _merge_threads(threads, [  # the workload's own record: threads too short-lived for /proc
                {"tid": v["tid"], "comm": str(v.get("thread_name", "")), "vcpu": v.get("index")}
                for v in (workload or {}).get("vcpus", []) if isinstance(v, dict) and isinstance(v.get("tid"), int)])
            vcpus.mark_threads(threads)
            writer.update_manifest(
                target={**target, "threads": sorted(threads.values(), key=lambda t: t["tid"]),
                        "vcpu_fds": vcpus.manifest()},
                stop_reason=stop_reason, command_exit=command_exit, family_notes=notes,
                window=_window_record(backend.window), partial=partial,
                bytes_read=backend.bytes_read(), foreign_events_dropped=getattr(backend, "foreign_events", 0),
                **_ring_diagnostics(backend), **extra)
    finally:
        cleanup_failure = _release_resources(backend, child, layout_dir, stopper)
        if tee is not None:
            tee.finish(timeout=0)
    if cleanup_failure is not None:  # only when nothing else failed: that error is the one to report
        raise RecorderError(f"cleanup after the recording failed: {cleanup_failure}") from cleanup_failure
    rusage1 = resource.getrusage(resource.RUSAGE_SELF)
    rows = {name: writer.rows(name) for name in writer.families()} if writer else {}
    summary = RecordSummary(
        output=str(output), backend=backend_name, target={"pid": target["pids"][0], "pids": target["pids"], "comm": target["comm"]},
        seconds=round(_window_seconds(backend) or time.monotonic() - t0, 3), rows=rows, lost=writer.lost_total() if writer else 0,
        bytes_written=_dir_bytes(output), stop_reason=stop_reason, attached=list(backend.attached if backend else []),
        failed=failed, command_exit=command_exit,
        recorder_cpu_s=round(rusage1.ru_utime + rusage1.ru_stime - rusage0.ru_utime - rusage0.ru_stime, 3),
        peak_rss_kb=rusage1.ru_maxrss, recording_rss_kb=max(recording_rss, _vm_rss_kb()),
    )
    if writer is not None:
        vms = target.get("vms") or [{"pid": pid, "comm": target["comm"] if i == 0 else "", "name": target["name"]
                                     if i == 0 else None} for i, pid in enumerate(target["pids"])]
        status.say(tally.render(vms))
    status.say(f"Stopped ({stop_reason}) after {summary.seconds:.1f} s: "
               + (", ".join(f"{n} {r:,}" for n, r in rows.items() if r) or "no events")
               + f"; lost {summary.lost}; {summary.bytes_written / 1e6:.1f} MB in {output}"
               + "".join(f"; {f['family']} not recorded" for f in failed if f["probe"].startswith("family:")))
    return summary


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


def _live_status_wanted(stream: Any, asked: bool | None, runs_command: bool) -> bool:
    """The live status line only on a terminal, and never beside a traced command's own output (it
    shares the terminal and would write into the middle of its lines): ``asked`` overrides."""
    if stream is None:
        return False
    if asked is not None:
        return asked
    return bool(getattr(stream, "isatty", lambda: False)()) and not runs_command


def _banner(target: dict, backend_name: str, plan: list, attached: list[str], output: Path,
            duration: float | None) -> str:
    return (f"Tracing {_targets_text(target)} with {backend_name}: "
            f"{', '.join(f.name for f, _ in plan)} ({len(attached)} tracepoints) into {output}"
            + (f" for {duration:g} s of CLOCK_MONOTONIC from the moment every probe is armed" if duration else "")
            + ". Hit Ctrl-C to stop.")


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


def _note_event_threads(threads: dict[int, dict], table: Any) -> None:
    """Add the threads that produced events but were never seen in /proc (too short-lived)."""
    if "tid" not in table.column_names:
        return
    for tid in set(pc.unique(table.column("tid")).to_pylist()) - threads.keys() - {0}:  # a hash, not a sort
        threads[tid] = thread_info(tgid_of(tid) or tid, tid)


def _targets_text(target: dict) -> str:
    """``pid 1234 (qemu-system-x86, guest vm1)`` for each recorded process."""
    vms = target.get("vms") or [{"pid": target["pids"][0], "comm": target["comm"], "name": target["name"]}]
    return ", ".join(f"pid {vm['pid']} ({vm['comm']}{', guest ' + vm['name'] if vm.get('name') else ''})" for vm in vms)


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
