"""The recording loop's safety and bookkeeping with a fake backend (no kernel, no root).

A fake backend hands out one synthetic walk batch per poll; the tests check that the capture holds
it, that a failing disk aborts the capture while keeping finished segments and still closes the
backend, and that a signal stops the loop cleanly.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests.livecheck import ignores_sigterm
from tracekit import schema as S
from tracekit.capture import open_capture
from tracekit.capture.writer import CaptureWriter, CaptureWriteError
from tracekit.recorder import session, target
from tracekit.recorder.tracepoint_families import WalkFamily
from tracekit.recorder.layoutdir import LAYOUT_PREFIX
from tracekit.recorder.status import live_status_wanted
from tracekit.recorder.probe_family import ProbeStatus


class FakeBackend:
    name = "bcc"
    instances: list["FakeBackend"] = []

    def __init__(self, plan, tgid):
        self.family = plan[0][0]
        self.tgid = tgid
        self.attached = ["kvmmmu:kvm_mmu_pagetable_walk"]
        self.polls = 0
        self.closed = False
        self.steps: list[str] = []
        self.window: dict[str, int] = {}
        FakeBackend.instances.append(self)

    def start(self):
        self.steps.append("start")

    def arm(self):
        self.steps.append("arm")
        self.window = {"start_ns": time.monotonic_ns()}
        return self.window["start_ns"]

    def disarm(self):
        if "stop_ns" not in self.window:
            self.steps.append("disarm")
            self.window["stop_ns"] = time.monotonic_ns()
        return self.window["stop_ns"]

    def poll(self):
        self.steps.append("poll")
        self.polls += 1
        rec = np.zeros(4, S.WALK_EVENT_DTYPE)
        rec["hdr"]["ts_ns"] = self.polls * 10 + np.arange(4)
        rec["hdr"]["kind"] = [0, 1, 1, 1]
        rec["hdr"]["pid"] = rec["hdr"]["tid"] = self.tgid
        rec["walk_id"] = self.polls
        rec["index"] = [0, 0, 1, 2]
        return [(self.family, self.family.decode("walk_events", rec))]

    def lost(self):
        return [("kvmmmu:kvm_mmu_paging_element", 1, 2)]

    def stop(self):
        self.disarm()
        self.steps.append("stop")
        return [], []

    def bytes_read(self):
        return 0

    def close(self):
        self.closed = True


@pytest.fixture
def fake(monkeypatch):
    FakeBackend.instances = []
    family = WalkFamily()
    statuses = [ProbeStatus(tp, True) for tp in family.tracepoints]
    monkeypatch.setattr(session, "plan_families", lambda names, host, options: ([(family, statuses)], [], list(family.tracepoints)))
    monkeypatch.setattr(session, "_choose_backend", lambda name: ("bcc", None))
    monkeypatch.setattr(session, "BccBackend", FakeBackend)
    monkeypatch.setattr(target, "kvm_fds", lambda pid: (1, 1))  # the processes recorded here stand for VMMs
    monkeypatch.setattr(session, "recording_blockers", lambda backend: [])  # also as a user without privileges
    return FakeBackend


def test_records_batches_lost_counters_and_threads(fake, tmp_path):
    out = tmp_path / "fake.tkcap"
    summary = session.record(session.RecordConfig(output=out, pid_spec=str(os.getpid()), duration=0.3,
                                                  poll_interval=0.01), stream=None)
    backend = fake.instances[0]
    assert backend.closed and summary.stop_reason == "duration"
    cap = open_capture(out)
    assert cap.manifest["status"] == "complete" and cap.manifest["backend"] == "bcc"
    assert cap.rows("walk") == backend.polls and cap.rows("walk_element") == 3 * backend.polls
    assert cap.manifest["lost"] == [{"probe": "kvmmmu:kvm_mmu_paging_element", "cpu": 1, "count": 2}]
    assert os.getpid() in {t["tid"] for t in cap.manifest["target"]["threads"]}
    assert cap.manifest["probes"]["attached"] == ["kvmmmu:kvm_mmu_pagetable_walk"]


def test_every_family_is_armed_once_after_attaching_and_the_window_is_recorded(fake, tmp_path):
    out = tmp_path / "window.tkcap"
    summary = session.record(session.RecordConfig(output=out, pid_spec=str(os.getpid()), duration=0.2,
                                                  poll_interval=0.01), stream=None)
    steps = fake.instances[0].steps
    assert steps[:3] == ["start", "arm", "poll"] and steps[-2:] == ["disarm", "stop"]
    assert steps.count("arm") == 1 and "poll" not in steps[steps.index("disarm"):]
    window = open_capture(out).manifest["window"]
    assert window["clock"] == "CLOCK_MONOTONIC" and window["stop_ns"] - window["start_ns"] >= 0.2e9
    assert summary.seconds == pytest.approx(window["seconds"], abs=1e-3)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_status_line_goes_only_to_a_terminal_and_never_beside_a_command():
    assert live_status_wanted(_Terminal(), None, runs_command=False)
    assert not live_status_wanted(_Terminal(), None, runs_command=True)  # the command shares it
    assert not live_status_wanted(io.StringIO(), None, runs_command=False)  # a pipe or a file
    assert not live_status_wanted(None, True, runs_command=False)


def test_the_banner_names_the_clock_of_the_duration(fake, tmp_path):
    stream = io.StringIO()
    session.record(session.RecordConfig(output=tmp_path / "b.tkcap", pid_spec=str(os.getpid()), duration=0.1,
                                        poll_interval=0.01), stream=stream)
    banner = stream.getvalue().splitlines()[0]
    assert "for 0.1 s of CLOCK_MONOTONIC from the moment every probe is armed" in banner
    assert "\r" not in stream.getvalue()  # not a terminal: no live status line


def test_disk_full_aborts_but_keeps_finished_segments(fake, tmp_path, monkeypatch):
    original = CaptureWriter._close_segment
    calls = {"n": 0}

    def failing_close(self, family):
        if family == "walk" and self._families[family].buffers:
            calls["n"] += 1
            if calls["n"] > 1:
                raise CaptureWriteError("cannot write segment: No space left on device")
        return original(self, family)

    monkeypatch.setattr(CaptureWriter, "_close_segment", failing_close)
    out = tmp_path / "full.tkcap"
    with pytest.raises(CaptureWriteError, match="No space left"):
        session.record(session.RecordConfig(output=out, pid_spec=str(os.getpid()), duration=5,
                                            segment_seconds=0.05, poll_interval=0.01), stream=None)
    assert fake.instances[0].closed
    cap = open_capture(out)
    assert cap.manifest["status"] == "aborted" and "No space left" in cap.manifest["status_reason"]
    assert cap.rows("walk") >= 1  # the first segment was written before the disk "filled"


def test_sigterm_stops_the_loop(fake, tmp_path, monkeypatch):
    out = tmp_path / "term.tkcap"
    _signal_at_first_poll(monkeypatch, signal.SIGTERM)
    before = signal.getsignal(signal.SIGTERM)
    summary = session.record(session.RecordConfig(output=out, pid_spec=str(os.getpid()), duration=30,
                                                  poll_interval=0.01), stream=None)
    assert summary.stop_reason == "SIGTERM" and signal.getsignal(signal.SIGTERM) is before
    assert open_capture(out).manifest["status"] == "complete"


WRITE_LAYOUT = ("import json; from tracekit.workload.published import recorder_layout_path; "
                "json.dump({'vcpus': [{'index': 0, 'tid': 1, 'thread_name': 'tk-vcpu-0'}]}, open(recorder_layout_path(), 'w'))")


def test_a_started_command_gets_a_layout_directory_in_its_environment_and_its_record_is_kept(fake, tmp_path):
    """The workload's layout comes through $TRACEKIT_LAYOUT_DIR whatever the command line looks like (here
    the workload's own writer under a plain python), and the directory is gone afterwards."""
    argv = [sys.executable, "-c", WRITE_LAYOUT]
    summary = session.record(session.RecordConfig(output=tmp_path / "wl.tkcap", command=argv, poll_interval=0.01),
                             stream=None)
    assert summary.stop_reason == "command exited" and summary.command_exit == 0
    manifest = open_capture(tmp_path / "wl.tkcap").manifest
    assert manifest["workload"] == {"vcpus": [{"index": 0, "tid": 1, "thread_name": "tk-vcpu-0"}]}
    assert not list(Path(tempfile.gettempdir()).glob(f"{LAYOUT_PREFIX}{os.getpid()}-*"))


