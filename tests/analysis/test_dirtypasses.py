"""Dirty passes: the selftest's printed time of each pass against the gap between the main thread's
dirty-log calls around it, and the vCPUs' KVM_RUN calls inside that gap."""

from __future__ import annotations

import pandas as pd
import pytest

from tracekit.analysis.dirtypasses import dirty_pass_times
from tracekit.analysis.phases import parse_selftest_output

SET = "KVM_SET_USER_MEMORY_REGION2"
US = 1_000
MS = 1_000_000


def _output(dirty_ms: list[int], manual: bool = True) -> str:
    lines = ["Populate memory time: 0.500000000s", "Enabling dirty logging time: 0.000100000s"]
    for i, ms in enumerate(dirty_ms, 1):
        lines += [f"Iteration {i} dirty memory time: 0.{ms * 1000:06d}000s", f"Iteration {i} get dirty log time: 0.000030000s"]
        if manual:
            lines.append(f"Iteration {i} clear dirty log time: 0.000500000s")
    return "\n".join(lines + ["Disabling dirty logging time: 0.000700000s", ""])


def _run(dirty_ms: list[int], *, manual: bool = True, slots: int = 1, gap_ns: int = 20 * US,
         vcpus: int = 2, late_ns: tuple[int, int] = (3 * MS, 40 * US)) -> pd.DataFrame:
    """The ioctls of a run that printed ``_output(dirty_ms)``: the main thread (tid 1) makes its dirty-log
    calls, one per memslot, and each pass's gap between them is the printed time plus ``gap_ns`` (its
    printing and clock reads); the vCPUs (tids 10, 11, ...) start their KVM_RUN of the pass ``late_ns[0]``
    after the pass's clock read and the main thread sees the last one's immediate-exit KVM_RUN end
    ``late_ns[1]`` before its own clock read."""
    rows = [(s * 10, 5, SET, s + 1, 0, 1) for s in range(slots)]  # the slots created without dirty logging

    def burst(now: int, name: str, each: int, flags=None) -> int:
        for s in range(slots):
            rows.append((now, each, name, s + 1, flags, 1))
            now += each
        return now

    now = burst(1 * MS, SET, 50 * US, 1)
    for ms in dirty_ms:
        clock = now + gap_ns // 2
        first, last = clock + late_ns[0], clock + ms * MS - late_ns[1]
        for v in range(vcpus):
            start = first + v * 7 * US
            rows.append((start, last - 2 * US - start - v * 5 * US, "KVM_RUN", None, None, 10 + v))
            rows.append((last - 1 * US - v * 5 * US, 1 * US, "KVM_RUN", None, None, 10 + v))  # immediate exit
        now = burst(clock + ms * MS + gap_ns - gap_ns // 2, "KVM_GET_DIRTY_LOG", 10 * US)
        if manual:
            now = burst(now + 5 * US, "KVM_CLEAR_DIRTY_LOG", 200 * US)
    burst(now + 5 * US, SET, 300 * US, 0)
    frame = pd.DataFrame(rows, columns=["ts_ns", "duration_ns", "cmd_name", "slot", "flags", "tid"])
    return frame.assign(ret=0).sort_values("ts_ns", kind="stable").reset_index(drop=True)


@pytest.mark.parametrize(("manual", "slots"), [(True, 1), (False, 1), (True, 3), (False, 2)])
def test_each_pass_is_the_gap_between_the_main_threads_calls(manual, slots):
    """The measured pass holds the printed one and the main thread's 20 us besides; the vCPUs' KVM_RUN
    calls span the printed time less the two hand-overs (3 ms to start, 40 us to be seen)."""
    dirty = [10, 80, 70]
    passes = dirty_pass_times(parse_selftest_output(_output(dirty, manual)), _run(dirty, manual=manual, slots=slots))
    assert passes["phase"].tolist() == ["dirty-memory#1", "dirty-memory#2", "dirty-memory#3"]
    assert passes["printed_ns"].tolist() == [ms * MS for ms in dirty]
    assert passes["excess_ns"].tolist() == [20 * US] * 3
    assert (passes["measured_ns"] == passes["end_ns"] - passes["start_ns"]).all()
    assert passes["vcpus"].tolist() == [2] * 3
    assert passes["handover_ns"].tolist() == [3 * MS + 40 * US] * 3
    assert (passes["vcpu_ns"] + passes["handover_ns"] == passes["printed_ns"]).all()


def test_without_kvm_run_calls_only_the_main_threads_gap_is_measured():
    """KVM_RUN aggregated in the kernel (the recorder's default): no call to span, so no vCPU columns."""
    ioctl = _run([10, 20])
    passes = dirty_pass_times(parse_selftest_output(_output([10, 20])), ioctl[ioctl["cmd_name"] != "KVM_RUN"])
    assert passes["excess_ns"].tolist() == [20 * US] * 2
    assert passes[["vcpus", "vcpu_ns", "handover_ns"]].isna().all().all()


def test_a_pass_whose_calls_the_capture_lacks_is_left_out():
    """Attached mid-run: the capture holds neither the enable nor iteration 1's GET; iteration 2's pass
    starts after iteration 1's CLEAR, which it holds, so it is measured; iteration 1's is not."""
    dirty = [10, 20, 30]
    ioctl = _run(dirty)
    first_get = ioctl.loc[ioctl["cmd_name"] == "KVM_GET_DIRTY_LOG", "ts_ns"].iloc[0]
    passes = dirty_pass_times(parse_selftest_output(_output(dirty)), ioctl[ioctl["ts_ns"] > first_get])
    assert passes["phase"].tolist() == ["dirty-memory#2", "dirty-memory#3"]
    assert passes["excess_ns"].tolist() == [20 * US] * 2


def test_on_a_recorded_run_each_measured_pass_holds_the_runs_own_record_of_it():
    """The bundled 2 MiB-page run (the built-in workload, printing dirty_log_perf_test's lines, and keeping
    its own clock reads of each pass in the manifest): each printed pass is the recorded one, and the gap
    tracekit measured between the dirty-log calls around it holds the recorded pass exactly."""
    from pathlib import Path

    from tracekit.analysis.analyze import analyze_capture
    from tracekit.analysis.phases import workload_phases
    from tracekit.capture import open_capture

    samples = Path(__file__).resolve().parents[2] / "samples"
    cap = open_capture(samples / "x86-dirty-log-2m.tkcap")
    passes = analyze_capture(cap, selftest_output=(samples / "x86-dirty-log-2m.out").read_text()).tables["dirty_passes"]
    recorded = workload_phases(cap.manifest).set_index("phase").loc[passes["phase"]]
    assert passes["phase"].tolist() == ["dirty-memory#1", "dirty-memory#2", "dirty-memory#3"]
    assert (passes["printed_ns"].to_numpy() == recorded["duration_ns"].to_numpy()).all()
    assert (passes["start_ns"].to_numpy() <= recorded["start_ns"].to_numpy()).all()
    assert (passes["end_ns"].to_numpy() >= recorded["end_ns"].to_numpy()).all()
    assert (passes["excess_ns"] > 0).all() and (passes["excess_ns"] < 2_000_000).all()  # the workload's Python between
