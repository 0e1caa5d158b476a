"""KVM selftests recorded with ``tracekit record -- ./TEST`` (bcc and tracefs backends): guest walks checked
against the model of the selftest library's page tables and labelled by cause (shadow-MMU fault or KVM's
instruction emulator); memslot_perf_test's moves classed as moves.

Ground truth: the selftests' guests write one word in every 4 KiB page of their test memory per pass
(dirty_log_perf_test: populate plus one pass per iteration; kvm_page_table_test: its three stages;
dirty_log_test: one pass, then 1024 random pages per KVM_RUN), so that many walks of the test memory are
compared with the model, and each must match it exactly (every PTE, page-table addresses included). A walk's cause is recomputed here from the raw families with
``merge_asof`` (the last walk of a thread before each of its fault-path events) and must equal the
analysis' labels.
"""

from __future__ import annotations

import pandas as pd
import pytest

from tests.selftests.modelcheck import assert_matches_but_for_lost_elements
from tracekit.analysis.analyze import analyze_capture
from tracekit.analysis.walkcause import FAULT_EVENTS, FAULT_WINDOW_NS
from tracekit.capture import open_capture

pytestmark = [pytest.mark.live, pytest.mark.slow]

PAGES = (16 << 20) // 4096


def _fault_walks(cap) -> int:
    """Walks a fault-path event of the same thread follows (within the window), counted independently."""
    walks = cap.dataframe("walk")[["ts_ns", "tid", "walk_id"]].sort_values("ts_ns")
    mmu = cap.dataframe("mmu")
    faults = mmu[mmu["event"].astype(str).isin(FAULT_EVENTS)][["ts_ns", "tid"]].sort_values("ts_ns")
    if faults.empty:
        return 0
    owner = pd.merge_asof(faults, walks.rename(columns={"ts_ns": "walk_ts"}).assign(ts_ns=walks["ts_ns"]),
                          on="ts_ns", by="tid", direction="backward", allow_exact_matches=False)
    owner = owner[owner["ts_ns"] - owner["walk_ts"] <= FAULT_WINDOW_NS]
    return int(owner["walk_id"].nunique())


def _check(cap, passes: int):
    result = analyze_capture(cap)  # the selftest's stdout in the capture names its guest: no option
    check = result.verdicts["crosscheck"]
    assert result.info["model"]["test_size"] == 16 << 20 and result.info["model"]["test_gva"] == 0xC0000000
    assert check["outside_model"] > 0
    assert_matches_but_for_lost_elements(cap, result)
    if cap.lost_total() == 0:
        assert check["compared"] == passes * PAGES
    else:
        assert 0 < check["compared"] <= passes * PAGES
    causes = result.verdicts["walk_causes"]
    assert causes["unknown"] == 0 and causes["fault"] + causes["emulation"] == cap.rows("walk")
    assert causes["fault"] == _fault_walks(cap)
    paths = result.tables["walk_paths"]
    fetches = paths[paths["pferr"] == 0x10]
    if causes["fault"] == 0:  # this host emulates CPL0 guest code: every walk is the emulator's
        assert set(paths["cause"]) == {"emulation"} and fetches["walks"].sum() > causes["emulation"] // 2
    return result


def test_dirty_log_perf_test_walks_match_the_model(record_selftest):
    recorded = record_selftest("dirty_log_perf_test", "-b", "16M", "-i", "2")
    _check(open_capture(recorded.capture), passes=3)