def test_a_command_that_leaves_no_layout_gives_no_workload_record(fake, tmp_path):
    session.record(session.RecordConfig(output=tmp_path / "nl.tkcap", command=["true"], poll_interval=0.01), stream=None)
    assert "workload" not in open_capture(tmp_path / "nl.tkcap").manifest


def test_a_thread_renamed_to_a_vcpu_name_is_marked():
    threads: dict[int, dict] = {}
    session._merge_threads(threads, [{"tid": 7, "comm": "tracekit", "vcpu": None}])
    session._merge_threads(threads, [{"tid": 7, "comm": "tk-vcpu-0", "vcpu": 0}])
    session._merge_threads(threads, [{"tid": 7, "comm": "other", "vcpu": None}])
    assert threads == {7: {"tid": 7, "comm": "tk-vcpu-0", "vcpu": 0}}


def test_stops_when_the_target_exits(fake, tmp_path):
    import subprocess
    import sys

    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.4)"])
    try:
        summary = session.record(session.RecordConfig(output=tmp_path / "gone.tkcap", pid_spec=str(target.pid),
                                                      duration=30, poll_interval=0.01), stream=None)
    finally:
        target.wait()
    assert summary.stop_reason == "target exited"
    assert open_capture(tmp_path / "gone.tkcap").manifest["stop_reason"] == "target exited"


