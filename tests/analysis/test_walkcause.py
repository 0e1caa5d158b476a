"""Walk causes: a walk followed by its thread's shadow-MMU fault path is a fault walk, else emulation."""

from __future__ import annotations

import numpy as np
from hypothesis import given, strategies as st

from tracekit.analysis.analyze import analyze_capture, render_text
from tracekit.analysis.report import render_report
from tracekit.analysis import walkcause
from tracekit.analysis.walkcause import CAUSES, FaultFollowers, cause_codes, cause_table, fault_followers
from tracekit.capture.reader import open_capture

from .conftest import SAMPLES

FAULT, EMULATION, UNKNOWN = (CAUSES.index(c) for c in ("fault", "emulation", "unknown"))


def test_fault_path_follows_only_the_last_walk_before_it():
    """Thread 1: walks at 10 (emulated fetch), 20 (fault: spte at 25), 30 (emulated); thread 2's walk at
    22 is not followed by thread 1's fault; a fault event 20 ms after a walk belongs to something else."""
    followers = FaultFollowers(np.array([1, 2]), np.array([25, 20_000_040]))
    followers.add(0, np.array([1, 1, 2, 1]), np.array([10, 20, 22, 30]))
    followers.add(4, np.array([2]), np.array([40]))
    assert followers.rows().tolist() == [1]
    assert cause_codes(5, followers).tolist() == [EMULATION, FAULT, EMULATION, EMULATION, EMULATION]
    assert cause_codes(2, None).tolist() == [UNKNOWN, UNKNOWN]


@given(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 10_000)), min_size=1, max_size=60, unique_by=lambda w: w),
       st.lists(st.tuples(st.integers(1, 3), st.integers(0, 10_000)), max_size=20),
       st.integers(1, 7), st.randoms(use_true_random=False))
def test_batches_and_order_do_not_change_the_causes(walks, faults, batch, rnd):
    """Property: fed in any order and batch size, the fault walks are exactly those that are the last walk
    of their thread before one of its fault events (a brute-force reading of the rule)."""
    order = list(range(len(walks)))
    rnd.shuffle(order)
    tid = np.array([walks[i][0] for i in order])
    ts = np.array([walks[i][1] for i in order])
    followers = FaultFollowers(np.array([f[0] for f in faults], np.int64), np.array([f[1] for f in faults], np.int64))
    for start in range(0, len(order), batch):
        followers.add(start, tid[start:start + batch], ts[start:start + batch])
    expected = set()
    for f_tid, f_ts in faults:
        before = [r for r in range(len(order)) if tid[r] == f_tid and ts[r] < f_ts]
        if before:
            expected.add(max(before, key=lambda r: ts[r]))
    assert set(followers.rows().tolist()) == expected


def test_many_threads_in_a_batch_give_what_a_comparison_per_thread_gives(monkeypatch):
    """Past :data:`walkcause._FEW_THREADS` threads in a batch the rows are split by one stable sort: the
    same fault walks as one comparison per thread finds, with walks out of time order too."""
    rng = np.random.default_rng(5)
    walk_tid, walk_ts = rng.integers(1, 60, 5000), rng.integers(0, 10**6, 5000)
    fault_tid, fault_ts = rng.integers(1, 60, 3000), rng.integers(0, 10**6, 3000)

    def fault_rows() -> list[int]:
        followers = FaultFollowers(fault_tid, fault_ts)
        for start in range(0, 5000, 700):
            followers.add(start, walk_tid[start:start + 700], walk_ts[start:start + 700])
        return followers.rows().tolist()

    sorted_once = fault_rows()
    monkeypatch.setattr(walkcause, "_FEW_THREADS", 1000)
    assert sorted_once == fault_rows() and len(sorted_once) > 1000


