"""The selftests' guest page-table model: parsed from their output, checked against recorded walks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, strategies as st

from tracekit.analysis.analyze import analyze_capture, render_text
from tracekit.analysis.report import render_report
from tracekit.analysis.selftestmodel import (SelftestGuest, first_test_table, parse_selftest_guest,
                                             selftest_model)
from tracekit.capture.columns import SCHEMAS
from tracekit.capture.reader import open_capture
from tracekit.errors import AnalysisError
from tracekit.model.x86 import PTE_AD_MASK

# dirty_log_perf_test -b 16M -i 2 on this kind of host (Debian linux-source-6.12).
PERF_OUTPUT = """Test iterations: 2
Testing guest mode: PA-bits:ANY, VA-bits:48,  4K pages
guest physical test memory: [0xfffffefff000, 0xfffffffff000)
Populate memory time: 0.659401079s
Enabling dirty logging time: 0.002071675s

Iteration 1 dirty memory time: 0.535604018s
Iteration 1 get dirty log time: 0.000012310s
Iteration 1 clear dirty log time: 0.000017025s
Disabling dirty logging time: 0.002625053s
"""
# kvm_page_table_test -b 16M.
PTT_OUTPUT = """Testing guest mode: PA-bits:ANY, VA-bits:48,  4K pages
Testing memory backing src type: anonymous
Testing memory size(aligned): 0x1000000
Guest physical test memory offset: 0xfffffefff000
KVM_CREATE_MAPPINGS: total execution time: 0.207983409s
"""
# Walks recorded from that dirty_log_perf_test run (address: (level, pte) in walk order).
RECORDED = {
    0xC0000000: [(4, 0x181023), (3, 0x186003), (2, 0x187003), (1, 0xFFFFFEFFF003)],
    0xC07D0000: [(4, 0x181023), (3, 0x186023), (2, 0x18A023), (1, 0xFFFFFF7CF003)],
    0xC0FA0000: [(4, 0x181023), (3, 0x186023), (2, 0x18E023), (1, 0xFFFFFFF9F003)],
    0xC0770000: [(4, 0x181023), (3, 0x186023), (2, 0x18A023), (1, 0xFFFFFF76F063)],
}
GUEST = SelftestGuest("PA-bits:ANY, VA-bits:48,  4K pages", 48, 4, 0xFFFFFEFFF000, 16 << 20)


def test_parse_both_selftests_outputs():
    assert parse_selftest_guest(PERF_OUTPUT) == GUEST
    assert parse_selftest_guest(PTT_OUTPUT) == GUEST
    assert parse_selftest_guest("Populate memory time: 0.1s\n") is None


def test_model_reproduces_recorded_walks():
    """Golden: the model's walks equal the recorded ones (ignoring the A/D bits KVM's walker sets), the
    page-table addresses included: root 0x180000, PDPT 0x181000, the test memory's PD and PTs in a run."""
    walk = selftest_model(GUEST, 0x186000)
    for addr, recorded in RECORDED.items():
        model = walk(addr)
        assert [(s.level, s.pte) for s in model.levels] == [(lv, pte & ~PTE_AD_MASK) for lv, pte in recorded]
    assert walk(0x4081B0) is None and walk(0xC0000000 + (16 << 20)) is None  # code; past the test memory


