"""Sparse x86-64 guest page tables (4-level and 5-level/LA57) and their walk.

:class:`X86PageTables` maps guest-virtual ranges with 4 KiB, 2 MiB or 1 GiB pages, serialises the
tables as 4096-byte little-endian pages at consecutive guest-physical addresses (root first, then
depth-first) and walks an address as the hardware and KVM's software walker do (one guest PTE read per
level, down to the first non-present entry or the leaf). Levels are KVM's (1 = 4 KiB leaf .. 5);
``X86Walk.depth`` counts levels walked from the root. Addresses are bytes; impossible requests raise
:class:`tracekit.errors.ModelError`. Standard library only: the built-in workload runs it in a guest.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Union

from tracekit.errors import ModelError

__all__ = [
    "PTE_P",
    "PTE_RW",
    "PTE_US",
    "PTE_PWT",
    "PTE_PCD",
    "PTE_A",
    "PTE_D",
    "PTE_PS",
    "PTE_G",
    "PTE_NX",
    "PTE_AD_MASK",
    "PTE_ADDR_MASK",
    "PAGE_SIZE",
    "PAGE_SIZES",
    "TABLE_FLAGS",
    "X86PageTables",
    "X86Walk",
    "X86WalkStep",
    "pte_equal_ignoring_ad",
    "level_shift",
    "level_size",
    "level_index",
    "is_canonical",
    "walk_image",
]

# Guest PTE bits (Intel SDM vol. 3 4.5, mirrored by KVM's PT_*_MASK in arch/x86/kvm/mmu/mmu_internal.h
# and paging_tmpl.h).
PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_US = 1 << 2
PTE_PWT = 1 << 3
PTE_PCD = 1 << 4
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_PS = 1 << 7
PTE_G = 1 << 8
PTE_NX = 1 << 63

#: The bits KVM's walker may set while walking (``FNAME(update_accessed_dirty_bits)``).
PTE_AD_MASK = PTE_A | PTE_D
#: Physical-address bits 51:12 of an entry (MAXPHYADDR 52, ``PT64_BASE_ADDR_MASK``).
PTE_ADDR_MASK = ((1 << 52) - 1) & ~0xFFF
#: Flags of every non-leaf entry written by :meth:`X86PageTables.serialize`.
TABLE_FLAGS = PTE_P | PTE_RW | PTE_US

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
_ENTRIES = 512
_LEVEL_BITS = 9
_MAX_GPA = 1 << 52

#: Leaf page size by KVM level: PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_1G.
PAGE_SIZES = {1: 1 << 12, 2: 1 << 21, 3: 1 << 30}
_LEVEL_OF_SIZE = {size: level for level, size in PAGE_SIZES.items()}


def level_shift(level: int) -> int:
    """Address shift of one entry at KVM ``level`` (``KVM_HPAGE_SHIFT``): 12 + 9*(level-1)."""
    return PAGE_SHIFT + _LEVEL_BITS * (level - 1)


def level_size(level: int) -> int:
    """Bytes mapped by one entry at ``level`` (``KVM_HPAGE_SIZE``): 4K, 2M, 1G, 512G, 256T."""
    return 1 << level_shift(level)


def level_index(gva: int, level: int) -> int:
    """Index of ``gva`` in a table at ``level`` (``PT64_INDEX`` / ``SHADOW_PT_INDEX``)."""
    return (gva >> level_shift(level)) & (_ENTRIES - 1)


def is_canonical(gva: int, levels: int) -> bool:
    """True if ``gva`` (a 64-bit value) is canonical for 4-level (48-bit) or 5-level (57-bit) paging."""
    va_bits = level_shift(levels) + _LEVEL_BITS
    top = gva >> (va_bits - 1)
    return 0 <= gva < (1 << 64) and top in (0, (1 << (64 - va_bits + 1)) - 1)


def pte_equal_ignoring_ad(a: int, b: int) -> bool:
    """True if two guest PTE values differ at most in the Accessed and Dirty bits.

    KVM's walker sets A (every level) and D (leaf, on writes) while it walks, so a recorded
    ``kvmmmu:kvm_mmu_paging_element`` pte may carry them where the model's does not.
    """
    return (a & ~PTE_AD_MASK) == (b & ~PTE_AD_MASK)


@dataclass(frozen=True)
class X86WalkStep:
    """One guest PTE read by the walker: KVM level, the table's guest-physical address, index, value."""

    level: int
    table_gpa: int
    index: int
    pte: int


@dataclass(frozen=True)
class X86Walk:
    """The walk of one guest-virtual address, root first.

    ``leaf_level`` is 1/2/3 for a 4K/2M/1G translation (None on a fault); ``gpa`` the translated
    guest-physical address (None on a fault); ``fault`` None or the reason the walk stopped.
    """

    gva: int
    levels: tuple[X86WalkStep, ...]
    leaf_level: Optional[int]
    gpa: Optional[int]
    fault: Optional[str] = None

    @property
    def depth(self) -> int:
        """Number of levels read (the normalised walk depth from the root)."""
        return len(self.levels)

    @property
    def root_level(self) -> int:
        return self.levels[0].level


