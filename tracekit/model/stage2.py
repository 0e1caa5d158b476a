"""Sparse arm64 stage-2 page tables and the KVM page-table walker, with exact accounting.

:class:`Stage2PageTable` holds one VM's tables: a table is a list of ``PTRS_PER_PTE`` entries, each
``0`` (invalid), an ``int`` leaf descriptor or a ``list`` (a table); output addresses are not kept
(IPA maps to PA by identity, which the accounting never depends on). :meth:`Stage2PageTable.walk` is
``kvm_pgtable_walk``, including the re-read of an entry after its callback (a LEAF callback that
installs a table makes the walker descend into it). ``skip_levels`` applies the 2026 series' SKIP_LEVEL
flags under the rule docs/model.md states. Callbacks are ``cb(table, index, addr, level, visit) ->
int`` (0, -EAGAIN or an errno) and may replace ``table[index]``. Out-of-range walks raise ModelError.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

from tracekit.errors import ModelError
from tracekit.model.accounting import WalkStats
from tracekit.model.geometry import LAST_LEVEL, Arm64Geometry, arm64_stage2

__all__ = [
    "WALK_LEAF",
    "WALK_TABLE_PRE",
    "WALK_TABLE_POST",
    "WALK_SHARED",
    "WALK_HANDLE_FAULT",
    "EAGAIN",
    "ENOMEM",
    "PTE_VALID",
    "PTE_S2AP_R",
    "PTE_S2AP_W",
    "PTE_AF",
    "PTE_XN",
    "LEAF_RW",
    "Callback",
    "Stage2PageTable",
]

# enum kvm_pgtable_walk_flags (arch/arm64/include/asm/kvm_pgtable.h)
WALK_LEAF = 1 << 0
WALK_TABLE_PRE = 1 << 1
WALK_TABLE_POST = 1 << 2
WALK_SHARED = 1 << 3
WALK_HANDLE_FAULT = 1 << 4

EAGAIN = 11
ENOMEM = 12

# Stage-2 descriptor bits (kvm_pgtable.h / pgtable.c: KVM_PTE_VALID, KVM_PTE_LEAF_ATTR_LO_S2_*).
PTE_VALID = 1 << 0
PTE_S2AP_R = 1 << 6
PTE_S2AP_W = 1 << 7
PTE_AF = 1 << 10
PTE_XN = 1 << 54
#: The leaf descriptor of ordinary guest RAM: valid, readable, writable, accessed.
LEAF_RW = PTE_VALID | PTE_S2AP_R | PTE_S2AP_W | PTE_AF

Callback = Callable[[list, int, int, int, int], int]


class Stage2PageTable:
    """The stage-2 tables of one VM (see the module docstring)."""

    def __init__(self, geometry: Optional[Arm64Geometry] = None) -> None:
        self.geom = geometry or arm64_stage2()
        self.ptrs = self.geom.entries_per_table
        # kvm_pgtable_stage2_init: kvm_pgd_pages() zeroed, concatenated root pages.
        self.pgd: list[list] = [[0] * self.ptrs for _ in range(self.geom.pgd_pages)]

    # -- the walker --------------------------------------------------------------------------

    def walk(
        self,
        addr: int,
        size: int,
        cb: Callback,
        flags: int,
        stats: WalkStats,
        skip_levels: frozenset[int] = frozenset(),
    ) -> int:
        """``kvm_pgtable_walk(pgt, addr, size, walker)``; returns 0 or the negative errno it stopped on."""
        g = self.geom
        page = g.granule
        start = addr - addr % page
        end = -(-(addr + size) // page) * page
        if start > g.ipa_size or end > g.ipa_size:
            raise ModelError(
                f"range {start:#x}..{end:#x} is beyond the {g.ipa_bits}-bit IPA space (-ERANGE)"
            )
        stats.walks += 1
        state = _Walk(self, start, end, cb, flags, stats, skip_levels)
        idx = g.pgd_page_index(start)
        ret = 0
        while state.addr < end:
            ret = state.walk_table(self.pgd[idx], g.start_level, False)
            if ret:
                break
            idx += 1
        return ret

    # -- building and reading ----------------------------------------------------------------

    def populate(self, ipa: int, size: int, mapping_size: int, leaf: int = LEAF_RW) -> None:
        """Install the state the fault path leaves behind after every page of [ipa, ipa+size) was
        touched, mapped with ``mapping_size`` (a page or block of this granule), without walk
        accounting. Raises ModelError on a misaligned range or a mapping over an existing one."""
        g = self.geom
        level = g.level_of_size(mapping_size)
        self._check_range(ipa, size, mapping_size)
        step = mapping_size
        addr = ipa
        end = ipa + size
        while addr < end:
            table = self._table_for(addr, level)
            first = g.index(addr, level)
            count = min((end - addr) // step, self.ptrs - first)
            if any(table[first : first + count]):
                raise ModelError(f"IPA {addr:#x} is already mapped (overlap)")
            table[first : first + count] = [leaf] * count
            addr += count * step

    def _check_range(self, ipa: int, size: int, align: int) -> None:
        if size <= 0:
            raise ModelError(f"size must be positive, got {size}")
        if ipa % align or size % align:
            raise ModelError(
                f"range {ipa:#x}+{size:#x} is not aligned to the {align:#x}-byte mapping size"
            )
        if ipa + size > self.geom.ipa_size:
            raise ModelError(
                f"range {ipa:#x}+{size:#x} is beyond the {self.geom.ipa_bits}-bit IPA space"
            )

    def _table_for(self, addr: int, level: int) -> list:
        """The table holding ``addr``'s entry at ``level``, creating tables on the way."""
        g = self.geom
        table = self.pgd[g.pgd_page_index(addr)]
        for lvl in range(g.start_level, level):
            i = g.index(addr, lvl)
            entry = table[i]
            if entry == 0:
                entry = table[i] = [0] * self.ptrs
            elif type(entry) is not list:
                raise ModelError(f"IPA {addr:#x} is already mapped by a level-{lvl} block (overlap)")
            table = entry
        return table

    def leaves(self) -> Iterator[tuple[int, int, int]]:
        """Every valid leaf as (ipa, level, descriptor), in address order."""
        g = self.geom
        span = g.level_size(g.start_level) * self.ptrs

        def visit(table: list, base: int, level: int) -> Iterator[tuple[int, int, int]]:
            size = g.level_size(level)
            for i, entry in enumerate(table):
                if type(entry) is list:
                    yield from visit(entry, base + i * size, level + 1)
                elif entry:
                    yield base + i * size, level, entry

        for n, root in enumerate(self.pgd):
            yield from visit(root, n * span, g.start_level)

    def mapping_of(self, ipa: int) -> Optional[tuple[int, int]]:
        """(level, descriptor) of the leaf that maps ``ipa``, or None."""
        g = self.geom
        table = self.pgd[g.pgd_page_index(ipa)]
        for level in range(g.start_level, LAST_LEVEL + 1):
            entry = table[g.index(ipa, level)]
            if type(entry) is list:
                table = entry
                continue
            return (level, entry) if entry else None
        return None

    def table_count(self) -> int:
        """Number of table pages below the root (what the memory caches supplied)."""

        def count(table: list) -> int:
            return sum(1 + count(e) for e in table if type(e) is list)

        return sum(count(root) for root in self.pgd)