def test_tracefs_backend_keeps_every_phase_and_whole_walks(record_selftest):
    """Under the tracefs backend: the memslot arguments (slot, flags) are read by its ioctl uprobe, so the
    disable-dirty-logging phase is placed like the others; and walks stay whole although the vCPU thread
    moves between CPUs whose buffers are read unevenly (without lost events, every walk is one or more
    full passes 4>3>2>1)."""
    import re

    from tracekit.analysis.phases import dirty_log_events, parse_selftest_output

    recorded = record_selftest("dirty_log_perf_test", "-b", "16M", "-i", "2", extra=("--backend", "tracefs"))
    cap = open_capture(recorded.capture)
    assert cap.manifest["backend"] == "tracefs"
    result = _check(cap, passes=3)
    regions = cap.dataframe("ioctl")
    regions = regions[regions["cmd_name"].astype(str) == "KVM_SET_USER_MEMORY_REGION2"]
    assert len(regions) and regions["slot"].notna().all() and regions["flags"].notna().all()
    # A ring overrun can take dirty-log ioctls, and the phases they anchor, with it: the phases are checked
    # whenever all of them were kept (one enable, one disable, two GETs and two CLEARs), lossy or not.
    kinds = dirty_log_events(cap.dataframe("ioctl"))["kind"].value_counts().to_dict()
    if kinds == {"enable": 1, "disable": 1, "get": 2, "clear": 2}:
        parsed = parse_selftest_output(recorded.stdout)
        printed = [n if i == 0 else f"{n}#{i}" for n, i in zip(parsed["name"], parsed["iteration"])]
        assert result.tables["phases"]["phase"].tolist() == printed and "disable-dirty-logging" in printed
    else:
        assert cap.lost_total() > 0, kinds  # only lost events excuse a missing dirty-log call
    if cap.lost_total() == 0:
        paths = set(result.tables["walk_paths"]["levels"])
        assert all(re.fullmatch(r"4>3>2>1(>4>3>2>1)*", p) for p in paths), paths
        assert result.info["orphan_walk_elements"] == 0


def test_kvm_page_table_test_walks_match_the_model(record_selftest):
    recorded = record_selftest("kvm_page_table_test", "-b", "16M")
    _check(open_capture(recorded.capture), passes=3)


DIRTY_LOG_TEST_PAGES = (1 << 18) + 3  # dirty_log_test.c: (1 << (DIRTY_MEM_BITS - page_shift)) + 3


def test_dirty_log_test_walks_match_the_model(record_selftest):
    """dirty_log_test prints its test memory's offset, not its size (the model takes it from the source):
    its guest writes each of the 262,147 pages once, then 1024 random ones per KVM_RUN (its "Dirtied N
    pages" line counts those runs' pages, the first pass' run included), so between 262,147 and
    262,147 + N walks of the test memory are compared. Its 1 GiB pass makes millions of walks (every guest
    instruction fetch where CPL0 code is emulated) that the rings cannot all hold: a walk whose last
    elements were lost ends early, and those walks, at most one per lost element, are the only mismatches
    allowed."""
    import re

    recorded = record_selftest("dirty_log_test", "-i", "3", "-M", "dirty-log", probes="walk")
    dirtied = int(re.search(r"Dirtied (\d+) pages", recorded.stdout).group(1))
    offset = int(re.search(r"guest physical test memory offset: (0x[0-9a-f]+)", recorded.stdout).group(1), 16)
    cap = open_capture(recorded.capture)
    result = analyze_capture(cap)
    model = result.info["model"]
    assert (model["test_gva"], model["test_gpa"], model["test_size"]) == (0xC0000000, offset, DIRTY_LOG_TEST_PAGES << 12)
    check = result.verdicts["crosscheck"]
    assert check["outside_model"] > 0 and 0 < check["matched"] <= check["compared"] <= DIRTY_LOG_TEST_PAGES + dirtied
    assert_matches_but_for_lost_elements(cap, result)
    if cap.lost_total() == 0:
        assert check["compared"] >= DIRTY_LOG_TEST_PAGES


def test_memslot_perf_test_moves_are_moves_and_nothing_enables_dirty_logging(record_selftest):
    """memslot_perf_test's move test moves a slot's guest-physical address away and back each iteration
    (its own "Done N iterations" line): 2N moves, no call classed ``same``, and no lock wait inside its
    memslot ioctls labelled ``dirty-log-enable`` (the test never enables dirty logging)."""
    import re

    recorded = record_selftest("memslot_perf_test", "-f", "4", "-e", "4", "-l", "1")
    iterations = int(re.search(r"Done (\d+) iterations", recorded.stdout).group(1))
    cap = open_capture(recorded.capture)
    result = analyze_capture(cap)
    changes = result.tables["memslot_latency"].groupby("change")["count"].sum()
    assert "log-dirty-on" not in changes.index
    if cap.lost_total() == 0:  # a lost call leaves the next one compared with a stale address: "same"
        assert "same" not in changes.index and changes["move"] == 2 * iterations
    waits = result.tables.get("lock_contention")
    if waits is not None:
        assert "dirty-log-enable" not in set(waits["operation"])
    # not modelled (docs/analysis.md): its output names no test memory, so no walk is judged against a model
    assert result.verdicts["crosscheck"]["verdict"] == "no model" and "model" not in result.info
