"""Phases: parsing selftest output, aligning it on dirty-log ioctls, labelling and cutting by phase."""

from __future__ import annotations

import pandas as pd
import pytest

from tracekit.analysis.phases import (align_selftest_phases, label_phases, make_phase_table, parse_selftest_output,
                                      select_phase, workload_phases)
from tracekit.errors import AnalysisError, UsageError

DIRTY_LOG_OUTPUT = """\
# Random seed: 0x6b8b4567
# Test iterations: 2
# Testing guest mode: PA-bits:ANY, VA-bits:48,  4K pages
# guest physical test memory: [0x7fbfffc000, 0x7fffffc000)
# Populate memory time: 0.500000000s
# Enabling dirty logging time: 0.000100000s
#
# Iteration 1 dirty memory time: 0.010000000s
# Iteration 1 get dirty log time: 0.000030000s
# Iteration 1 clear dirty log time: 0.000500000s
# Iteration 2 dirty memory time: 0.020000000s
# Iteration 2 get dirty log time: 0.000040000s
# Iteration 2 clear dirty log time: 0.000600000s
# Disabling dirty logging time: 0.000700000s
# Get dirty log over 2 iterations took 0.000070000s. (Avg 0.000035000s/iteration)
ok 1 selftests: kvm: dirty_log_perf_test
"""
SET = "KVM_SET_USER_MEMORY_REGION"


def test_parse_dirty_log_perf_test():
    parsed = parse_selftest_output(DIRTY_LOG_OUTPUT)
    assert parsed["name"].tolist() == ["populate", "enable-dirty-logging", "dirty-memory", "get-dirty-log",
                                       "clear-dirty-log", "dirty-memory", "get-dirty-log", "clear-dirty-log",
                                       "disable-dirty-logging"]
    assert parsed["iteration"].tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 0]
    assert parsed["duration_ns"].tolist()[:3] == [500_000_000, 100_000, 10_000_000]


def test_parse_kvm_page_table_test_and_garbage():
    text = "KVM_CREATE_MAPPINGS: total execution time: 1.250000000s\nKVM_UPDATE_MAPPINGS: total execution time: 0.5" \
           "00000000s\nKVM_ADJUST_MAPPINGS: total execution time: 0.000000001s\n"
    parsed = parse_selftest_output(text)
    assert parsed.values.tolist() == [["create-mappings", 0, 1_250_000_000], ["update-mappings", 0, 500_000_000],
                                      ["adjust-mappings", 0, 1]]
    with pytest.raises(AnalysisError):
        parse_selftest_output("hello\n")


def _run_ioctls(output: str, slots: int = 1, manual: bool = True) -> pd.DataFrame:
    """The dirty-log ioctls a run printing ``output`` issues, timed as it printed: each memslot created at
    0, logging enabled after populate, per iteration one GET (and CLEAR) per slot, then disabled. Each
    burst of ``slots`` calls lasts exactly the printed time of its phase."""
    rows = [(10 * s, 5, SET, s + 1, 0) for s in range(slots)]
    now = 100
    for name, _iteration, duration in parse_selftest_output(output).itertuples(index=False):
        call = {"enable-dirty-logging": (SET, 1), "disable-dirty-logging": (SET, 0),
                "get-dirty-log": ("KVM_GET_DIRTY_LOG", None), "clear-dirty-log": ("KVM_CLEAR_DIRTY_LOG", None)}.get(name)
        if call is not None and (manual or name != "clear-dirty-log"):
            share = duration // slots
            for s in range(slots):
                rows.append((now + s * share, duration - (slots - 1) * share if s == slots - 1 else share,
                             call[0], s + 1, call[1]))
        now += duration
    return pd.DataFrame(rows, columns=["ts_ns", "duration_ns", "cmd_name", "slot", "flags"]).assign(tid=1, ret=0)


def _output(iterations: int, manual: bool = True) -> str:
    lines = ["Populate memory time: 0.500000000s", "Enabling dirty logging time: 0.000100000s"]
    for i in range(1, iterations + 1):
        lines += [f"Iteration {i} dirty memory time: 0.0{i % 10}0000000s",
                  f"Iteration {i} get dirty log time: 0.0000{30 + i}000s"]
        if manual:
            lines.append(f"Iteration {i} clear dirty log time: 0.000500000s")
    return "\n".join(lines + ["Disabling dirty logging time: 0.000700000s", ""])