def test_threads_seen_only_in_events_join_the_thread_list():
    import pyarrow as pa

    threads = {1: {"tid": 1, "comm": "main", "vcpu": None}}
    session._note_event_threads(threads, pa.table({"tid": pa.array([1, 999999, 0], pa.int32())}))
    assert threads[999999] == {"pid": None, "tid": 999999, "comm": "", "vcpu": None} and 0 not in threads
    session._note_event_threads(threads, pa.table({"tid": pa.array([999998], pa.int32()),
                                                   "pid": pa.array([999990], pa.int32())}))
    assert threads[999998] == {"pid": 999990, "tid": 999998, "comm": "", "vcpu": None}  # its events' process


def test_event_times_are_kept_for_threads_no_listing_showed():
    """A thread found in events keeps its first and last event time until a /proc listing shows it."""
    import pyarrow as pa

    def events(tid, *times):
        return pa.table({"ts_ns": pa.array(times, pa.int64()), "pid": pa.array([7] * len(times), pa.int32()),
                         "tid": pa.array([tid] * len(times), pa.int32())})

    threads, seen, listed = {1: {"tid": 1, "comm": "main", "vcpu": None}}, {}, {1: [0, 0]}
    session._note_event_threads(threads, events(999997, 50, 20, 40), seen, listed)
    session._note_event_threads(threads, events(999997, 90, 10), seen, listed)
    session._note_event_threads(threads, events(1, 5, 500), seen, listed)  # listed: not followed
    assert seen == {999997: [10, 90]} and threads[999997]["pid"] == 7
    listed[999997] = [60, 60]
    session._note_event_threads(threads, events(999997, 1000), seen, listed)
    assert seen == {999997: [10, 90]}


def test_auto_backend_falls_back_to_tracefs_with_a_note(monkeypatch):
    from tracekit.errors import MissingCapability, UsageError

    def no_bcc():
        raise MissingCapability("bcc backend unavailable: bcc is not installed; fix: apt-get install python3-bpfcc")

    monkeypatch.setattr(session, "import_bcc", no_bcc)
    backend, note = session._choose_backend("auto")
    assert backend == "tracefs" and "python3-bpfcc" in note
    assert session._choose_backend("bcc") == ("bcc", None)
    with pytest.raises(UsageError, match="unknown backend"):
        session._choose_backend("perf")


def test_an_infinite_duration_records_until_stopped(fake, tmp_path, monkeypatch):
    import io

    stream = io.StringIO()
    _signal_at_first_poll(monkeypatch, signal.SIGTERM)
    summary = session.record(session.RecordConfig(output=tmp_path / "endless.tkcap", pid_spec=str(os.getpid()),
                                                  duration=float("inf"), poll_interval=0.01), stream=stream)
    assert summary.stop_reason == "SIGTERM" and " for " not in stream.getvalue()  # no "for inf s"


