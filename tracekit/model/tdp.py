"""x86 TDP MMU tables and eager huge-page splitting, simulated.

:class:`TdpPageTable` holds one TDP root (levels ``root_level`` (4 or 5) .. 1, 512 entries per table;
entries ``0``, an ``int`` leaf SPTE or a ``list``). :meth:`TdpPageTable.split_huge_pages` mirrors
``tdp_mmu_split_huge_pages_root`` driven by ``tdp_iter``: a 1G page becomes 512 2M pages, split in
turn. ``alloc_drops_lock`` (default, the mainline loop) restarts the iterator from the root after each
split's allocation; False models an allocation that keeps mmu_lock. Addresses are guest-physical bytes;
``splits`` per level counts ``kvm_mmu_split_huge_page`` events.
"""

from __future__ import annotations

from typing import Optional

from tracekit.errors import ModelError
from tracekit.model.accounting import WalkStats
from tracekit.model.geometry import X86Geometry, x86_geometry

__all__ = ["SPTE_PRESENT", "TdpPageTable"]

#: Leaf SPTE value used by the model (present, writable); only presence and size matter here.
SPTE_PRESENT = 0x7


class TdpPageTable:
    """One TDP root and its tables (see the module docstring)."""

    def __init__(self, geometry: Optional[X86Geometry] = None) -> None:
        self.geom = geometry or x86_geometry(4)
        self.root: list = [0] * 512

    def populate(self, gpa: int, size: int, page_size: int) -> None:
        """The SPTEs ``kvm_tdp_mmu_map`` leaves after every page was faulted in with ``page_size``
        mappings (no accounting). ModelError on misalignment or overlap."""
        g = self.geom
        level = g.level_of_size(page_size)
        if size <= 0 or gpa % page_size or size % page_size:
            raise ModelError(f"range {gpa:#x}+{size:#x} is not aligned to the page size {page_size:#x}")
        if gpa + size > 1 << g.va_bits:
            raise ModelError(f"range {gpa:#x}+{size:#x} is beyond the {g.va_bits}-bit TDP address space")
        addr, end = gpa, gpa + size
        while addr < end:
            table = self.root
            for lvl in range(g.root_level, level, -1):
                i = g.index(addr, lvl)
                if table[i] == 0:
                    table[i] = [0] * 512
                elif type(table[i]) is not list:
                    raise ModelError(f"GPA {addr:#x} is already mapped by a huge page (overlap)")
                table = table[i]
            first = g.index(addr, level)
            count = min((end - addr) // page_size, 512 - first)
            if any(table[first : first + count]):
                raise ModelError(f"GPA {addr:#x} is already mapped (overlap)")
            table[first : first + count] = [SPTE_PRESENT] * count
            addr += count * page_size

    def mapping_of(self, gpa: int) -> Optional[int]:
        """KVM level of the leaf SPTE mapping ``gpa`` (1, 2, 3) or None."""
        g = self.geom
        table = self.root
        for level in range(g.root_level, 0, -1):
            entry = table[g.index(gpa, level)]
            if type(entry) is list:
                table = entry
                continue
            return level if entry else None
        return None

    def split_huge_pages(
        self,
        start: int,
        end: int,
        stats: WalkStats,
        *,
        target_level: int = 1,
        alloc_drops_lock: bool = True,
    ) -> None:
        """``tdp_mmu_split_huge_pages_root(kvm, root, start >> 12, end >> 12, target_level, ...)``."""
        g = self.geom
        min_level = target_level + 1
        root_level = g.root_level
        stats.walks += 1
        path: dict[int, list] = {root_level: self.root}
        fresh_tables: set[int] = set()
        next_last = start  # iter->next_last_level_gfn, in bytes

        def size(level: int) -> int:
            return g.level_size(level)

        # tdp_iter_start / tdp_iter_restart
        level = root_level
        addr = next_last - next_last % size(level)
        have_sp = False
        valid = True
        yielded = False
        while valid and addr < end:
            table = path[level]
            idx = g.index(addr, level)
            stats.entries[level + 1] += 1
            if id(table) in fresh_tables:
                stats.fresh[level + 1] += 1
            entry = table[idx]
            if entry and type(entry) is not list and level > 1:  # present, large
                if not have_sp and alloc_drops_lock:
                    have_sp = True
                    yielded = True
                    stats.restarts += 1
                else:
                    # tdp_mmu_split_huge_page: 512 smaller SPTEs, linked in place of the huge one.
                    child = [entry] * 512
                    fresh_tables.add(id(child))
                    table[idx] = child
                    stats.splits[level + 1] += 1
                    stats.tables += 1
                    have_sp = False
            if level == min_level and type(table[idx]) is list:
                stats.skipped_levels.add(target_level)  # never below min_level
            # tdp_iter_next
            if yielded:
                yielded = False
                level = root_level
                addr = next_last - next_last % size(level)
                continue
            entry = table[idx]
            if level > min_level and type(entry) is list:  # try_step_down
                level -= 1
                path[level] = entry
                addr = next_last - next_last % size(level)
                continue
            while True:
                if g.index(addr, level) != 511:  # try_step_side
                    addr += size(level)
                    next_last = addr
                    break
                if level == root_level:  # try_step_up fails
                    valid = False
                    break
                level += 1
                addr -= addr % size(level)
