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


def test_align_on_dirty_log_ioctls():
    """The k-th GET burst ends get-dirty-log#k; dirty-memory#k ends where get-dirty-log#k starts.
    Two memslots make each burst two calls (enable at 10..11 us and 11..12 us ends at 12,000 ns)."""
    ioctl = pd.DataFrame({
        "ts_ns": [0, 10, 10_000, 11_000, 50_000, 51_000, 60_000, 61_000, 100_000, 101_000, 110_000, 111_000,
                  200_000, 201_000],
        "tid": [1] * 14,
        "duration_ns": [5, 5, 1000, 1000, 100, 100, 300, 300, 100, 100, 300, 300, 400, 400],
        "cmd_name": [SET, SET, SET, SET, "KVM_GET_DIRTY_LOG", "KVM_GET_DIRTY_LOG", "KVM_CLEAR_DIRTY_LOG",
                     "KVM_CLEAR_DIRTY_LOG", "KVM_GET_DIRTY_LOG", "KVM_GET_DIRTY_LOG", "KVM_CLEAR_DIRTY_LOG",
                     "KVM_CLEAR_DIRTY_LOG", SET, SET],
        "slot": [1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2],
        "flags": [0, 0, 1, 1, None, None, None, None, None, None, None, None, 0, 0],
    })
    phases = align_selftest_phases(parse_selftest_output(DIRTY_LOG_OUTPUT), ioctl).set_index("phase")
    assert phases.loc["enable-dirty-logging", "end_ns"] == 12_000
    assert phases.loc["get-dirty-log#1", ["start_ns", "end_ns"]].tolist() == [51_100 - 30_000, 51_100]
    assert phases.loc["dirty-memory#1", "end_ns"] == 51_100 - 30_000
    assert phases.loc["clear-dirty-log#2", "end_ns"] == 111_300
    assert phases.loc["disable-dirty-logging", "end_ns"] == 201_400
    assert phases.loc["populate", "end_ns"] == 12_000 - 100_000
    with pytest.raises(AnalysisError, match="cannot align"):
        align_selftest_phases(parse_selftest_output(DIRTY_LOG_OUTPUT), ioctl.iloc[0:0])


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
