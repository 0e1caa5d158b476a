"""The reference model of the KVM selftests' guest page tables, from what a selftest prints.

:func:`parse_selftest_guest` reads the guest mode and test memory from a selftest's output,
:func:`first_test_table` finds in the capture where the test memory's first table went, and
:func:`selftest_model` builds the walk function of the test memory from both. Only 48-bit 4 KiB guests are
modelled (AnalysisError otherwise).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from tracekit.errors import AnalysisError, ModelError
from tracekit.model.x86 import PTE_ADDR_MASK, PTE_P, PTE_RW, X86PageTables, X86Walk

__all__ = ["SelftestGuest", "TEST_GVA", "PAGE_TABLE_MIN_GPA", "parse_selftest_guest", "selftest_model",
           "first_test_table"]

#: ``DEFAULT_GUEST_TEST_MEM`` of memstress.h and kvm_page_table_test.c.
TEST_GVA = 0xC0000000
#: ``KVM_GUEST_PAGE_TABLE_MIN_PADDR`` (include/x86_64/processor.h): the selftest page-table allocator's start.
PAGE_TABLE_MIN_GPA = 0x180000
_TABLE_FLAGS = PTE_P | PTE_RW

_MODE_RE = re.compile(r"guest mode: PA-bits:\s*(\w+),\s*VA-bits:\s*(\d+),\s*(\d+)K pages")
_MEMSTRESS_RE = re.compile(r"guest physical test memory: \[(0x[0-9a-fA-F]+), (0x[0-9a-fA-F]+)\)")
_PTT_OFFSET_RE = re.compile(r"Guest physical test memory offset: (0x[0-9a-fA-F]+)")
_PTT_SIZE_RE = re.compile(r"Testing memory size\(aligned\): (0x[0-9a-fA-F]+)")
_DLT_OFFSET_RE = re.compile(r"^guest physical test memory offset: (0x[0-9a-fA-F]+)", re.MULTILINE)
#: dirty_log_test.c's ``DIRTY_MEM_BITS``: its test memory is ``(1 << (DIRTY_MEM_BITS - page_shift)) + 3`` pages.
DIRTY_LOG_TEST_MEM_BITS = 30


@dataclass(frozen=True)
class SelftestGuest:
    """What a selftest's output says of its guest: mode text, test memory (guest-physical, bytes)."""

    mode: str
    va_bits: int
    page_kib: int
    gpa: int
    size: int
    gva: int = TEST_GVA


def parse_selftest_guest(text: str) -> SelftestGuest | None:
    """The guest of a selftest's output, or None without test-memory lines.

    Reads the guest mode line (``Testing guest mode: PA-bits:ANY, VA-bits:48, 4K pages``) and the test memory
    (dirty_log_perf_test / memstress: ``guest physical test memory: [A, B)``; kvm_page_table_test: ``Guest
    physical test memory offset: A`` and ``Testing memory size(aligned): S``; dirty_log_test: ``guest physical
    test memory offset: A``, its size not printed but fixed by the source, ``(1 << (DIRTY_MEM_BITS -
    page_shift)) + 3`` guest pages with ``DIRTY_MEM_BITS`` 30, the same for each log mode it runs);
    AnalysisError when the runs of one output place their test memory differently.
    """
    mode = _MODE_RE.search(text)
    page_kib = int(mode.group(3)) if mode else 4
    memstress = _MEMSTRESS_RE.search(text)
    offset, size = _PTT_OFFSET_RE.search(text), _PTT_SIZE_RE.search(text)
    dirty_log_offsets = set(_DLT_OFFSET_RE.findall(text))
    if memstress:
        gpa, end = int(memstress.group(1), 16), int(memstress.group(2), 16)
        length = end - gpa
    elif offset and size:
        gpa, length = int(offset.group(1), 16), int(size.group(1), 16)
    elif dirty_log_offsets:
        if len(dirty_log_offsets) > 1 or len(set(_MODE_RE.findall(text))) > 1:
            raise AnalysisError("the selftest output's runs place their test memory differently (offsets "
                                f"{', '.join(sorted(dirty_log_offsets))}, or guest modes differ): one model "
                                "cannot check them")
        page_shift = (page_kib * 1024).bit_length() - 1
        gpa = int(dirty_log_offsets.pop(), 16)
        length = ((1 << (DIRTY_LOG_TEST_MEM_BITS - page_shift)) + 3) << page_shift
    else:
        return None
    if mode is None:
        return SelftestGuest("?", 48, 4, gpa, length)
    return SelftestGuest(mode.group(0).split(": ", 1)[1], int(mode.group(2)), page_kib, gpa, length)