@dataclass
class _Leaf:
    gpa: int
    flags: int


@dataclass
class _Table:
    level: int
    entries: dict[int, Union["_Table", _Leaf]] = field(default_factory=dict)


def walk_image(
    read_qword: Union[Callable[[int], int], Mapping[int, bytes]], root_gpa: int, gva: int, levels: int
) -> X86Walk:
    """Walk ``gva`` through page tables stored in guest memory.

    ``read_qword(gpa)`` returns the little-endian 64-bit value at ``gpa``; a mapping
    ``{page_gpa: 4096 bytes}`` (as returned by :meth:`X86PageTables.serialize`) is accepted too.
    Mirrors the loop of ``FNAME(walk_addr_generic)`` (arch/x86/kvm/mmu/paging_tmpl.h): read the
    entry of each level, stop at a non-present entry (fault) or at a leaf (level 1, or PS set at
    levels 2 and 3). Raises ModelError for a non-canonical address or unknown memory.
    """
    if levels not in (4, 5):
        raise ModelError(f"x86-64 paging has 4 or 5 levels, not {levels}")
    if not is_canonical(gva, levels):
        raise ModelError(f"guest address {gva:#x} is not canonical for {levels}-level paging")
    if not callable(read_qword):
        pages = read_qword

        def read_qword(gpa: int) -> int:
            page = pages.get(gpa & ~0xFFF)
            if page is None:
                raise ModelError(f"walk reads guest-physical {gpa:#x}, which holds no page table")
            return struct.unpack_from("<Q", page, gpa & 0xFFF)[0]

    steps: list[X86WalkStep] = []
    table_gpa = root_gpa & PTE_ADDR_MASK
    for level in range(levels, 0, -1):
        index = level_index(gva, level)
        pte = read_qword(table_gpa + 8 * index)
        steps.append(X86WalkStep(level=level, table_gpa=table_gpa, index=index, pte=pte))
        if not pte & PTE_P:
            return X86Walk(gva, tuple(steps), None, None, f"not present at level {level}")
        if level == 1 or (pte & PTE_PS and level in (2, 3)):
            offset_mask = level_size(level) - 1
            gpa = (pte & PTE_ADDR_MASK & ~offset_mask) | (gva & offset_mask)
            return X86Walk(gva, tuple(steps), level, gpa)
        if pte & PTE_PS:
            return X86Walk(gva, tuple(steps), None, None, f"reserved PS bit at level {level}")
        table_gpa = pte & PTE_ADDR_MASK
    raise AssertionError("unreachable: level 1 always ends the walk")


