"""x86-64 guest page tables: golden layouts and walks worked by hand, errors, and properties."""

from __future__ import annotations

import doctest
import struct

import pytest
from hypothesis import given
from tests.model.hypothesis_profile import MODEL
from hypothesis import strategies as st

import tracekit.model.x86 as x86
from tracekit.errors import ModelError
from tracekit.model.x86 import (
    PTE_A,
    PTE_D,
    PTE_NX,
    PTE_P,
    PTE_PS,
    PTE_RW,
    PTE_US,
    X86PageTables,
    pte_equal_ignoring_ad,
)

MiB = 1 << 20
GiB = 1 << 30


def test_doctests():
    assert doctest.testmod(x86).failed == 0


def test_imports_only_the_standard_library():
    """The workload runs this module in a guest without numpy: no third-party import."""
    import ast
    import sys

    tree = ast.parse(open(x86.__file__).read())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names - {"tracekit", "__future__"} <= set(sys.stdlib_module_names)


def test_golden_2m_layout_and_walk():
    """64 MiB at gva 1 GiB with 2 MiB pages under 4-level paging.

    Tables: PML4 (root) + one PDPT + one PD = 3 pages at 0x10000, 0x11000, 0x12000.
    gva 0x4050_1234: PML4 index = gva>>39 = 0, PDPT index = (gva>>30)&511 = 1,
    PD index = (gva>>21)&511 = 0x202 & 511 = 2; offset in the 2 MiB page = 0x101234.
    gpa = 0x80_0000 + 2*2 MiB + 0x101234 = 0xD01234.
    """
    pt = X86PageTables(4)
    pt.map(1 * GiB, 8 * MiB, 64 * MiB, page_size=2 * MiB)
    root, pages = pt.serialize(0x10000)
    assert root == 0x10000 and sorted(pages) == [0x10000, 0x11000, 0x12000]
    assert pt.table_count() == 3
    w = pt.walk(0x4050_1234)
    assert [(s.level, s.table_gpa, s.index) for s in w.levels] == [(4, 0x10000, 0), (3, 0x11000, 1), (2, 0x12000, 2)]
    assert w.levels[0].pte == 0x11000 | PTE_P | PTE_RW | PTE_US
    assert w.levels[1].pte == 0x12000 | PTE_P | PTE_RW | PTE_US
    assert w.levels[2].pte == (8 * MiB + 4 * MiB) | PTE_P | PTE_RW | PTE_US | PTE_PS
    assert (w.leaf_level, w.gpa, w.fault, w.depth) == (2, 0xD01234, None, 3)
    # The PD holds 32 entries (64 MiB / 2 MiB), the rest zero.
    pd = pages[0x12000]
    assert sum(1 for i in range(512) if struct.unpack_from("<Q", pd, 8 * i)[0]) == 32


def test_golden_4k_5level_and_1g():
    """5-level: a 4K page walks 5 levels (5,4,3,2,1); a 1G page walks 3 (5,4,3)."""
    pt = X86PageTables(5)
    pt.map(0x1000, 0x5000, 0x1000, writable=False, nx=True)
    pt.map(2 * GiB, 4 * GiB, GiB, page_size=GiB)
    root, pages = pt.serialize(0x100000)
    # PML5, PML4, PDPT (shared by both), PD, PT = 5 tables.
    assert pt.table_count() == 5 == len(pages)
    w = pt.walk(0x1ABC)
    assert [s.level for s in w.levels] == [5, 4, 3, 2, 1]
    assert w.levels[-1].pte == 0x5000 | PTE_P | PTE_US | PTE_NX
    assert w.gpa == 0x5ABC and w.leaf_level == 1
    w = pt.walk(2 * GiB + 0x12345678)
    assert [s.level for s in w.levels] == [5, 4, 3] and w.gpa == 4 * GiB + 0x12345678