def selftest_model(guest: SelftestGuest, test_table_gpa: int) -> Callable[[int], X86Walk | None]:
    """The model's walk function for ``guest``, whose test memory's first table is at ``test_table_gpa``.

    The selftest library (``tools/testing/selftests/kvm/lib/x86_64/processor.c``, ``__virt_pg_map``) maps
    guest memory with 4 KiB pages through 4-level tables whose every entry is present and writable
    (``PTE_PRESENT_MASK | PTE_WRITABLE_MASK``, no user bit: the guest runs at CPL0); its page tables come from a
    bump allocator in memslot 0 starting at ``KVM_GUEST_PAGE_TABLE_MIN_PADDR`` (0x180000): the root first, then
    each table when a mapping first needs it. The test memory is mapped last, at guest-virtual
    ``DEFAULT_GUEST_TEST_MEM`` (0xc0000000), by one ``virt_map`` in ascending addresses, so the tables it
    creates follow one another in the model's preorder, after the root and the PDPT of the low 512 GiB
    (0x180000, 0x181000). Every table address and PTE but ``test_table_gpa`` is the model's; any address
    outside the test memory walks to None (not modelled: code, stacks and data are at addresses the output
    does not give).
    """
    if guest.va_bits != 48 or guest.page_kib != 4:
        raise AnalysisError(f"the selftest's guest mode ({guest.mode}) is not modelled: only 48-bit 4K pages")
    if guest.size <= 0 or guest.size % 4096 or guest.gpa % 4096:
        raise AnalysisError(f"the selftest's test memory [{guest.gpa:#x}, +{guest.size:#x}) is not 4 KiB pages")
    tables = X86PageTables(levels=4)
    try:
        tables.map(guest.gva, guest.gpa, guest.size, 4096, user=False)
        tables.serialize(PAGE_TABLE_MIN_GPA, table_flags=_TABLE_FLAGS, jumps={2: test_table_gpa})
    except ModelError as error:
        raise AnalysisError(f"cannot model the selftest's guest page tables: {error}") from error
    low, high = guest.gva, guest.gva + guest.size

    def walk(gva: int) -> X86Walk | None:
        return tables.walk(gva) if low <= gva < high else None

    return walk


def first_test_table(cap: Any, guest: SelftestGuest, walks: int = 64) -> int | None:
    """The table address in the level-3 entries of the capture's first ``walks`` walks of the test
    memory (the most common one), or None when none was recorded.

    The address of the first table the test memory created (the PD of 0xc0000000) depends on how many tables
    the run made before: it is the level-3 entry of the first walks of the test memory, the most common value.
    """
    low, high = np.uint64(guest.gva), np.uint64(guest.gva + guest.size)
    ids: list[np.ndarray] = []
    found = 0
    for batch in cap.iter_batches("walk", ["walk_id", "addr"]):
        addr = batch.column("addr").to_numpy(zero_copy_only=False).astype(np.uint64)
        inside = (addr >= low) & (addr < high)
        if inside.any():
            ids.append(batch.column("walk_id").to_numpy(zero_copy_only=False)[inside][:walks - found])
            found += len(ids[-1])
            if found >= walks:
                break
    if not ids:
        return None
    wanted = np.unique(np.concatenate(ids).astype(np.uint64))
    values: Counter = Counter()
    seen: set[int] = set()
    for batch in cap.iter_batches("walk_element", ["walk_id", "level", "pte"]):
        wid = batch.column("walk_id").to_numpy(zero_copy_only=False).astype(np.uint64)
        hit = np.isin(wid, wanted) & (batch.column("level").to_numpy(zero_copy_only=False) == 3)
        if hit.any():
            ptes = batch.column("pte").to_numpy(zero_copy_only=False)[hit]
            values.update(int(p) & PTE_ADDR_MASK for p in ptes.tolist())
            seen.update(wid[hit].tolist())
            if len(seen) == len(wanted):
                break
    return values.most_common(1)[0][0] if values else None
