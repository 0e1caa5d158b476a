"""Attaching to an already-running workload mid-iteration, checked against the workload's own record.

The built-in workload runs first (2 vCPUs, dirty logging on, iterations without end); the recorder
attaches by pid at several offsets into the dirty-logging loop, for a fixed window, then the
workload is stopped and writes its layout record (every non-KVM_RUN ioctl with CLOCK_MONOTONIC
entry/exit times, the phases). Per backend: every walk has elements and matches the reference model
(the recorder found the layout the workload publishes while it runs), every ioctl of the window is
in the capture and every captured one in the workload's log, calls the window cut are marked, every
family's rows lie in the one recording window, nothing is lost.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.recorder.test_live import TRACEKIT, _instances, _need
from tracekit.analysis.analyze import analyze_capture
from tracekit.capture import open_capture
from tracekit.recorder.kvm_ioctls import KVM_RUN
from tracekit.recorder.probe_family import RecordOptions
from tracekit.recorder.session import RecordConfig, record
from tracekit.workload.published import read_published_layout

pytestmark = [pytest.mark.live, pytest.mark.slow]

OFFSETS_S = (0.2, 0.7, 1.5)  # after dirty logging was enabled: inside the iterations
WINDOW_S = 2.0  # two or three iterations of the 2 x 64 MiB guest while traced
MARGIN_NS = 50_000_000  # a phase edge this close to a window edge decides nothing (a traced pass takes ~0.7 s)
# Buffers that hold a whole window (~1.5 M events, ~40 MB per CPU in ftrace): on a 2-CPU host the guest's two
# vCPUs can starve the reader for the whole window, and the test is about completeness, not reader speed.
WINDOW_BUFFERS = RecordOptions(ring_pages={"walk_events": 64 * 256, "mmu_events": 64 * 256}, tracefs_buffer_kb=128 * 1024)


def _start_workload(layout: Path) -> subprocess.Popen:
    return subprocess.Popen([TRACEKIT, "workload", "dirty-log", "-v", "2", "-b", "64M", "-i", "100000",
                             "--layout", str(layout)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for_dirty_logging(workload: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Until the workload published that dirty logging is on (its iterations run from then)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert workload.poll() is None, workload.stderr.read().decode(errors="replace")
        published = read_published_layout(workload.pid) or {}
        if any(p["name"] == "enable_dirty_logging" for p in published.get("phases", [])):
            return
        time.sleep(0.05)
    pytest.fail("the workload never published its dirty-logging phase")


def _attach(backend: str, offset_s: float, tmp_path: Path) -> tuple:
    layout = tmp_path / "layout.json"
    workload = _start_workload(layout)
    try:
        _wait_for_dirty_logging(workload)
        time.sleep(offset_s)
        out = tmp_path / "attach.tkcap"
        config = RecordConfig(output=out, pid_spec=str(workload.pid), duration=WINDOW_S, backend=backend,
                              options=WINDOW_BUFFERS)
        summary = record(config, stream=None)
    finally:
        workload.send_signal(signal.SIGINT)
        workload.wait(timeout=120)
    import json

    return summary, open_capture(out), json.loads(layout.read_text())


def _check_windows(cap, backend: str) -> tuple[int, int]:
    window = cap.manifest["window"]
    start, stop = window["start_ns"], window["stop_ns"]
    assert window["clock"] == "CLOCK_MONOTONIC" and stop - start >= WINDOW_S * 1e9
    for family in ("walk", "lock", "mmu", "ioctl"):
        if cap.rows(family):
            ts = cap.dataframe(family)["ts_ns"]
            assert ts.min() >= start and ts.max() <= stop, family
    if backend == "bcc":  # the elements carry their walk's start time
        ts = cap.dataframe("walk_element")["ts_ns"]
        assert ts.min() >= start and ts.max() <= stop
    return start, stop


def _check_walks(cap) -> int:
    analysis = analyze_capture(cap)
    check = analysis.verdicts["crosscheck"]
    partial = analysis.info["partial"]
    assert check.get("compared"), check  # the model came from the layout the running workload published
    assert check["matched"] == check["compared"] == check["walks"] == cap.rows("walk")
    assert partial["walks_without_elements"] == 0 and partial["malformed_walks"] == 0
    return partial["recorder"]["walk_elements_without_start"]


def _matches(row, entry, start: int, stop: int) -> bool:
    if (row.tid, row.cmd, row.fd) != (entry["tid"], entry["request"], entry["fd"]):
        return False
    end = row.ts_ns + row.duration_ns
    if row.partial == "began_before":
        return row.ts_ns == start and entry["start_ns"] <= start and end <= entry["end_ns"] and row.ret == entry["ret"]
    if row.partial == "unfinished":
        return entry["start_ns"] <= row.ts_ns and end == stop and entry["end_ns"] >= stop
    return entry["start_ns"] <= row.ts_ns and end <= entry["end_ns"] and row.ret == entry["ret"]


def _check_ioctls(cap, layout: dict, start: int, stop: int) -> None:
    """Every logged call inside the window is a complete row; every row is a logged call."""
    log = [i for i in layout["ioctls"] if i["request"] != KVM_RUN]
    rows = cap.dataframe("ioctl") if cap.rows("ioctl") else pd.DataFrame(
        columns=["tid", "cmd", "fd", "ts_ns", "duration_ns", "ret", "partial"])
    unmatched = list(log)
    for row in rows.itertuples():
        found = next((e for e in unmatched if _matches(row, e, start, stop)), None)
        assert found is not None, f"captured call not in the workload's log: {row}"
        unmatched.remove(found)
    inside = [e for e in unmatched if e["start_ns"] >= start and e["end_ns"] <= stop]
    assert not inside, f"calls of the window missing from the capture: {inside}"


def _inside_dirty_pass(layout: dict, instant: int) -> bool:
    return any(p["name"] == "dirty_memory" and p["start_ns"] + MARGIN_NS <= instant <= p["end_ns"] - MARGIN_NS
               for p in layout["phases"])


@pytest.mark.parametrize("backend", ["bcc", "tracefs"])
def test_attach_mid_iteration_records_one_window_completely(backend, tmp_path):
    _need(backend)
    in_flight_checked = ioctls_checked = 0
    for offset in OFFSETS_S:
        case = tmp_path / f"offset-{offset}"
        case.mkdir()
        summary, cap, layout = _attach(backend, offset, case)
        assert not _instances(), "the tracefs instance was left behind"
        assert summary.stop_reason == "duration" and cap.manifest["status"] == "complete"
        assert cap.lost_total() == 0
        start, stop = _check_windows(cap, backend)
        _check_walks(cap)
        _check_ioctls(cap, layout, start, stop)
        ioctls_checked += cap.rows("ioctl")
        partial = cap.manifest["partial"]
        print(f"{backend} offset {offset}s: window {(stop - start) / 1e9:.3f}s, rows "
              f"{ {f: cap.rows(f) for f in ('walk', 'walk_element', 'ioctl', 'ioctl_summary', 'lock', 'mmu')} }, "
              f"lost {cap.lost_total()}, partial {partial}")
        run = cap.dataframe("ioctl_summary")
        run = run[run.cmd == KVM_RUN]
        vcpu_tids = {v["tid"] for v in layout["vcpus"]}
        assert set(run.tid) <= vcpu_tids and (run["partial"] <= run["count"]).all()
        assert (run["total_ns"] <= run["count"] * (stop - start)).all()
        if backend == "bcc":
            # A vCPU still running its pass at an edge of the window is inside KVM_RUN then: that call
            # is in the capture, counted from the window's start / up to its end and marked.
            if _inside_dirty_pass(layout, start):
                assert partial["ioctl_began_before"] >= 1 and run["partial"].sum() >= 1
                in_flight_checked += 1
            if _inside_dirty_pass(layout, stop):
                assert partial["ioctl_unfinished"] >= 1 and run["partial"].sum() >= 1
                in_flight_checked += 1
    assert ioctls_checked, "no dirty-log ioctl fell inside any window: the ioctl check never ran"
    if backend == "bcc" and in_flight_checked == 0:
        pytest.fail("no window edge fell inside a dirty-memory pass: the in-flight KVM_RUN check never ran")
