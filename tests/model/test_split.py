"""arm64 eager split and x86 TDP split: golden cases worked by hand from the kernel code."""

from __future__ import annotations

import pytest

from tracekit.errors import ModelError
from tracekit.model.accounting import WalkStats
from tracekit.model.analytic import SplitCase, simulate_split, split_accounting
from tracekit.model.geometry import arm64_stage2, x86_geometry
from tracekit.model.split import EagerSplitter, range_addr_end, split_nr_page_tables
from tracekit.model.stage2 import Stage2PageTable
from tracekit.model.tdp import TdpPageTable

K, M, G = 1 << 10, 1 << 20, 1 << 30
A64 = arm64_stage2(4 * K, 40)  # 3 levels, start level 1


def both(case: SplitCase) -> WalkStats:
    """The explicit simulation, after checking the analytic path agrees with it."""
    explicit = simulate_split(case)
    assert split_accounting(case) == explicit
    return explicit


def test_lab_256m_thp_2m_chunks():
    """arm64 lab: 256 MiB THP, 2 MiB chunks -> 128 kvm_pgtable_stage2_split calls and 65,664
    stage2_split_walker calls.

    Per chunk: L1 table entry (no LEAF callback), 1 L2 block (callback, split with force_pte
    because the cache holds kvm_mmu_split_nr_page_tables(2M) = 1 + 1 = 2 >= 1), then the walker
    re-reads it as a table and visits its 512 new L3 pages (callbacks returning at once):
    128 x (1 + 512) = 65,664 callbacks, 128 x (1 + 1 + 512) = 65,792 entries.
    """
    s = both(SplitCase(A64, G, 256 * M, 2 * M, "enable", 2 * M))
    assert s.walks == 128 and s.total("callbacks") == 65_664 and s.total("entries") == 65_792
    assert [s.get("entries", lvl) for lvl in (1, 2, 3)] == [128, 128, 65_536]
    assert s.get("early", 3) == s.get("fresh", 3) == 65_536 and s.get("splits", 2) == 128
    assert s.tables == 128 and s.get("build", 3) == 128 * 512
    assert s.topups == 128  # empty at first, then one object short after every split


def test_clear_moves_the_same_work_into_64_page_words():
    """Manual protect + initially-set: 256 MiB = 1024 words of 256 KiB, each one walk; the first
    word of a 2 MiB block splits it (1 callback) and visits its 64 in-range pages, the other 7
    words find the table and visit their 64 pages: 128 x (1 + 8 x 64) = 65,664 callbacks again."""
    s = both(SplitCase(A64, G, 256 * M, 2 * M, "clear", 2 * M))
    assert s.walks == 1024 and s.total("callbacks") == 65_664
    assert s.get("fresh", 3) == 128 * 64  # only the first word's pages are in a fresh subtree


def test_1g_block_with_a_1g_chunk_is_split_to_pages_at_once():
    """cap = kvm_mmu_split_nr_page_tables(1G) = 1 + 512 = 513 = PTRS_PER_PTE + 1 -> force_pte:
    one callback at L1, then 512 fresh L2 table entries (no LEAF callback) and 262,144 fresh
    L3 pages; create_unlinked's own walk visits 512 L2 + 512 x 512 L3 entries."""
    s = both(SplitCase(A64, G, G, G, "enable", G))
    assert s.walks == 1 and s.get("leaf", 1) == 1 and s.get("splits", 1) == 1
    assert s.get("entries", 2) == s.get("fresh", 2) == 512 and s.get("leaf", 2) == 0
    assert s.get("entries", 3) == s.get("early", 3) == 262_144
    assert s.tables == 513 and (s.get("build", 2), s.get("build", 3)) == (512, 262_144)


def test_1g_block_with_2m_chunks_is_split_one_level_at_a_time():
    """cap = 2 < 513 -> force_pte = false: the first chunk turns the L1 block into one table of
    2 MiB blocks (1 page), then splits the one in range (1 page); 511 later chunks split one
    2 MiB block each: 1 + 512 tables, 512 walks, 1 + 512 + 262,144 callbacks."""
    s = both(SplitCase(A64, G, G, G, "enable", 2 * M))
    assert s.walks == 512 and s.tables == 513
    assert (s.get("splits", 1), s.get("splits", 2)) == (1, 512)
    assert s.total("callbacks") == 1 + 512 + 262_144
    assert s.get("fresh", 2) == 1  # only the first chunk sees the fresh L2 table


def test_cache_limited_split_stops_on_enomem():
    """A 1 GiB chunk with a 3-page cache: the L1 block gets a table of blocks (1 page), two
    2 MiB blocks split (2 pages), the third finds the cache empty: -ENOMEM ends the walk and,
    at dirty-log enable, the whole split (kvm_mmu_split_huge_pages breaks out)."""
    s = both(SplitCase(A64, G, 2 * G, G, "enable", G, cache_capacity=3))
    assert s.stopped and s.walks == 1
    assert s.get("enomem", 2) == 1 and s.get("entries", 2) == 3 and s.get("splits", 2) == 2
    assert s.get("entries", 3) == 2 * 512