class X86PageTables:
    """Sparse guest page tables for x86-64 4-level (levels=4) or 5-level (levels=5, LA57) paging.

    >>> pt = X86PageTables(levels=4)
    >>> pt.map(0x40000000, 0x200000, 0x400000, page_size=0x200000)
    >>> root, pages = pt.serialize(0x100000)
    >>> (root, pt.table_count(), len(pages))
    (1048576, 3, 3)
    >>> w = pt.walk(0x40212345)
    >>> [s.level for s in w.levels], w.leaf_level, hex(w.gpa)
    ([4, 3, 2], 2, '0x412345')
    """

    def __init__(self, levels: int = 4) -> None:
        if levels not in (4, 5):
            raise ModelError(f"x86-64 paging has 4 or 5 levels, not {levels}")
        self.levels = levels
        self._root = _Table(levels)
        self._image: Optional[tuple[int, dict[int, bytes]]] = None

    # -- building -------------------------------------------------------------------------

    def map(
        self,
        gva: int,
        gpa: int,
        size: int,
        page_size: int = 4096,
        *,
        writable: bool = True,
        user: bool = True,
        nx: bool = False,
        accessed: bool = False,
        dirty: bool = False,
    ) -> None:
        """Map [gva, gva+size) to [gpa, ...) with 4K, 2M (PS at level 2) or 1G (PS at level 3) pages.

        ``accessed``/``dirty`` pre-set A/D in the leaves (so the walker need not set them).
        Raises ModelError on misalignment, non-canonical addresses, overlap, unsupported page size;
        on error nothing is changed.
        """
        leaf_level = _LEVEL_OF_SIZE.get(page_size)
        if leaf_level is None:
            raise ModelError(f"unsupported x86 page size {page_size:#x} (use 4 KiB, 2 MiB or 1 GiB)")
        if size <= 0:
            raise ModelError(f"mapping size must be positive, got {size}")
        for name, value in (("guest-virtual address", gva), ("guest-physical address", gpa), ("size", size)):
            if value % page_size:
                raise ModelError(f"{name} {value:#x} is not aligned to the page size {page_size:#x}")
        last = gva + size - 1
        if not (is_canonical(gva, self.levels) and is_canonical(last, self.levels)):
            raise ModelError(f"range {gva:#x}..{last:#x} is not canonical for {self.levels}-level paging")
        if (gva >> 63) != (last >> 63):
            raise ModelError(f"range {gva:#x}..{last:#x} crosses the non-canonical hole")
        if gpa < 0 or gpa + size > _MAX_GPA:
            raise ModelError(f"guest-physical range {gpa:#x}+{size:#x} exceeds 52 bits")
        flags = PTE_P
        flags |= PTE_RW if writable else 0
        flags |= PTE_US if user else 0
        flags |= PTE_NX if nx else 0
        flags |= PTE_A if accessed else 0
        flags |= PTE_D if dirty else 0
        flags |= PTE_PS if leaf_level > 1 else 0
        # A leaf table's run of pages at a time (one walk down to it): everything checked first, so a
        # failed map changes nothing.
        span = level_size(leaf_level + 1)
        runs = []
        start = 0
        while start < size:
            end = min(size, start + span - (gva + start) % span)
            runs.append((start, end))
            start = end
        for start, end in runs:
            self._check_free(gva + start, (end - start) // page_size, page_size, leaf_level)
        for start, end in runs:
            entries = self._table_for(gva + start, leaf_level).entries
            first = level_index(gva + start, leaf_level)
            for k, offset in enumerate(range(start, end, page_size)):
                entries[first + k] = _Leaf(gpa + offset, flags)
        self._image = None

    def _check_free(self, gva: int, pages: int, page_size: int, leaf_level: int) -> None:
        """Raise unless the ``pages`` leaves from ``gva`` (in one leaf table) are free."""
        table = self._root
        for level in range(self.levels, leaf_level, -1):
            entry = table.entries.get(level_index(gva, level))
            if entry is None:
                return
            if isinstance(entry, _Leaf):
                raise ModelError(f"guest-virtual address {gva:#x} is already mapped (overlap)")
            table = entry
        first = level_index(gva, leaf_level)
        for k in range(pages):
            if first + k in table.entries:
                raise ModelError(f"guest-virtual address {gva + k * page_size:#x} is already mapped (overlap)")

    def _table_for(self, gva: int, leaf_level: int) -> _Table:
        table = self._root
        for level in range(self.levels, leaf_level, -1):
            index = level_index(gva, level)
            child = table.entries.get(index)
            if child is None:
                child = table.entries[index] = _Table(level - 1)
            assert isinstance(child, _Table)
            table = child
        return table

    # -- inspection -----------------------------------------------------------------------

    def table_count(self) -> int:
        """Number of 4 KiB tables (root included) that ``serialize`` writes."""
        return sum(1 for _ in self._tables_preorder())

    def _tables_preorder(self):
        stack = [self._root]
        while stack:
            table = stack.pop()
            yield table
            children = [e for _, e in sorted(table.entries.items()) if isinstance(e, _Table)]
            stack.extend(reversed(children))

    def serialize(self, table_base_gpa: int, *, table_flags: int = TABLE_FLAGS,
                  jumps: Optional[Mapping[int, int]] = None) -> tuple[int, dict[int, bytes]]:
        """Lay every table out as a 4096-byte page at consecutive guest-physical addresses.

        Tables are placed from ``table_base_gpa`` (4 KiB aligned) root first, then depth-first in
        index order; ``jumps`` ({preorder index: gpa}) places a table elsewhere and the following ones
        after it (a guest allocator whose tables are not all in one run). Returns (root_gpa for CR3,
        {table_gpa: 4096 little-endian bytes}). Non-leaf entries get ``table_flags`` (P|RW|US by
        default, so permissions are decided at the leaf).
        """
        tables = list(self._tables_preorder())
        starts = {0: table_base_gpa, **(jumps or {})}
        gpas, gpa = [], table_base_gpa
        for i in range(len(tables)):
            gpa = starts.get(i, gpa)
            if gpa % PAGE_SIZE or gpa < 0:
                raise ModelError(f"table address {gpa:#x} is not a 4 KiB-aligned guest-physical address")
            if gpa + PAGE_SIZE > _MAX_GPA:
                raise ModelError("page tables would extend beyond 52-bit guest-physical space")
            gpas.append(gpa)
            gpa += PAGE_SIZE
        if len(set(gpas)) != len(gpas):
            raise ModelError("two page tables would share a guest-physical page")
        where = {id(t): g for t, g in zip(tables, gpas)}
        pages: dict[int, bytes] = {}
        for table in tables:
            page = bytearray(PAGE_SIZE)
            for index, entry in table.entries.items():
                if isinstance(entry, _Table):
                    value = where[id(entry)] | table_flags
                else:
                    value = entry.gpa | entry.flags
                struct.pack_into("<Q", page, 8 * index, value)
            pages[where[id(table)]] = bytes(page)
        self._image = (gpas[0], pages)
        return gpas[0], pages

    def walk(self, gva: int) -> X86Walk:
        """The walk the hardware / KVM's software walker does for ``gva`` (after ``serialize()``).

        Raises ModelError if the tables were not serialised since the last ``map``.
        """
        if self._image is None:
            raise ModelError("walk() needs the table layout: call serialize() after the last map()")
        root_gpa, pages = self._image
        return walk_image(pages, root_gpa, gva, self.levels)