def test_fault_stops_at_first_non_present_entry():
    pt = X86PageTables(4)
    pt.map(0, 0, 2 * MiB, page_size=2 * MiB)
    pt.serialize(0x1000)
    w = pt.walk(2 * MiB)  # same PD, entry 1 absent
    assert w.fault == "not present at level 2" and w.gpa is None and w.depth == 3
    w = pt.walk(1 << 39)  # PML4 entry 1 absent
    assert w.fault == "not present at level 4" and w.depth == 1


@pytest.mark.parametrize(
    "args, message",
    [
        ((0x1000, 0, 0x1000, 0x3000), "unsupported x86 page size"),
        ((0x1000, 0, 2 * MiB, 2 * MiB), "not aligned"),
        ((0, 0x1000, 2 * MiB, 2 * MiB), "not aligned"),
        ((1 << 47, 0, 0x1000), "not canonical"),
        ((0, 1 << 52, 0x1000), "exceeds 52 bits"),
        ((0, 0, 0), "must be positive"),
    ],
)
def test_impossible_maps(args, message):
    with pytest.raises(ModelError, match=message):
        X86PageTables(4).map(*args)


def test_overlap_is_rejected_and_changes_nothing():
    pt = X86PageTables(4)
    pt.map(0, 0, 4 * MiB, page_size=2 * MiB)
    before = pt.serialize(0)[1]
    with pytest.raises(ModelError, match="overlap"):
        pt.map(2 * MiB - 0x1000, 0, 0x2000)  # second page lands inside the 2M page at 2 MiB
    with pytest.raises(ModelError, match="overlap"):
        pt.map(0, 0, GiB, page_size=GiB)  # a 1G leaf where a PD exists
    assert pt.serialize(0)[1] == before


def test_walk_needs_fresh_serialize():
    pt = X86PageTables(4)
    pt.map(0, 0, 0x1000)
    with pytest.raises(ModelError, match="serialize"):
        pt.walk(0)
    pt.serialize(0)
    pt.map(0x1000, 0x1000, 0x1000)
    with pytest.raises(ModelError, match="serialize"):
        pt.walk(0)


def test_high_half_canonical_address():
    pt = X86PageTables(4)
    gva = 0xFFFF_8000_0000_0000
    pt.map(gva, 0x200000, 0x1000)
    pt.serialize(0x1000)
    w = pt.walk(gva + 5)
    assert w.levels[0].index == 256 and w.gpa == 0x200005


def test_pte_equal_ignoring_ad():
    base = 0x1234000 | PTE_P | PTE_RW
    assert pte_equal_ignoring_ad(base, base | PTE_A | PTE_D)
    assert not pte_equal_ignoring_ad(base, base | PTE_US)


@st.composite
def mappings(draw):
    levels = draw(st.sampled_from([4, 5]))
    leaf_level = draw(st.sampled_from([1, 2, 3]))
    page = x86.PAGE_SIZES[leaf_level]
    va_bits = 48 if levels == 4 else 57
    npages = draw(st.integers(1, 4))
    gva = draw(st.integers(0, ((1 << (va_bits - 1)) - npages * page) // page)) * page
    gpa = draw(st.integers(0, (1 << 40) // page)) * page
    return levels, leaf_level, page, npages, gva, gpa


@MODEL
@given(mappings(), st.data())
def test_walk_translates_every_mapped_address(m, data):
    """Walk depth = levels - leaf_level + 1; gpa = base + offset; each pte names the next table."""
    levels, leaf_level, page, npages, gva, gpa = m
    pt = X86PageTables(levels)
    pt.map(gva, gpa, npages * page, page_size=page)
    root, pages = pt.serialize(0x1000)
    offset = data.draw(st.integers(0, npages * page - 1))
    w = pt.walk(gva + offset)
    assert w.depth == levels - leaf_level + 1 and w.leaf_level == leaf_level
    assert w.gpa == gpa + offset
    assert w.levels[0].table_gpa == root
    for upper, lower in zip(w.levels, w.levels[1:]):
        assert upper.pte & x86.PTE_ADDR_MASK == lower.table_gpa
        assert upper.pte & 0xFFF == x86.TABLE_FLAGS
    assert len(pages) == pt.table_count()
    assert sorted(pages) == [0x1000 + i * 0x1000 for i in range(len(pages))]