class _Walk:
    """One ``kvm_pgtable_walk_data``: the shared cursor ``addr`` and the walker."""

    __slots__ = ("pgt", "addr", "end", "cb", "flags", "stats", "skip")

    def __init__(self, pgt, start, end, cb, flags, stats, skip) -> None:
        self.pgt = pgt
        self.addr = start
        self.end = end
        self.cb = cb
        self.flags = flags
        self.stats = stats
        self.skip = skip

    def walk_table(self, table: list, level: int, fresh: bool) -> int:
        """``__kvm_pgtable_walk`` with ``__kvm_pgtable_visit`` inlined (the hot loop)."""
        g = self.pgt.geom
        shift = g.level_shift(level)
        size = 1 << shift
        ptrs = self.pgt.ptrs
        end = self.end
        cb = self.cb
        flags = self.flags
        leaf_on = flags & WALK_LEAF
        pre_on = flags & WALK_TABLE_PRE
        post_on = flags & WALK_TABLE_POST
        handle_fault = flags & WALK_HANDLE_FAULT
        st = self.stats
        s = level + 1
        child_skipped = (level + 1) in self.skip
        entries = leaf_cb = pre_cb = 0
        ret = 0
        idx = (self.addr >> shift) & (ptrs - 1)
        while idx < ptrs:
            addr = self.addr
            if addr >= end:
                break
            entries += 1
            entry = table[idx]
            is_table = type(entry) is list
            new_table = False
            if is_table:
                if pre_on:
                    pre_cb += 1
                    ret = cb(table, idx, addr, level, WALK_TABLE_PRE)
                    entry = table[idx]
                    is_table = type(entry) is list
            elif leaf_on:
                leaf_cb += 1
                ret = cb(table, idx, addr, level, WALK_LEAF)
                entry = table[idx]
                is_table = type(entry) is list
                new_table = is_table
            if ret:
                if ret == -EAGAIN and not handle_fault:
                    ret = 0
                else:
                    break
            if not is_table:
                self.addr = addr - addr % size + size
                idx += 1
                continue
            if child_skipped:
                st.skipped_levels.add(level + 1)
                self.addr = addr - addr % size + size
            else:
                ret = self.walk_table(entry, level + 1, fresh or new_table)
                if ret:
                    break
            if post_on:
                st.table_post[s] += 1
                ret = cb(table, idx, addr, level, WALK_TABLE_POST)
                if ret:
                    if ret == -EAGAIN and not handle_fault:
                        ret = 0
                    else:
                        break
            idx += 1
        st.entries[s] += entries
        st.leaf[s] += leaf_cb
        st.table_pre[s] += pre_cb
        if fresh:
            st.fresh[s] += entries
        return ret