def test_a_signal_before_the_capture_exists_stops_with_nothing_written(fake, tmp_path, monkeypatch):
    from tracekit.stopsignals import StopSignal

    resolve = session.resolve_targets

    def signalled_while_resolving(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # noted, never raised inside the recorder
        return resolve(*args, **kwargs)

    monkeypatch.setattr(session, "resolve_targets", signalled_while_resolving)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StopSignal, match="stopped by SIGTERM before recording began") as stop:
        session.record(session.RecordConfig(output=tmp_path / "early.tkcap", pid_spec=str(os.getpid())), stream=None)
    assert stop.value.exit_code == 128 + signal.SIGTERM
    assert not (tmp_path / "early.tkcap").exists() and signal.getsignal(signal.SIGTERM) is before


def test_a_signal_while_attaching_keeps_the_command_from_running(fake, tmp_path, monkeypatch):
    ran = tmp_path / "ran"
    monkeypatch.setattr(FakeBackend, "start", lambda self: os.kill(os.getpid(), signal.SIGINT))
    summary = session.record(session.RecordConfig(output=tmp_path / "att.tkcap", command=["touch", str(ran)],
                                                  poll_interval=0.01), stream=None)
    assert summary.stop_reason == "SIGINT" and summary.command_exit is None
    assert not ran.exists()
    assert open_capture(tmp_path / "att.tkcap").manifest["status"] == "complete"


def test_a_second_signal_during_cleanup_interrupts_nothing(fake, tmp_path, monkeypatch):
    """The first SIGINT stops the loop; a second one arrives inside the backend's stop (where bcc
    detaches): the stop finishes, the capture is complete and the command is stopped at once."""
    steps = []

    def stop_with_a_second_signal(self):
        os.kill(os.getpid(), signal.SIGINT)
        steps.append("stop finished")
        return [], []

    monkeypatch.setattr(FakeBackend, "stop", stop_with_a_second_signal)
    children = []
    real_spawn = session.spawn_gated
    monkeypatch.setattr(session, "spawn_gated", lambda *a, **k: children.append(real_spawn(*a, **k)) or children[-1])
    _signal_at_first_poll(monkeypatch, signal.SIGINT, when=lambda: ignores_sigterm(children[0].pid))
    summary = session.record(session.RecordConfig(output=tmp_path / "two.tkcap", poll_interval=0.01,
                                                  command=[sys.executable, "-c", IGNORE_SIGTERM]), stream=None)
    assert steps == ["stop finished"] and FakeBackend.instances[-1].closed
    assert summary.stop_reason == "SIGINT" and summary.command_exit == -signal.SIGKILL  # no 3 s grace
    assert open_capture(tmp_path / "two.tkcap").manifest["status"] == "complete"


def _signal_at_first_poll(monkeypatch, signum: int, when=lambda: True) -> None:
    """Send ``signum`` to this process from the recorder's first poll at which ``when()`` holds: once
    it records, however long its start took (a fixed timer fired before the handlers were in place on
    a loaded host)."""
    poll = FakeBackend.poll
    sent = []

    def poll_then_signal(self):
        if not sent and when():
            sent.append(signum)
            os.kill(os.getpid(), signum)
        return poll(self)

    monkeypatch.setattr(FakeBackend, "poll", poll_then_signal)


IGNORE_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


def test_a_failing_cleanup_step_still_stops_the_command(fake, tmp_path, monkeypatch):
    from tracekit.errors import RecorderError

    def broken_close(self):
        raise Exception("Failed to detach BPF from tracepoint")  # what bcc raises

    monkeypatch.setattr(FakeBackend, "close", broken_close)
    children = []
    real_spawn = session.spawn_gated
    monkeypatch.setattr(session, "spawn_gated", lambda *a, **k: children.append(real_spawn(*a, **k)) or children[-1])
    _signal_at_first_poll(monkeypatch, signal.SIGINT)
    with pytest.raises(RecorderError, match="cleanup after the recording failed: Failed to detach"):
        session.record(session.RecordConfig(output=tmp_path / "bad.tkcap", poll_interval=0.01,
                                            command=["sleep", "60"]), stream=None)
    assert children[0].returncode is not None  # stopped and reaped
    assert open_capture(tmp_path / "bad.tkcap").manifest["status"] == "complete"