def test_align_on_dirty_log_ioctls():
    """Two memslots make each burst two calls: the k-th GET burst ends get-dirty-log#k, dirty-memory#k ends
    where get-dirty-log#k starts, populate where the enable burst starts."""
    ioctl = _run_ioctls(DIRTY_LOG_OUTPUT, slots=2)
    phases = align_selftest_phases(parse_selftest_output(DIRTY_LOG_OUTPUT), ioctl)
    assert phases["phase"].tolist() == ["populate", "enable-dirty-logging", "dirty-memory#1", "get-dirty-log#1",
                                        "clear-dirty-log#1", "dirty-memory#2", "get-dirty-log#2", "clear-dirty-log#2",
                                        "disable-dirty-logging"]
    assert (phases["start_ns"].to_numpy()[1:] == phases["end_ns"].to_numpy()[:-1]).all()  # back to back
    assert phases.set_index("phase").loc["populate", ["start_ns", "end_ns"]].tolist() == [100, 500_000_100]
    assert phases.attrs["note"] is None
    with pytest.raises(AnalysisError, match="cannot align"):
        align_selftest_phases(parse_selftest_output(DIRTY_LOG_OUTPUT), ioctl.iloc[0:0])


def test_a_phase_never_starts_before_the_one_printed_before_it():
    """A loaded host preempts the selftest between its clock read and the call: the printed time then
    exceeds the call and would reach back into the phase before; the phase starts where that one ends."""
    ioctl = _run_ioctls(DIRTY_LOG_OUTPUT)
    late = DIRTY_LOG_OUTPUT.replace("Disabling dirty logging time: 0.000700000s", "Disabling dirty logging time: 0.000750000s")
    phases = align_selftest_phases(parse_selftest_output(late), ioctl).set_index("phase")
    assert phases.index.tolist()[-2:] == ["clear-dirty-log#2", "disable-dirty-logging"]
    assert phases.loc["disable-dirty-logging", "start_ns"] == phases.loc["clear-dirty-log#2", "end_ns"]


@pytest.mark.parametrize("slots", [1, 3])
def test_legacy_get_iterations_are_separate_phases_in_order(slots):
    """-g: no CLEAR, so the iterations' GETs are adjacent; each iteration is still its own phase, in order."""
    text = _output(4, manual=False)
    phases = align_selftest_phases(parse_selftest_output(text), _run_ioctls(text, slots, manual=False))
    assert phases["phase"].tolist() == ["populate", "enable-dirty-logging"] + [
        p for i in range(1, 5) for p in (f"dirty-memory#{i}", f"get-dirty-log#{i}")] + ["disable-dirty-logging"]
    assert (phases["start_ns"].to_numpy()[1:] == phases["end_ns"].to_numpy()[:-1]).all()


def test_legacy_get_without_slots_splits_the_calls_evenly():
    """The tracefs backend knows neither slots nor memslot flags: 2 GETs per iteration over 3 iterations
    are cut into 3 bursts; the enable and disable phases (and populate before them) stay unplaced."""
    text = _output(3, manual=False)
    ioctl = _run_ioctls(text, slots=2, manual=False).assign(slot=None, flags=None)
    phases = align_selftest_phases(parse_selftest_output(text), ioctl)
    assert phases["phase"].tolist() == [p for i in range(1, 4) for p in (f"dirty-memory#{i}", f"get-dirty-log#{i}")]
    assert (phases["start_ns"].to_numpy()[1:] == phases["end_ns"].to_numpy()[:-1]).all()


def test_an_output_of_another_run_is_refused():
    with pytest.raises(AnalysisError, match="does not fit this capture: it prints 20 get-dirty-log phases, the capture "
                                            "holds 2 KVM_GET_DIRTY_LOG bursts.*whole run"):
        align_selftest_phases(parse_selftest_output(_output(20)), _run_ioctls(_output(2)))
    with pytest.raises(AnalysisError, match="does not fit this capture: it prints 2 get-dirty-log phases, the capture holds 20"):
        align_selftest_phases(parse_selftest_output(_output(2)), _run_ioctls(_output(20)))
    other = _output(3).replace("dirty memory time: 0.02", "dirty memory time: 0.09")  # same shape, other times
    with pytest.raises(AnalysisError, match=r"dirty-memory#2 \(90.000 ms printed\) is longer than the 20.000 ms "
                                            "between the capture's calls around it"):
        align_selftest_phases(parse_selftest_output(other), _run_ioctls(_output(3)))
    short = _output(3).replace("clear dirty log time: 0.000500000s", "clear dirty log time: 0.000400000s")
    with pytest.raises(AnalysisError, match=r"clear-dirty-log#1 \(0.400 ms printed\) is shorter than its calls \(0.500"):
        align_selftest_phases(parse_selftest_output(short), _run_ioctls(_output(3)))


