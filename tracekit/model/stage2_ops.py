"""arm64 stage-2 operations on a :class:`Stage2PageTable`: map, unmap, write-protect, relax.

Each function runs the kernel's walks on the model and returns (or adds to) a :class:`WalkStats`:
:func:`map_range` (``kvm_pgtable_stage2_map``; ``per_fault=True`` walks once per mapping unit, as
``user_mem_abort`` does when the guest touches every page), :func:`unmap_range`,
:func:`wrprotect_range` (``stage2_wp_range`` in minimum-block chunks) and :func:`relax_perms` (a
one-page HANDLE_FAULT|SHARED walk). Sizes are bytes; ModelError on misalignment, ranges beyond the
IPA space, or a mapping over one of another size (collapsing is :mod:`tracekit.model.coalesce`).
"""

from __future__ import annotations

from typing import Optional

from tracekit.errors import ModelError
from tracekit.model.accounting import WalkStats
from tracekit.model.split import range_addr_end
from tracekit.model.stage2 import (
    EAGAIN,
    LEAF_RW,
    PTE_S2AP_R,
    PTE_S2AP_W,
    PTE_XN,
    WALK_HANDLE_FAULT,
    WALK_LEAF,
    WALK_SHARED,
    WALK_TABLE_POST,
    WALK_TABLE_PRE,
    Stage2PageTable,
)

__all__ = ["map_range", "unmap_range", "wrprotect_range", "relax_perms"]


def map_range(
    pgt: Stage2PageTable,
    ipa: int,
    size: int,
    mapping_size: int,
    *,
    leaf: int = LEAF_RW,
    per_fault: bool = True,
    stats: Optional[WalkStats] = None,
) -> WalkStats:
    """Map [ipa, ipa+size) with ``mapping_size`` pages or blocks (see the module docstring)."""
    g = pgt.geom
    target = g.level_of_size(mapping_size)
    pgt._check_range(ipa, size, mapping_size)
    stats = stats if stats is not None else WalkStats()
    early = stats.early

    def stage2_map_walker(table: list, idx: int, addr: int, level: int, visit: int) -> int:
        entry = table[idx]
        if visit == WALK_TABLE_PRE:
            if level == target:
                raise ModelError(
                    f"IPA {addr:#x} holds a table where a {mapping_size:#x} block is asked: coalesce it"
                )
            early[level + 1] += 1
            return 0
        if level == target:
            if entry and entry != leaf:
                raise ModelError(f"IPA {addr:#x} is already mapped differently (overlap)")
            if entry == leaf:
                early[level + 1] += 1
            table[idx] = leaf
            return 0
        if entry:
            raise ModelError(f"IPA {addr:#x} is already mapped by a level-{level} block (overlap)")
        # stage2_map_walk_leaf: no block here -> a new table from the fault memcache.
        stats.tables += 1
        table[idx] = [0] * pgt.ptrs
        return 0

    flags = WALK_LEAF | WALK_TABLE_PRE
    step = mapping_size if per_fault else size
    for addr in range(ipa, ipa + size, step):
        pgt.walk(addr, step, stage2_map_walker, flags, stats)
    return stats


def unmap_range(pgt: Stage2PageTable, ipa: int, size: int, stats: Optional[WalkStats] = None) -> WalkStats:
    """``kvm_pgtable_stage2_unmap`` over [ipa, ipa+size)."""
    pgt._check_range(ipa, size, pgt.geom.granule)
    stats = stats if stats is not None else WalkStats()
    early = stats.early

    def stage2_unmap_walker(table: list, idx: int, addr: int, level: int, visit: int) -> int:
        entry = table[idx]
        if visit == WALK_TABLE_POST:
            if any(entry):  # mm_ops->page_count(childp) != 1
                early[level + 1] += 1
                return 0
            table[idx] = 0
            return 0
        if not entry:
            early[level + 1] += 1
            return 0
        table[idx] = 0  # stage2_put_pte: break-before-make with TLBI
        return 0

    pgt.walk(ipa, size, stage2_unmap_walker, WALK_LEAF | WALK_TABLE_POST, stats)
    return stats


def _attr_walker(set_bits: int, clr_bits: int, stats: WalkStats):
    early = stats.early
    updated: dict[int, int] = {}  # old descriptor -> new, so equal leaves share one int object

    def stage2_attr_walker(table: list, idx: int, addr: int, level: int, visit: int) -> int:
        old = table[idx]
        if not old:
            early[level + 1] += 1
            return -EAGAIN
        new = updated.get(old)
        if new is None:
            new = updated[old] = (old & ~clr_bits) | set_bits
        if new == old:
            early[level + 1] += 1
        else:
            table[idx] = new
        return 0

    return stage2_attr_walker


def wrprotect_range(pgt: Stage2PageTable, start: int, end: int, stats: Optional[WalkStats] = None) -> WalkStats:
    """``stage2_wp_range(mmu, start, end)``: chunked ``kvm_pgtable_stage2_wrprotect`` walks."""
    stats = stats if stats is not None else WalkStats()
    chunk = pgt.geom.level_size(pgt.geom.min_block_level)  # stage2_range_addr_end()
    cb = _attr_walker(0, PTE_S2AP_W, stats)
    addr = start
    while addr != end:
        nxt = range_addr_end(addr, end, chunk)
        pgt.walk(addr, nxt - addr, cb, WALK_LEAF, stats)
        addr = nxt
    return stats


def relax_perms(
    pgt: Stage2PageTable, ipa: int, *, write: bool = True, execute: bool = False, stats: Optional[WalkStats] = None
) -> WalkStats:
    """``kvm_pgtable_stage2_relax_perms``: add R (+W, +X) on the leaf mapping ``ipa``."""
    stats = stats if stats is not None else WalkStats()
    if pgt.mapping_of(ipa) is None:
        raise ModelError(f"IPA {ipa:#x} is not mapped; nothing to relax")
    set_bits = PTE_S2AP_R | (PTE_S2AP_W if write else 0)
    clr_bits = PTE_XN if execute else 0
    pgt.walk(ipa, 1, _attr_walker(set_bits, clr_bits, stats), WALK_LEAF | WALK_HANDLE_FAULT | WALK_SHARED, stats)
    return stats

