"""Coalescing a table back into a block, in the old order and in install-block-first order.

:func:`coalesce` replaces the table under ``[ipa, ipa + block_size)`` with one block through
``kvm_pgtable_stage2_map`` and counts the primitive steps (PTE writes, TLB invalidations, leaf puts,
table frees) and how many run while part of the range has no valid mapping: ``order="old"`` (before
the 2021 rework: clear, invalidate, tear the subtree down, install the block last) or ``order="new"``
(break the table entry, install the block, then free the old subtree). docs/model.md gives both
walks. ModelError if no table maps the whole range.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tracekit.errors import ModelError
from tracekit.model.accounting import WalkStats
from tracekit.model.stage2 import (
    WALK_LEAF,
    WALK_TABLE_POST,
    WALK_TABLE_PRE,
    Stage2PageTable,
    _Walk,
)

__all__ = ["ORDERS", "CoalesceResult", "coalesce"]

ORDERS = ("old", "new")


@dataclass
class CoalesceResult:
    """Steps of one coalescing and the walks that did it."""

    order: str
    steps: int = 0
    unmapped_steps: int = 0
    leaves_put: int = 0
    tables_freed: int = 0
    walk: WalkStats = field(default_factory=WalkStats)
    free_walk: WalkStats = field(default_factory=WalkStats)

    def as_dict(self, levels: list[int]) -> dict:
        return {
            "order": self.order,
            "steps": self.steps,
            "unmapped_steps": self.unmapped_steps,
            "leaves_put": self.leaves_put,
            "tables_freed": self.tables_freed,
            "walk": self.walk.as_dict(levels),
            "free_walk": self.free_walk.as_dict(levels),
        }


def _check_subtree(table: list) -> int:
    """The single leaf descriptor of a fully mapped subtree; ModelError otherwise."""
    seen: set[int] = set()

    def visit(t: list) -> None:
        for e in t:
            if type(e) is list:
                visit(e)
            elif not e:
                raise ModelError("the table has unmapped entries: nothing to coalesce into one block")
            else:
                seen.add(e)

    visit(table)
    if len(seen) != 1:
        raise ModelError("the table's leaves have different attributes: they cannot form one block")
    return seen.pop()


def coalesce(pgt: Stage2PageTable, ipa: int, block_size: int, order: str = "new") -> CoalesceResult:
    """Coalesce the table mapping ``[ipa, ipa + block_size)`` into a block (module docstring)."""
    if order not in ORDERS:
        raise ModelError(f"coalescing order must be old or new, not {order!r}")
    g = pgt.geom
    level = g.level_of_size(block_size)
    if level not in g.block_levels:
        raise ModelError(f"{block_size:#x} is a page, not a block: nothing to coalesce into")
    pgt._check_range(ipa, block_size, block_size)
    result = CoalesceResult(order)
    target = {"done": False}

    def free_subtree(child: list, stats: WalkStats) -> None:
        # A walk over the detached subtree putting each leaf and freeing each table.
        def free_walker(table: list, idx: int, addr: int, lvl: int, visit: int) -> int:
            mapped = order == "new"
            result.steps += 1
            result.unmapped_steps += 0 if mapped else 1
            if visit == WALK_TABLE_POST:
                result.tables_freed += 1
            else:
                result.leaves_put += 1
            return 0

        walk = _Walk(pgt, ipa, ipa + block_size, free_walker, WALK_LEAF | WALK_TABLE_POST, stats, frozenset())
        walk.walk_table(child, level + 1, False)
        result.steps += 1  # the subtree's own root table page
        result.unmapped_steps += 0 if order == "new" else 1
        result.tables_freed += 1

    def stage2_map_walker(table: list, idx: int, addr: int, lvl: int, visit: int) -> int:
        if lvl != level:
            result.walk.early[lvl + 1] += 1
            return 0
        child = table[idx]
        if type(child) is not list:
            raise ModelError(f"IPA {ipa:#x} holds no table at level {level} to coalesce")
        leaf = _check_subtree(child)
        target["done"] = True
        if order == "old":
            table[idx] = 0  # kvm_clear_pte: the range is unmapped from here
            result.steps += 2  # the clear, then __kvm_tlb_flush_vmid
            result.unmapped_steps += 2
            free_subtree(child, result.walk)
            result.walk.table_post[lvl + 1] += 1  # the anchor's TABLE_POST installs the block
            table[idx] = leaf
            result.steps += 1
        else:
            table[idx] = 0  # stage2_try_break_pte (+ kvm_tlb_flush_vmid_range)
            result.steps += 2
            result.unmapped_steps += 2
            table[idx] = leaf  # stage2_make_pte
            result.steps += 1
            result.free_walk.walks += 1
            free_subtree(child, result.free_walk)
        return 0

    # Walk with TABLE_PRE (and LEAF, as kvm_pgtable_stage2_map does).
    ret = pgt.walk(ipa, block_size, stage2_map_walker, WALK_LEAF | WALK_TABLE_PRE, result.walk)
    if ret or not target["done"]:
        raise ModelError(f"IPA {ipa:#x} holds no level-{level} table to coalesce")
    return result
