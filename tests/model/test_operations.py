"""Stage-2 map/unmap/write-protect/relax, dirty logging and coalescing: golden walks."""

from __future__ import annotations

import pytest

from tracekit.errors import ModelError
from tracekit.model.accounting import WalkStats
from tracekit.model.coalesce import coalesce
from tracekit.model.dirty_memslot import DirtyLog
from tracekit.model.geometry import arm64_stage2
from tracekit.model.split import EagerSplitter
from tracekit.model.stage2 import LEAF_RW, PTE_S2AP_W, Stage2PageTable
from tracekit.model.stage2_ops import map_range, relax_perms, unmap_range, wrprotect_range

K, M, G = 1 << 10, 1 << 20, 1 << 30
A64 = arm64_stage2(4 * K, 40)


def test_map_per_fault_builds_tables_and_descends():
    """Mapping 2 MiB of 4K pages, one walk per page: the first fault finds L1 and L2 invalid and
    installs two tables (the walker descends into each right after the callback), then the page;
    the 511 later faults visit the L1 and L2 tables (TABLE_PRE callbacks) and their page."""
    pgt = Stage2PageTable(A64)
    s = map_range(pgt, G, 2 * M, 4 * K)
    assert s.walks == 512 and s.tables == 2
    assert [s.get("entries", lvl) for lvl in (1, 2, 3)] == [512, 512, 512]
    assert (s.get("leaf", 1), s.get("table_pre", 1)) == (1, 511)
    assert s.get("leaf", 3) == 512 and pgt.table_count() == 2
    assert pgt.mapping_of(G + 5 * 4 * K) == (3, LEAF_RW)


def test_map_a_block_and_reject_overlap():
    pgt = Stage2PageTable(A64)
    s = map_range(pgt, 2 * M, 4 * M, 2 * M)
    assert s.walks == 2 and s.get("leaf", 2) == 2 and pgt.mapping_of(3 * M) == (2, LEAF_RW)
    with pytest.raises(ModelError, match="overlap"):
        map_range(pgt, 2 * M, 4 * K, 4 * K)
    with pytest.raises(ModelError, match="not aligned"):
        map_range(pgt, 4 * K, 2 * M, 2 * M)


def test_unmap_clears_leaves_and_frees_empty_tables():
    """Unmapping the whole 2 MiB: 512 leaf clears, then TABLE_POST frees the now-empty L2 table's
    child (the L3 table) and, its L1 entry's table being empty, that table too."""
    pgt = Stage2PageTable(A64)
    pgt.populate(G, 2 * M, 4 * K)
    s = unmap_range(pgt, G, 2 * M)
    assert s.walks == 1 and s.get("leaf", 3) == 512 and s.total("table_post") == 2
    assert pgt.table_count() == 0 and pgt.mapping_of(G) is None


def test_wrprotect_is_chunked_by_the_min_block_level_and_idempotent():
    """stage2_wp_range walks 1 GiB chunks with 4K pages: 2 GiB of 2M blocks = 2 walks, 1024 leaves
    written; a second pass writes nothing (all early returns)."""
    pgt = Stage2PageTable(A64)
    pgt.populate(G, 2 * G, 2 * M)
    s = wrprotect_range(pgt, G, 3 * G)
    assert s.walks == 2 and s.get("leaf", 2) == 1024 and s.get("early", 2) == 0
    assert not pgt.mapping_of(G)[1] & PTE_S2AP_W
    again = wrprotect_range(pgt, G, 3 * G)
    assert again.get("early", 2) == 1024
    relax_perms(pgt, G + 4 * K)
    assert pgt.mapping_of(G)[1] & PTE_S2AP_W  # the whole 2 MiB block regains W


def test_dirty_log_enable_without_initially_set_splits_at_once():
    pgt = Stage2PageTable(A64)
    pgt.populate(G, 64 * M, 2 * M)
    log = DirtyLog(EagerSplitter(pgt, 2 * M), G, 64 * M, manual_protect=True)
    r = log.enable()
    assert r.split.get("splits", 2) == 32 and r.write_protect.walks == 1
    with pytest.raises(ModelError, match="multiple of 64"):
        log.clear(first_page=3, num_pages=64)
    with pytest.raises(ModelError, match="beyond"):
        log.clear(first_page=0, num_pages=1 << 20)
    assert log.clear().masked_calls == 0  # nothing dirty yet
    log.mark_dirty(100)
    log.mark_dirty(127)
    r = log.clear()
    # one word (pages 64..127) with bits 36 and 63: range [page 100, page 128)
    assert r.masked_calls == 1 and r.write_protect.walks == 1 and r.split.walks == 0


def test_clear_without_manual_protect_is_refused():
    pgt = Stage2PageTable(A64)
    pgt.populate(G, 2 * M, 2 * M)
    with pytest.raises(ModelError, match="manual protect"):
        DirtyLog(EagerSplitter(pgt, 2 * M), G, 2 * M).clear()


def test_coalesce_orders_golden():
    """Rebuilding one 2 MiB block from 512 pages. Old order: clear + TLBI, 512 leaf puts and the
    L3 table free run unmapped, then the block is installed: 2 + 512 + 1 = 515 unmapped of 516
    steps. New order: break + TLBI unmapped, make, then the free walk: 2 unmapped of 516."""
    results = {}
    for order in ("old", "new"):
        pgt = Stage2PageTable(A64)
        pgt.populate(G, 2 * M, 4 * K)
        results[order] = coalesce(pgt, G, 2 * M, order)
        assert pgt.mapping_of(G + 8 * K) == (2, LEAF_RW) and pgt.table_count() == 1
    old, new = results["old"], results["new"]
    assert (old.steps, old.unmapped_steps) == (516, 515)
    assert (new.steps, new.unmapped_steps) == (516, 2)
    assert old.walk.get("entries", 3) == 512 and new.walk.get("entries", 3) == 0
    assert new.free_walk.get("entries", 3) == 512 and old.leaves_put == new.leaves_put == 512


def test_coalesce_needs_a_full_table():
    pgt = Stage2PageTable(A64)
    pgt.populate(G, M, 4 * K)
    with pytest.raises(ModelError, match="unmapped entries"):
        coalesce(pgt, G, 2 * M)
    with pytest.raises(ModelError, match="old or new"):
        coalesce(pgt, G, 2 * M, "sideways")


def test_walk_beyond_ipa_space_is_refused():
    with pytest.raises(ModelError, match="IPA space"):
        Stage2PageTable(A64).walk(1 << 40, 4 * K, lambda *a: 0, 1, WalkStats())


def test_clear_with_a_user_bitmap_touches_only_its_words():
    """Initially-set 1 MiB of THP-backed 4K granule = 256 pages = 4 words; clearing only word 2
    (bits 128..191) write-protects and splits [page 128, page 192): one walk splitting the block."""
    pgt = Stage2PageTable(A64)
    pgt.populate(G, 2 * M, 2 * M)
    log = DirtyLog(EagerSplitter(pgt, 2 * M), G, 2 * M, manual_protect=True, initially_set=True)
    log.enable()
    r = log.clear(first_page=0, num_pages=512, bitmap=((1 << 64) - 1) << 128)
    assert r.masked_calls == 1 and r.split.walks == 1 and r.split.get("splits", 2) == 1
    assert r.split.get("entries", 3) == 64  # only the word's pages are visited in the new table
    assert log.clear(first_page=128, num_pages=64).masked_calls == 0  # already cleared
