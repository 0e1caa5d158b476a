"""ioctl latency, memslot flag changes and split latency per dirty-log ioctl."""

from __future__ import annotations

import pandas as pd

from tracekit.analysis.ioctls import ioctl_latency, memslot_flag_changes, memslot_latency
from tracekit.analysis.splits import split_call_summary, split_events, split_ioctl_summary, split_ioctls

SET = "KVM_SET_USER_MEMORY_REGION"
IOCTL = pd.DataFrame({
    "ts_ns": [0, 100, 1000, 2000, 3000, 4000, 5000],
    "tid": [1] * 7,
    "duration_ns": [10, 20, 500, 30, 700, 40, 50],
    "cmd_name": [SET, SET, SET, "KVM_GET_DIRTY_LOG", "KVM_CLEAR_DIRTY_LOG", "KVM_GET_DIRTY_LOG", SET],
    "ret": [0, 0, 0, 0, 0, -14, 0],
    "slot": [0, 1, 1, 1, 1, 1, 1],
    "flags": [0, 0, 1, None, None, None, 0],
    "memory_size": [1 << 20, 1 << 26, 1 << 26, None, None, None, 1 << 26],
})
SUMMARY = pd.DataFrame({"cmd_name": ["KVM_RUN"], "count": [7], "total_ns": [7000], "max_ns": [2000], "errors": [0]})


def test_memslot_flag_changes():
    changes = memslot_flag_changes(IOCTL)
    assert changes["change"].tolist() == ["create", "create", "log-dirty-on", "log-dirty-off"]
    assert changes["slot"].tolist() == [0, 1, 1, 1]


def test_ioctl_latency_golden():
    """GET: 2 calls (30, 40 ns), one error (ret -14); KVM_RUN only aggregated: 7 calls, 7000 ns, no percentiles."""
    table = ioctl_latency(IOCTL, SUMMARY).set_index("cmd_name")
    assert table.loc["KVM_GET_DIRTY_LOG", ["count", "errors", "total_ns", "p50_ns", "max_ns"]].tolist() == [2, 1, 70, 30, 40]
    assert table.loc[SET, "count"] == 4
    run = table.loc["KVM_RUN"]
    assert (run["count"], run["total_ns"], run["mean_ns"], run["source"]) == (7, 7000, 1000.0, "aggregated")
    assert pd.isna(run["p50_ns"])
    per_slot = memslot_latency(IOCTL)
    on = per_slot[per_slot["change"] == "log-dirty-on"]
    assert on[["slot", "count", "max_ns"]].values.tolist() == [[1, 1, 500]]


def test_split_per_ioctl_golden():
    """Enable (1000..1500) holds 2 timed split calls (100 + 150 ns) and the CLEAR (3000..3700) one split event;
    a split at 1600 is outside every dirty-log ioctl."""
    split = pd.DataFrame({"ts_ns": [1100, 1200, 1600], "tid": [1, 1, 1], "duration_ns": [100, 150, 10],
                          "level": [2, 2, 2]})
    mmu = pd.DataFrame({"ts_ns": [3100], "tid": [1], "event": ["kvm_mmu_split_huge_page"], "level": [2]})
    per = split_ioctls(IOCTL, split, mmu)
    assert per[["kind", "duration_ns", "splits", "split_ns"]].values.tolist() == [["enable", 500, 2, 250],
                                                                                  ["clear", 700, 1, 0]]
    summary = split_ioctl_summary(per).set_index("kind")
    assert summary.loc["enable", "splits_per_ioctl"] == 2.0
    calls = split_call_summary(split_events(split, mmu)).set_index("source")
    assert calls.loc["call", "count"] == 3 and calls.loc["call", "total_ns"] == 260
    assert calls.loc["event", "count"] == 1 and pd.isna(calls.loc["event", "total_ns"])


def test_unknown_durations_are_not_latencies():
    """Function-probe rows with duration -1 (return not seen) count as splits but not as latencies."""
    split = pd.DataFrame({"ts_ns": [1100], "tid": [1], "duration_ns": [-1], "level": [None]})
    calls = split_call_summary(split_events(split, None))
    assert calls["count"].tolist() == [1] and pd.isna(calls["total_ns"].iloc[0])


def test_unfinished_ioctls_are_left_out():
    """A CLEAR still running when the recording stopped (null duration) is neither a latency nor a span."""
    unfinished = pd.concat([IOCTL, pd.DataFrame({"ts_ns": [6000], "tid": [1], "duration_ns": [None],
                                                 "cmd_name": ["KVM_CLEAR_DIRTY_LOG"], "ret": [None], "slot": [1],
                                                 "flags": [None], "memory_size": [None]})], ignore_index=True)
    assert split_ioctls(unfinished)["kind"].tolist() == ["enable", "clear"]
    assert ioctl_latency(unfinished).set_index("cmd_name").loc["KVM_CLEAR_DIRTY_LOG", "count"] == 1
    assert len(memslot_flag_changes(unfinished)) == 4


def test_guest_physical_moves_are_moves_not_same():
    """memslot_perf_test's move test: the slot's guest_phys_addr changes with the same flags and size
    (KVM_MR_MOVE); a call that changes nothing is ``same``; without the address column nothing is a move."""
    base, size = 0x10000000, 1 << 20
    calls = pd.DataFrame({
        "ts_ns": [0, 10, 20, 30, 40], "tid": [1] * 5, "duration_ns": [5] * 5, "cmd_name": [SET + "2"] * 5,
        "ret": [0] * 5, "slot": [10] * 5, "flags": [0] * 5, "memory_size": [size, size, size, size, 0],
        "guest_phys_addr": [base, base + size, base + size, base, base]})
    changes = memslot_flag_changes(calls)
    assert changes["change"].tolist() == ["create", "move", "same", "move", "delete"]
    assert changes.index.tolist() == [0, 1, 2, 3, 4]
    assert memslot_flag_changes(calls.drop(columns="guest_phys_addr"))["change"].tolist()[1:4] == ["same"] * 3
    per_change = memslot_latency(calls).set_index("change")
    assert per_change.loc["move", "count"] == 2


def test_failures_are_counted_by_errno():
    """Streamed calls by their ret; aggregated KVM_RUN by the summary's errno (none known in older captures)."""
    events = pd.DataFrame({"ts_ns": [0, 1, 2, 3], "tid": [1] * 4, "duration_ns": [5, 5, 5, 5],
                           "cmd_name": ["KVM_SET_REGS", "KVM_SET_REGS", "KVM_SET_REGS", "KVM_GET_DIRTY_LOG"],
                           "ret": [0, -4, -22, 0]})
    summary = pd.DataFrame({"cmd_name": ["KVM_RUN"] * 3, "count": [10, 6, 1], "total_ns": [100, 6, 1],
                            "max_ns": [50, 1, 1], "errors": [0, 6, 1], "errno": [0, 4, 11]})
    table = ioctl_latency(events, summary).set_index("cmd_name")
    assert table.loc["KVM_SET_REGS", ["errors", "errnos"]].tolist() == [2, "EINTR 1, EINVAL 1"]
    assert table.loc["KVM_GET_DIRTY_LOG", "errnos"] == ""
    assert table.loc["KVM_RUN", ["count", "errors", "errnos"]].tolist() == [17, 7, "EINTR 6, EAGAIN 1"]
    older = ioctl_latency(events, summary.drop(columns="errno").iloc[:2]).set_index("cmd_name")
    assert older.loc["KVM_RUN", "errnos"] == "? 6"