def test_already_split_memory_and_skip_level3():
    """1 GiB of 4 KiB pages, 2 MiB chunks: every walk visits 1 L1, 1 L2 and 512 L3 entries, each
    L3 callback returning at once (262,144); SKIP_LEVEL3 removes all of them."""
    without = both(SplitCase(A64, G, G, 4 * K, "enable", 2 * M))
    with_skip = both(SplitCase(A64, G, G, 4 * K, "enable", 2 * M, skip_levels=frozenset({3})))
    assert without.total("callbacks") == without.get("early", 3) == 262_144
    assert with_skip.total("callbacks") == 0 and with_skip.total("entries") == 1024
    assert with_skip.skipped_levels == {3} and not without.skipped_levels


def test_16k_and_64k_blocks():
    """16K: a 32 MiB block splits into one table of 2048 pages; 64K: 512 MiB into 8192."""
    g16 = arm64_stage2(16 * K, 48)
    s = both(SplitCase(g16, 32 * M, 64 * M, 32 * M, "enable", 32 * M))
    assert s.walks == 2 and s.total("callbacks") == 2 * (1 + 2048)
    g64 = arm64_stage2(64 * K, 48)
    s = both(SplitCase(g64, 512 * M, 512 * M, 512 * M, "enable", 512 * M))
    assert s.total("callbacks") == 1 + 8192 and s.tables == 1


def test_chunking_and_cache_formulas():
    """__stage2_range_addr_end stops at chunk-aligned boundaries; kvm_mmu_split_nr_page_tables."""
    assert range_addr_end(3 * M, 10 * M, 2 * M) == 4 * M and range_addr_end(9 * M, 10 * M, 2 * M) == 10 * M
    assert split_nr_page_tables(A64, 2 * M) == 2 and split_nr_page_tables(A64, G) == 513
    assert split_nr_page_tables(arm64_stage2(16 * K, 48), 32 * M) == 1


def test_chunk_size_zero_disables_and_bad_chunk_is_rejected():
    assert split_accounting(SplitCase(A64, G, 64 * M, 2 * M, "enable", 0)).walks == 0
    with pytest.raises(ModelError, match="chunk"):
        EagerSplitter(Stage2PageTable(A64), 3 * M)


@pytest.mark.parametrize(
    "case, message",
    [
        (SplitCase(A64, G, 2 << 40, 2 * M, "enable", 2 * M), "beyond the 40-bit IPA"),
        (SplitCase(A64, G + 4 * K, 64 * M, 2 * M, "enable", 2 * M), "not aligned"),
        (SplitCase(arm64_stage2(16 * K, 48), G, G, G, "enable", 32 * M), "no 1G mapping"),
        (SplitCase(A64, G, 64 * M, 2 * M, "sometimes", 2 * M), "mode"),
    ],
)
def test_impossible_requests(case, message):
    with pytest.raises(ModelError, match=message):
        split_accounting(case)


def test_x86_lab_figures():
    """x86 TDP MMU lab: 64 MiB THP -> 32 splits at level 2; 1 GiB hugetlb -> 1 at level 3 + 512
    at level 2, at enable or over the first CLEAR with initially-set."""
    x4 = x86_geometry(4)
    s = both(SplitCase(x4, G, 64 * M, 2 * M, "enable"))
    assert s.get("splits", 2) == 32 and s.total("splits") == 32
    for mode in ("enable", "clear"):
        s = both(SplitCase(x4, G, G, G, mode))
        assert (s.get("splits", 3), s.get("splits", 2)) == (1, 512)
        assert s.get("entries", 1) == 0 and s.skipped_levels == {1}


def test_x86_iterator_restarts_after_each_allocation():
    """Enable on 1 GiB hugetlb: the pre-order walk visits L4, L3 (1 entry each) and the 512 L2
    children; each of the 513 splits first drops mmu_lock to allocate, then restarts from the
    root and walks down to the same SPTE: +513 visits at L4 and L3, +512 at L2."""
    s = both(SplitCase(x86_geometry(4), G, G, G, "enable"))
    assert s.restarts == 513
    assert [s.get("entries", lvl) for lvl in (4, 3, 2)] == [1 + 513, 1 + 513, 512 + 512]
    s = both(SplitCase(x86_geometry(4), G, G, G, "enable", alloc_drops_lock=False))
    assert s.restarts == 0 and [s.get("entries", lvl) for lvl in (4, 3, 2)] == [1, 1, 512]


def test_tdp_populate_rejects_overlap():
    t = TdpPageTable()
    t.populate(0, 4 * M, 2 * M)
    with pytest.raises(ModelError, match="overlap"):
        t.populate(2 * M, 4 * K, 4 * K)
    assert t.mapping_of(3 * M) == 2 and t.mapping_of(8 * M) is None


def test_skip_comparison_reports_the_reduction():
    """64 GiB of THP, 2 MiB chunks: per block 1 L2 callback + 512 L3 callbacks without skipping,
    1 with SKIP_LEVEL3: callbacks fall by 512/513 = 99.805 %."""
    from tracekit.model.analytic import skip_comparison

    r = skip_comparison(SplitCase(arm64_stage2(4 * K, 40), G, 64 * G, 2 * M, "enable", 2 * M))
    assert r["without_skip"].total("callbacks") == 32_768 * 513
    assert r["with_skip"].total("callbacks") == 32_768 and r["skipped_levels"] == [3]
    assert r["reduction_percent"]["callbacks"] == pytest.approx(-100 * 512 / 513)
