"""arm64 eager page splitting, simulated entry by entry on a :class:`Stage2PageTable`.

:class:`EagerSplitter` mirrors ``kvm_mmu_split_huge_pages`` (chunked walks, the split memory cache
refilled before a chunk that finds it short) and ``kvm_pgtable_stage2_split`` /
``stage2_split_walker`` (a fully populated subtree when the cache allows, else one table of
next-level blocks split again as the walk descends; the subtree built by its own walk, counted in
``WalkStats.build``). ``cache_capacity`` overrides the kernel's cache size. Chunk sizes other than 0
and the supported block sizes raise ModelError, as ``KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE`` does.
"""

from __future__ import annotations

from typing import Optional

from tracekit.errors import ModelError
from tracekit.model.accounting import WalkStats
from tracekit.model.geometry import LAST_LEVEL, Arm64Geometry, format_size
from tracekit.model.stage2 import ENOMEM, WALK_LEAF, Stage2PageTable, _Walk

__all__ = [
    "block_nr_page_tables",
    "split_nr_page_tables",
    "range_addr_end",
    "check_chunk_size",
    "EagerSplitter",
]


def block_nr_page_tables(geom: Arm64Geometry, level: int) -> int:
    """``stage2_block_get_nr_page_tables``: tables needed to map a block at ``level`` down to pages."""
    if level == 1:
        return geom.entries_per_table + 1
    if level == 2:
        return 1
    if level == 3:
        return 0
    raise ModelError(f"no stage-2 block exists at level {level}")


def split_nr_page_tables(geom: Arm64Geometry, size: int) -> int:
    """``kvm_mmu_split_nr_page_tables``: ceil(size / PUD_SIZE) [4K only] + ceil(size / PMD_SIZE)."""
    n = 0
    if geom.min_block_level < 2:
        n += -(-size // geom.level_size(1))
    n += -(-size // geom.level_size(2))
    return n


def range_addr_end(addr: int, end: int, size: int) -> int:
    """``__stage2_range_addr_end``: the next ``size``-aligned boundary after ``addr``, or ``end``."""
    boundary = (addr + size) - (addr + size) % size
    return boundary if boundary - 1 < end - 1 else end


def check_chunk_size(geom: Arm64Geometry, chunk_size: int) -> None:
    """ModelError unless ``chunk_size`` is 0 or a size in ``kvm_supported_block_sizes()``."""
    if chunk_size and chunk_size not in geom.supported_block_sizes():
        sizes = ", ".join(format_size(s) for s in geom.supported_block_sizes())
        raise ModelError(
            f"eager-split chunk {format_size(chunk_size)} is not a {format_size(geom.granule)}-granule "
            f"block size ({sizes}, or 0 to disable)"
        )


class EagerSplitter:
    """Eager splitting on one stage-2 table with its persistent split memory cache."""

    def __init__(
        self,
        pgt: Stage2PageTable,
        chunk_size: int,
        *,
        cache_capacity: Optional[int] = None,
        skip_levels: frozenset[int] = frozenset(),
    ) -> None:
        check_chunk_size(pgt.geom, chunk_size)
        if cache_capacity is not None and cache_capacity < 0:
            raise ModelError("the split cache capacity cannot be negative")
        self.pgt = pgt
        self.chunk_size = chunk_size
        self.capacity = (
            split_nr_page_tables(pgt.geom, chunk_size) if cache_capacity is None else cache_capacity
        )
        self.nobjs = 0  # kvm->arch.mmu.split_page_cache starts empty
        self.skip_levels = frozenset(skip_levels)

    def split_huge_pages(self, addr: int, end: int, stats: WalkStats) -> int:
        """``kvm_mmu_split_huge_pages(kvm, addr, end)``: 0 or the errno the split stopped on."""
        if self.chunk_size == 0:
            return 0
        ret = 0
        while True:
            if self.nobjs < self.capacity:  # need_split_memcache_topup_or_resched()
                stats.topups += 1
                self.nobjs = self.capacity  # __kvm_mmu_topup_memory_cache(cache, cap, cap)
            nxt = range_addr_end(addr, end, self.chunk_size)
            ret = self.stage2_split(addr, nxt - addr, stats)
            if ret:
                stats.stopped = True
                break
            addr = nxt
            if addr == end:
                break
        return ret

    def stage2_split(self, addr: int, size: int, stats: WalkStats) -> int:
        """``kvm_pgtable_stage2_split``: one LEAF walk with ``stage2_split_walker``."""
        return self.pgt.walk(addr, size, self._split_walker(stats), WALK_LEAF, stats, self.skip_levels)

    def _split_walker(self, stats: WalkStats):
        geom = self.pgt.geom
        early = stats.early
        splits = stats.splits

        def stage2_split_walker(table: list, idx: int, addr: int, level: int, visit: int) -> int:
            if level == LAST_LEVEL:  # no huge pages at the last level
                early[level + 1] += 1
                return 0
            entry = table[idx]
            if not entry:  # only valid block mappings are split
                early[level + 1] += 1
                return 0
            nr_pages = block_nr_page_tables(geom, level)
            force_pte = self.nobjs >= nr_pages
            if not force_pte:
                nr_pages = 1
            if self.nobjs < nr_pages:
                stats.enomem[level + 1] += 1
                return -ENOMEM
            table[idx] = self._create_unlinked(entry, level, force_pte, stats)
            splits[level + 1] += 1
            return 0

        return stage2_split_walker

    def _create_unlinked(self, leaf: int, level: int, force_pte: bool, stats: WalkStats) -> list:
        """``kvm_pgtable_stage2_create_unlinked``: a detached subtree replacing block ``leaf``."""
        pgt = self.pgt
        geom = pgt.geom
        self.nobjs -= 1  # zalloc_page(mc) for the subtree's root table
        stats.tables += 1
        root = [0] * pgt.ptrs
        build = WalkStats()

        def stage2_map_walker(table: list, idx: int, addr: int, lvl: int, visit: int) -> int:
            # stage2_map_walk_leaf -> stage2_map_walker_try_leaf / stage2_leaf_mapping_allowed.
            granule = geom.level_size(lvl)
            if lvl == LAST_LEVEL or (not force_pte and lvl in geom.block_levels and addr % granule == 0):
                table[idx] = leaf
                return 0
            self.nobjs -= 1  # zalloc_page(mc) for a next-level table
            stats.tables += 1
            table[idx] = [0] * pgt.ptrs
            return 0

        walk = _Walk(pgt, 0, geom.level_size(level), stage2_map_walker, WALK_LEAF, build, frozenset())
        walk.walk_table(root, level + 1, False)
        for slot, n in enumerate(build.entries):
            stats.build[slot] += n
        return root