def test_a_started_command_is_named_as_it_execs():
    """Seen only before its exec (as the recorder's fork), the main thread takes the exec'd name."""
    threads: dict[int, dict] = {}
    session._merge_threads(threads, [{"tid": 9, "comm": "tracekit", "vcpu": None}])
    threads[9]["pre_exec"] = True
    child = type("Child", (), {"pid": 9, "exec_name": "dirty_log_perf_"})()
    session._name_exec(threads, child)
    assert threads == {9: {"tid": 9, "comm": "dirty_log_perf_", "vcpu": None}}
    session._merge_threads(threads, [{"tid": 9, "comm": "renamed", "vcpu": None}])
    assert threads[9]["comm"] == "renamed"


def test_the_steps_can_be_driven_one_by_one(fake, tmp_path):
    """plan chooses without starting anything; attach creates the capture and arms the window before the
    command runs; each poll drains one batch; finish closes the window and the capture."""
    from tracekit.stopsignals import StopRequests

    ran = tmp_path / "ran"
    out = tmp_path / "steps.tkcap"
    with StopRequests() as stopper:
        recording = session.Recording(session.RecordConfig(output=out, command=["touch", str(ran)]), stopper,
                                      stream=None)
        recording.plan()
        assert [f.name for f, _ in recording.chosen] == ["walk"] and recording.backend_name == "bcc"
        assert not out.exists() and recording.child is None and not fake.instances
        with recording:
            recording.attach()
            backend = fake.instances[0]
            assert backend.steps == ["start", "arm"] and recording.child.released
            assert open_capture_manifest(out)["status"] == "recording"
            assert recording.poll() is None and backend.polls == 1
            while recording.poll() is None:
                recording.pause()
            assert recording.stop_reason == "command exited" and recording.command_exit == 0 and ran.exists()
            recording.finish()
            assert backend.steps[-2:] == ["disarm", "stop"] and not backend.closed  # closed on leaving the block
        assert backend.closed
        summary = recording.summary()
    cap = open_capture(out)
    assert cap.manifest["status"] == "complete" and cap.rows("walk") == backend.polls == summary.rows["walk"]


def open_capture_manifest(path: Path) -> dict:
    import json

    return json.loads((path / "capture.json").read_text())


@pytest.mark.parametrize("script, status, line", [
    ("exit 3", 3, "the traced command exited with 3"),
    ("kill -SEGV $$", 128 + signal.SIGSEGV, "the traced command was killed by SIGSEGV"),
    ("exit 0", 0, None),
])
def test_a_failing_command_gives_tracekit_its_exit_status_and_a_complete_capture(fake, tmp_path, script, status, line):
    """``tracekit record -- CMD`` as a user types it: a command that fails passes its status on (128 + N
    for signal N, as a shell, ``time`` and ``strace`` do), with one line; the capture is complete."""
    from typer.testing import CliRunner

    from tracekit.cli import app

    out = tmp_path / "cmd.tkcap"
    result = CliRunner().invoke(app, ["record", "-q", "-o", str(out), "--", "sh", "-c", script])
    assert result.exit_code == status, result.output
    lines = [text for text in result.stderr.splitlines() if text.startswith("tracekit:")]
    assert lines == ([] if line is None else [f"tracekit: error: {line}; the capture {out} is complete"])
    manifest = open_capture(out).manifest
    assert manifest["status"] == "complete" and manifest["command_exit"] == (status if status < 128 else -signal.SIGSEGV)


def test_a_command_stopped_by_the_recorder_is_no_failure():
    """The duration or a signal ended the recording and the recorder stopped the command: exit 0."""
    summary = session.RecordSummary(output="x", backend="bcc", target={}, seconds=1.0, rows={}, lost=0,
                                    bytes_written=0, stop_reason="SIGINT", attached=[], failed=[],
                                    command_exit=-signal.SIGKILL)
    assert summary.command_failure() is None
    summary.stop_reason, summary.command_exit = "command exited", -99  # no such signal: its number
    assert summary.command_failure() == (128 + 99, "was killed by signal 99")