@given(st.integers(1, 1500), st.integers(0, 1 << 20), st.integers(0x183, 0x400))
def test_model_translates_every_test_page_through_consecutive_tables(pages, gfn, table_page):
    """Property: every page of the test memory translates to its guest-physical page, through the PT
    allocated right after the previous one (virt_map allocates them in ascending addresses)."""
    guest = SelftestGuest("m", 48, 4, gfn << 12, pages << 12)
    walk = selftest_model(guest, table_page << 12)
    for page in {0, pages // 2, pages - 1}:
        w = walk(guest.gva + (page << 12) + 0x123)
        assert w.gpa == guest.gpa + (page << 12) + 0x123 and w.leaf_level == 1
        assert w.levels[2].pte & ~0xFFF == (table_page + 1 + page // 512) << 12
        assert all(s.pte & 0xFFF == 0x3 for s in w.levels)  # present, writable, no user bit


def test_unsupported_guest_mode_is_a_clear_error():
    with pytest.raises(AnalysisError, match="not modelled: only 48-bit 4K pages"):
        selftest_model(SelftestGuest("PA-bits:52, VA-bits:57, 4K pages", 57, 4, 0, 4096), 0x186000)


def _capture(make_capture, walks: dict, manifest: dict | None = None):
    ids = list(range(1, len(walks) + 1))
    elements = [(wid, i, lv, pte) for wid, recorded in zip(ids, walks.values()) for i, (lv, pte) in enumerate(recorded)]
    walk_schema, element_schema = SCHEMAS["walk"], SCHEMAS["walk_element"]
    n, m = len(ids), len(elements)
    return make_capture({
        "walk": (walk_schema, {"ts_ns": ids, "cpu": [0] * n, "pid": [1] * n, "tid": [1] * n, "walk_id": ids,
                               "addr": list(walks), "pferr": [2] * n}),
        "walk_element": (element_schema, {"ts_ns": [e[0] for e in elements], "cpu": [0] * m, "pid": [1] * m,
                                          "tid": [1] * m, "walk_id": [e[0] for e in elements],
                                          "index": [e[1] for e in elements], "level": [e[2] for e in elements],
                                          "pte": [e[3] for e in elements]}),
        # the dirty-log ioctls the selftest output's phases are aligned on
        "ioctl": {"ts_ns": [100, 120], "duration_ns": [10, 10], "cmd_name": ["KVM_GET_DIRTY_LOG", "KVM_CLEAR_DIRTY_LOG"]}}, manifest)


def test_analysis_checks_test_memory_walks_and_counts_the_others(make_capture):
    """The recorded walks match; a code fetch is outside the model; a PTE pointing one page off is a
    mismatch the check reports."""
    walks = {**RECORDED, 0x4081B0: [(4, 0x181003), (3, 0x182003), (2, 0x183003), (1, 0xA003)]}
    cap = open_capture(_capture(make_capture, walks))
    assert first_test_table(cap, GUEST) == 0x186000
    result = analyze_capture(cap, selftest_output=PERF_OUTPUT)
    check = result.verdicts["crosscheck"]
    assert (check["verdict"], check["compared"], check["matched"], check["outside_model"]) == ("match", 4, 4, 1)
    assert result.info["model"]["test_table_gpa"] == 0x186000
    assert "1 walks of addresses the model does not cover" in render_text(result)
    assert "1 walks of addresses the model does not cover were not compared" in render_report(result, cap)
    # no mmu family recorded: the walks' cause cannot be told
    assert result.verdicts["walk_causes"]["unknown"] == 5 and "walk causes unknown" in render_text(result)
    bad = {**walks, 0xC0001000: [(4, 0x181023), (3, 0x186023), (2, 0x187023), (1, 0xFFFFFF001003 + 0x1000)]}
    result = analyze_capture(open_capture(_capture(make_capture, bad)), selftest_output=PERF_OUTPUT)
    check = result.verdicts["crosscheck"]
    assert (check["verdict"], check["compared"], check["mismatched"]) == ("mismatch", 5, 1)
    row = result.tables["crosscheck_mismatches"].iloc[0]
    assert (row["addr"], row["depth"], row["reason"]) == (0xC0001000, 3, "pte differs")


def test_without_a_test_memory_walk_there_is_no_model(make_capture):
    cap = open_capture(_capture(make_capture, {0x4081B0: [(4, 0x181003), (3, 0x182003), (2, 0x183003), (1, 0xA003)]}))
    result = analyze_capture(cap, selftest_output=PERF_OUTPUT)
    assert result.verdicts["crosscheck"]["verdict"] == "no model"
    assert "no walk of the selftest's test memory" in result.verdicts["crosscheck"]["evidence"]
    assert np.isfinite(len(result.tables["walk_paths"]))


def test_in_memory_check_counts_outside_walks_like_the_streamed_one(make_capture):
    from tracekit.analysis.common import load
    from tracekit.analysis.walks import ELEMENT_COLUMNS, WALK_COLUMNS

    from .walkref import crosscheck_walks, rebuild_walks

    walks = {**RECORDED, 0x4081B0: [(4, 0x181003), (3, 0x182003), (2, 0x183003), (1, 0xA003)]}
    cap = open_capture(_capture(make_capture, walks))
    rebuilt, steps = rebuild_walks(load(cap, "walk", list(WALK_COLUMNS)), load(cap, "walk_element", list(ELEMENT_COLUMNS)))
    summary = crosscheck_walks(rebuilt, steps, selftest_model(GUEST, 0x186000)).summary
    streamed = analyze_capture(cap, selftest_output=PERF_OUTPUT).verdicts["crosscheck"]
    assert summary == streamed and summary["outside_model"] == 1


# dirty_log_test -i 3 -M dirty-log on this kind of host: its test memory's size is not printed; the source
# fixes it at (1 << (30 - 12)) + 3 pages, so [0xffffbfffc000, +0x40003000) at 0xc0000000..0x100003000.
DIRTY_LOG_OUTPUT = """Random seed: 0x6b8b4567
Setting log mode to: 'dirty-log'
Test iterations: 3, interval: 10 (ms)
Testing guest mode: PA-bits:ANY, VA-bits:48,  4K pages
guest physical test memory offset: 0xffffbfffc000
Dirtied 2048 pages
Total bits checked: dirty (262147), clear (262147), track_next (261877)
"""
# Walks recorded from that run: the first page, one in the middle, and the three pages past 4 GiB that the
# test memory's second PD (0x387000, made after the first PD's 512 PTs) and its PT (0x388000) map.
DIRTY_LOG_RECORDED = {
    0xC0000000: [(4, 0x181023), (3, 0x186003), (2, 0x187003), (1, 0xFFFFBFFFC003)],
    0xE11D0000: [(4, 0x181023), (3, 0x186023), (2, 0x28F023), (1, 0xFFFFE11CC003)],
    0x100000000: [(4, 0x181023), (3, 0x387003), (2, 0x388003), (1, 0xFFFFFFFFC003)],
    0x100002000: [(4, 0x181023), (3, 0x387023), (2, 0x388023), (1, 0xFFFFFFFFE003)],
}
DIRTY_LOG_CODE_FETCH = {0x403090: [(4, 0x181003), (3, 0x182003), (2, 0x183003), (1, 0x5003)]}


def test_dirty_log_test_memory_follows_from_its_guest_mode():
    guest = parse_selftest_guest(DIRTY_LOG_OUTPUT)
    assert (guest.gpa, guest.size, guest.gva, guest.page_kib) == (0xFFFFBFFFC000, ((1 << 18) + 3) << 12, 0xC0000000, 4)
    # -M all runs one VM per log mode, each placing its test memory alike: one model for the three
    assert parse_selftest_guest(DIRTY_LOG_OUTPUT * 3) == guest
    with pytest.raises(AnalysisError, match="place their test memory differently"):
        parse_selftest_guest(DIRTY_LOG_OUTPUT + DIRTY_LOG_OUTPUT.replace("0xffffbfffc000", "0x100000000"))
    # kvm_page_table_test's capitalised offset line is not dirty_log_test's
    assert parse_selftest_guest("Guest physical test memory offset: 0x100000000\n") is None


def test_model_reproduces_dirty_log_test_walks_across_the_4_gib_line():
    walk = selftest_model(parse_selftest_guest(DIRTY_LOG_OUTPUT), 0x186000)
    for addr, recorded in DIRTY_LOG_RECORDED.items():
        assert [(s.level, s.pte) for s in walk(addr).levels] == [(lv, pte & ~PTE_AD_MASK) for lv, pte in recorded]
    assert walk(0x403090) is None and walk(0x100003000) is None and walk(0xBFFFF000) is None


def test_dirty_log_test_walks_checked_and_differing_runs_have_no_model(make_capture):
    """As ``record -- ./dirty_log_test`` keeps it: the output in the capture, no option."""

    def check(output: str) -> dict:
        walks = {**DIRTY_LOG_RECORDED, **DIRTY_LOG_CODE_FETCH}
        cap = open_capture(_capture(make_capture, walks, {"command_output": {"stdout": output}}))
        return analyze_capture(cap).verdicts["crosscheck"]

    assert [check(DIRTY_LOG_OUTPUT)[k] for k in ("verdict", "compared", "matched", "outside_model")] == ["match", 4, 4, 1]
    moved = DIRTY_LOG_OUTPUT.replace("0xffffbfffc000", "0xffffbfffb000")  # one page off: every leaf differs
    assert [check(moved)[k] for k in ("verdict", "mismatched")] == ["mismatch", 4]
    differing = check(DIRTY_LOG_OUTPUT + moved)
    assert differing["verdict"] == "no model" and "place their test memory differently" in differing["evidence"]
