"""``tracekit top`` on a running built-in workload, checked against a recording of the same run.

The workload (2 vCPUs dirtying 64 MiB over and over) runs first; a ``tracekit record --probes walk``
records it while top watches it, so every walk top counts is also a row of the capture with its
CLOCK_MONOTONIC time, the clock of top's readings: top's numbers must equal the capture's over the
same window (``--once --json`` gives the window exactly), and the screen drawn in tmux must show rates
the capture saw over some interval-long window while top ran.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.livecheck import interrupt_and_reap, skip_or_fail
from tests.recorder.test_live import _need
from tracekit.capture import open_capture
from tracekit.recorder.target import kvm_fds, list_threads

pytestmark = [pytest.mark.live, pytest.mark.slow]
TRACEKIT = str(Path(sys.executable).with_name("tracekit"))


@pytest.fixture
def recorded_workload(tmp_path):
    """A running 2-vCPU workload and a walk recording of it (bcc) that runs until the test stops it;
    yields (pid, vcpu tids, capture path, recorder process); stops both."""
    _need("bcc")
    workload = subprocess.Popen([TRACEKIT, "workload", "dirty-log", "-v", "2", "-b", "64M", "-i", "100000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "walks.tkcap"
    recorder = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (kvm_fds(workload.pid)[1] < 2 or
                                               len([t for t in list_threads(workload.pid) if t["vcpu"] is not None]) < 2):
            assert workload.poll() is None, "the workload exited"
            time.sleep(0.1)
        vcpus = {t["tid"]: t["vcpu"] for t in list_threads(workload.pid) if t["vcpu"] is not None}
        recorder = subprocess.Popen([TRACEKIT, "record", "-q", "--backend", "bcc", "--probes", "walk", "-p",
                                     str(workload.pid), "-d", "300", "--segment-seconds", "0.5", "-o", str(out)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while time.monotonic() < deadline + 30 and not list(out.glob("walk/part-*.parquet")):
            assert recorder.poll() is None, recorder.stderr.read().decode()
            time.sleep(0.1)
        yield workload.pid, vcpus, out, recorder
    finally:
        if recorder is not None and recorder.poll() is None:
            recorder.send_signal(signal.SIGINT)
            recorder.wait(60)
        interrupt_and_reap(workload, 30)


def _recorded_walk_times(out: Path, recorder: subprocess.Popen, window: tuple[float, float]) -> dict[int, np.ndarray]:
    """Walk times per thread of the recording, stopped now (Ctrl-C); it covered ``window`` (CLOCK_MONOTONIC ns)."""
    recorder.send_signal(signal.SIGINT)
    assert recorder.wait(60) == 0, recorder.stderr.read().decode()
    walks = open_capture(out).dataframe("walk", ["ts_ns", "tid"])
    assert len(walks) and walks.ts_ns.min() < window[0] and walks.ts_ns.max() > window[1]
    return {int(tid): np.sort(group.ts_ns.to_numpy()) for tid, group in walks.groupby("tid")}


def test_once_json_equals_the_recording_over_its_window(recorded_workload):
    pid, vcpus, out, recorder = recorded_workload
    proc = subprocess.run([TRACEKIT, "top", "--once", "--json", "--backend", "bcc", "-p", str(pid), "-i", "3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "tracekit.top/1" and [vm["pid"] for vm in doc["vms"]] == [pid]
    vm = doc["vms"][0]
    assert {v["tid"]: v["vcpu"] for v in vm["vcpus"]} == vcpus
    start, end = doc["t_ns"] - doc["interval_s"] * 1e9, doc["t_ns"]
    times = _recorded_walk_times(out, recorder, (start, end))
    total = 0
    for v in vm["vcpus"]:
        recorded = int(((times[v["tid"]] > start) & (times[v["tid"]] <= end)).sum())
        shown = v["walks_s"] * doc["interval_s"]
        total += recorded
        assert recorded > 1000, "the workload should fault thousands of pages a second"
        assert abs(shown - recorded) <= 20 + 0.01 * recorded, (v, recorded)  # maps read ~1 ms after t_ns
        assert v["depth"] == pytest.approx(3.0, abs=0.01) and v["wp_faults_s"] > 0
        assert 0.2 < v["run_share"] <= 1.0
    assert abs(vm["walks_s"] * doc["interval_s"] - total) <= 40 + 0.01 * total
    assert vm["get"]["count"] > 0 and vm["get"]["p50_ns"] <= vm["get"]["p99_ns"]


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


_SCALE = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}


def _rate(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)([kMG]?)", text)
    assert match, text
    return float(match.group(1)) * _SCALE[match.group(2)]


def test_top_in_tmux_shows_the_vcpus_at_the_recorded_rates(recorded_workload, tmp_path):
    if shutil.which("tmux") is None:
        skip_or_fail("tmux is not installed (scripts/install.sh installs it)")
    pid, vcpus, out, recorder = recorded_workload
    session = f"tk-top-{os.getpid()}"
    began = time.monotonic_ns()
    _tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "40", f"{TRACEKIT} top -p {pid} -i 1 --backend bcc")
    try:
        _tmux("set-option", "-t", session, "remain-on-exit", "on")
        screen, deadline = "", time.monotonic() + 60
        while time.monotonic() < deadline and "tracekit top - 1 VM(s), interval" not in screen:
            time.sleep(0.5)
            screen = _tmux("capture-pane", "-p", "-t", session)
        time.sleep(2.5)
        screen = _tmux("capture-pane", "-p", "-t", session)
        shown_at = time.monotonic_ns()
        lines = screen.splitlines()
        assert any(line.startswith(f"VM {pid} ") for line in lines), screen
        rows = {int(line.split()[1]): line.split() for line in lines
                if re.match(r"^\d+\s+\d+\s", line) and int(line.split()[1]) in vcpus}
        assert {tid: int(row[0]) for tid, row in rows.items()} == vcpus, screen
        _tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _tmux("display-message", "-p", "-t", session, "#{pane_dead}").strip() != "1":
            time.sleep(0.2)
        final = _tmux("capture-pane", "-p", "-t", session)
        assert "Totals over" in final and f"{pid} tracekit" in final, final
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    times = _recorded_walk_times(out, recorder, (began, shown_at))
    for tid, row in rows.items():
        shown = _rate(row[2])  # walks/s of the last interval drawn before the capture
        ends = np.arange(began + 1_000_000_000, shown_at, 50_000_000)  # every 1 s window while top ran
        counts = np.searchsorted(times[tid], ends) - np.searchsorted(times[tid], ends - 1_000_000_000)
        assert len(counts) and counts.min() * 0.95 - 50 <= shown <= counts.max() * 1.05 + 50, (tid, shown, counts)


def test_tracefs_fallback_counts_the_same_vcpus(recorded_workload):
    pid, vcpus, out, recorder = recorded_workload
    proc = subprocess.Popen([TRACEKIT, "top", "--once", "--json", "--backend", "tracefs", "-p", str(pid), "-i", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    vm = json.loads(stdout)["vms"][0]
    assert {v["tid"] for v in vm["vcpus"] if v["walks_s"] > 0} == set(vcpus)
    assert vm["depth"] == pytest.approx(3.0, abs=0.05)
    assert not list(Path("/sys/kernel/tracing/instances").glob(f"tracekit-{proc.pid}-*"))  # removed on exit