def test_a_selftest_preempted_after_a_call_still_fits():
    """A loaded host preempted the selftest for 9 ms after its CLEAR returned and before it read its clock:
    the printed 9.5 ms holds a 0.5 ms call, and reaches back 9 ms before the GET printed before it ends if
    it is placed to end with the call. It still fits (it lies between the GET before it and the next
    iteration's GET), and is placed after the GET."""
    text = _output(3).replace("Iteration 1 clear dirty log time: 0.000500000s", "Iteration 1 clear dirty log time: 0.009500000s")
    ioctl = _run_ioctls(text)
    first_clear = ioctl.index[ioctl["cmd_name"] == "KVM_CLEAR_DIRTY_LOG"][0]
    ioctl.loc[first_clear, "duration_ns"] = 500_000
    phases = align_selftest_phases(parse_selftest_output(text), ioctl).set_index("phase")
    assert phases.loc["clear-dirty-log#1", "start_ns"] == phases.loc["get-dirty-log#1", "end_ns"]
    assert (phases["start_ns"].to_numpy()[1:] >= phases["end_ns"].to_numpy()[:-1]).all()


def test_a_capture_attached_mid_run_holds_the_last_iterations():
    """Recording began during iteration 3 of 6: its GET/CLEAR bursts are those of iterations 4-6."""
    text = _output(6)
    ioctl = _run_ioctls(text)
    get3 = ioctl[ioctl["cmd_name"] == "KVM_GET_DIRTY_LOG"]["ts_ns"].iloc[2]
    phases = align_selftest_phases(parse_selftest_output(text), ioctl[ioctl["ts_ns"] > get3 + 100_000])
    assert phases["phase"].tolist()[0] == "dirty-memory#4" and phases["phase"].tolist()[-1] == "disable-dirty-logging"
    assert phases.attrs["note"] == ("the capture holds iterations 4-6 of the 6 the selftest printed "
                                    "(recording attached mid-run): phases aligned from the end")
    full = align_selftest_phases(parse_selftest_output(text), ioctl).set_index("phase")
    part = phases.set_index("phase")
    assert (part["start_ns"] == full.loc[part.index, "start_ns"]).all()
    between = align_selftest_phases(parse_selftest_output(text), ioctl[ioctl["ts_ns"] > get3])  # GET#3 missed
    assert between["phase"].tolist()[:3] == ["clear-dirty-log#3", "dirty-memory#4", "get-dirty-log#4"]
    assert (between.set_index("phase")["end_ns"] == full.loc[between["phase"], "end_ns"]).all()
    stopped = align_selftest_phases(parse_selftest_output(text), ioctl[ioctl["ts_ns"] < get3 + 100_000])
    assert stopped["phase"].tolist()[-1] == "clear-dirty-log#3" and "iterations 1-3 of the 6" in stopped.attrs["note"]
    with pytest.raises(AnalysisError, match="neither the start nor the end"):
        align_selftest_phases(parse_selftest_output(text),
                              ioctl[(ioctl["ts_ns"] > get3 + 100_000) & (ioctl["flags"] != 0)])


def test_workload_phases_label_and_select():
    manifest = {"workload": {"phases": [
        {"name": "populate", "iteration": None, "start_ns": 0, "end_ns": 100},
        {"name": "dirty_memory", "iteration": 1, "start_ns": 100, "end_ns": 200},
        {"name": "dirty_memory", "iteration": 2, "start_ns": 300, "end_ns": 400}]}}
    phases = workload_phases(manifest)
    assert phases["phase"].tolist() == ["populate", "dirty-memory#1", "dirty-memory#2"]
    assert label_phases([0, 150, 250, 399, 400], phases).tolist() == ["populate", "dirty-memory#1", "",
                                                                      "dirty-memory#2", ""]
    frame = pd.DataFrame({"ts_ns": [0, 150, 250, 350]})
    assert select_phase(frame, phases, "dirty-memory")["ts_ns"].tolist() == [150, 350]
    assert select_phase(frame, phases, "dirty_memory#2")["ts_ns"].tolist() == [350]
    assert select_phase(frame, phases, None)["ts_ns"].tolist() == [0, 150, 250, 350]
    with pytest.raises(UsageError, match="no phase 'clear'; phases: populate, dirty-memory#1"):
        select_phase(frame, phases, "clear")
    with pytest.raises(UsageError, match="no workload phases"):
        select_phase(frame, make_phase_table([], "workload"), "populate")