def test_cause_table_golden():
    import pandas as pd

    counts = pd.DataFrame({"cause": ["emulation", "fault", "emulation", "emulation"], "pferr": [16, 7, 0, 16],
                           "walks": [300, 100, 50, 50]})
    table = cause_table(counts, "walks")
    assert table.values.tolist() == [["fault", 7, 100, 0.2], ["emulation", 16, 350, 0.7], ["emulation", 0, 50, 0.1]]


def test_sample_walks_are_faults_and_the_streamed_and_in_memory_paths_agree():
    """The built-in workload's guest runs at CPL3 natively: its 8,192 dirty-logging walks are faults,
    each followed by kvm_mmu_spte_requested (ground truth: one spte request per fault walk)."""
    cap = open_capture(SAMPLES / "x86-dirty-log-4k.tkcap")
    result = analyze_capture(cap)
    verdict = result.verdicts["walk_causes"]
    mmu = cap.table("mmu").to_pandas()
    requested = int((mmu["event"] == "kvm_mmu_spte_requested").sum())
    assert verdict["unknown"] == 0 and verdict["fault"] == requested >= 8192
    assert verdict["fault"] + verdict["emulation"] == cap.rows("walk")
    frame = result.walk_frame()  # the per-walk frame, rebuilt on demand
    assert (frame["cause"] == "fault").sum() == verdict["fault"]
    faults = result.tables["walk_causes"]
    assert faults[faults["cause"] == "fault"]["walks"].sum() == verdict["fault"]
    text = render_text(result)
    assert f"walk causes: {verdict['fault']:,} fault, {verdict['emulation']:,} emulation" in text
    assert "Walk causes:" in render_report(result, cap)


def test_fault_events_read_in_batches_equal_the_whole_family(monkeypatch):
    """The mmu family read a few rows at a time (each fault's two events, which share its time, kept once)
    names the same fault walks as its whole fault-path columns do."""
    cap = open_capture(SAMPLES / "x86-dirty-log-4k.tkcap")
    mmu = cap.table("mmu", ["ts_ns", "tid", "event"]).to_pandas()
    mmu = mmu[mmu["event"].isin(walkcause.FAULT_EVENTS)]
    walk = cap.table("walk", ["tid", "ts_ns"]).to_pandas()
    whole = FaultFollowers(mmu["tid"].to_numpy(np.int64), mmu["ts_ns"].to_numpy(np.int64))
    monkeypatch.setattr(walkcause, "MMU_BATCH_ROWS", 97)
    batched = fault_followers(cap)
    for followers in (whole, batched):
        followers.add(0, walk["tid"].to_numpy(), walk["ts_ns"].to_numpy())
    assert batched.rows().tolist() == whole.rows().tolist() and len(whole.rows()) >= 8192


def test_split_rows_read_with_the_fault_events_equal_their_own_read(make_capture, monkeypatch):
    """The mmu family's split events kept while its fault-path events are read (in batches of 3 rows) are
    the frame a read of the split events alone gives."""
    import pyarrow as pa

    from tracekit.analysis.common import frame_of, load
    from tracekit.analysis.splits import SPLIT_EVENT

    events = ["kvm_mmu_spte_requested", SPLIT_EVENT, "kvm_mmu_set_spte", "kvm_mmu_get_page", SPLIT_EVENT] * 3
    mmu = {"event": pa.array(events).dictionary_encode(), "level": pa.array([1, 2, None, 3, 2] * 3, pa.int32()),
           "tid": [5, 6, 5, 6, 7] * 3}
    cap = open_capture(make_capture({"mmu": mmu}))
    monkeypatch.setattr(walkcause, "MMU_BATCH_ROWS", 3)
    rows = fault_followers(cap, also=(SPLIT_EVENT,)).also
    frame = frame_of([rows], rows.num_rows, cap.schema("mmu"), rows.column_names, ["level"])
    alone = load(cap, "mmu", ["ts_ns", "tid", "event"], optional_columns=["level"], where=("event", [SPLIT_EVENT]))
    assert len(frame) == 6 and frame["ts_ns"].tolist() == [1, 4, 6, 9, 11, 14]
    assert frame.equals(alone)
