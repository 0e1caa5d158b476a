"""The x86-64 guest: machine code, descriptor tables and page tables (no KVM needed)."""

from __future__ import annotations

import struct

import pytest

from tracekit.model.x86 import PTE_US, walk_image
from tracekit.workload import backend_x86
from tracekit.workload.backend import GuestSpec
from tracekit.workload.dirtylog import TEST_GPA, TEST_GVA

# objdump -D -b binary -m i386:x86-64 of the expected loop:
#  0: inc r8 | 3: mov rsi,r12 | 6: mov rcx,r13 | 9: test rcx,rcx | c: je 29
#  e: mov rax,[rsi] | 11: add rsi,8 | 15: btr rax,0 | 1a: jae 21 | 1c: mov [rax],r8 | 1f: jmp 24
# 21: mov rbx,[rax] | 24: dec rcx | 27: jne e | 29: mov eax,r8d | 2c: out 0x7e,al | 2e: jmp 0
GUEST_CODE = bytes.fromhex(
    "49ffc0 4c89e6 4c89e9 4885c9 741b 488b06 4883c608 480fbaf000 7305 4c8900 eb03 488b18 48ffc9 75e5 4489c0 e67e ebd0"
)

MIB = 1 << 20


def test_guest_code_golden():
    assert backend_x86.guest_code() == GUEST_CODE
    assert backend_x86.guest_code(0x10)[0x2C:0x2E] == b"\xe6\x10"


def _spec(page_size: int, size: int = 64 * MIB) -> GuestSpec:
    return GuestSpec(
        system_gpa=0, reserved_end=0x10000, system_map_end=0x30000, table_base_gpa=0x30000,
        test_gva=TEST_GVA, test_gpa=TEST_GPA, test_size=size, guest_page_size=page_size,
    )  # fmt: skip


@pytest.mark.parametrize("page_size,depth", [(4096, 4), (2 * MIB, 3)])
def test_page_tables_translate_the_test_region(page_size, depth):
    """Every 4 KiB page of the region walks to TEST_GPA + offset, user-accessible, in `depth` levels."""
    image = backend_x86.X86Backend().build_guest(_spec(page_size))
    root = image.paging["root_gpa"]
    for offset in (0, 4096, 2 * MIB - 4096, 2 * MIB, 64 * MIB - 4096):
        walk = walk_image(image.pages, root, TEST_GVA + offset + 8, 4)
        assert walk.gpa == TEST_GPA + offset + 8
        assert walk.depth == depth
        assert all(step.pte & PTE_US for step in walk.levels)
    # code, plans and descriptor tables are identity-mapped
    for gva in (backend_x86.CODE_GPA, backend_x86.GDT_GPA, backend_x86.TSS_GPA, 0x2F000):
        assert walk_image(image.pages, root, gva, 4).gpa == gva
    assert image.pages[backend_x86.CODE_GPA] == GUEST_CODE
    assert image.end_gpa == 0x30000 + 4096 * len(image.paging["table_gpas"])


def test_table_count_golden():
    """0xc0000000 and 0 share PML4 entry 0 and so one PDPT (entries 3 and 0). 64 MiB of 2 MiB pages
    need one PD (entries 0-31) and the 192 KiB identity map a second PD and one PT: 1+1+2+1 = 5."""
    image = backend_x86.X86Backend().build_guest(_spec(2 * MIB))
    assert len(image.paging["table_gpas"]) == 5
    image = backend_x86.X86Backend().build_guest(_spec(4096))
    assert len(image.paging["table_gpas"]) == 5 + 32  # plus 64 MiB / 2 MiB page tables of 512 PTEs


def test_gdt_user_segments_and_tss():
    gdt = struct.unpack("<10Q", backend_x86._gdt())
    user_ds, user_cs = gdt[0x2B >> 3], gdt[0x33 >> 3]
    assert (user_cs >> 40) & 0xFF == 0xFB  # present, DPL 3, code, readable, accessed
    assert (user_cs >> 53) & 1 == 1  # L: 64-bit
    assert (user_ds >> 40) & 0xFF == 0xF3  # present, DPL 3, data, writable, accessed
    tss_low, tss_high = gdt[8], gdt[9]
    assert (tss_low >> 40) & 0xFF == 0x8B  # present busy 64-bit TSS
    assert ((tss_low >> 16) & 0xFFFFFF) | ((tss_low >> 56) << 24) | (tss_high << 32) == backend_x86.TSS_GPA
    tss = backend_x86._tss()
    bitmap = struct.unpack_from("<H", tss, 0x66)[0]
    port = backend_x86.REPORT_PORT
    assert tss[bitmap + port // 8] & (1 << (port % 8)) == 0  # the report port is allowed
    assert tss[-1] == 0xFF and len(tss) - 1 == (tss_low & 0xFFFF)  # terminator at the limit


@pytest.mark.parametrize("page_size", [4096, 2 * MIB])
def test_paging_record_rebuilds_the_same_tables(page_size):
    """The layout's ``guest_paging`` is enough to rebuild the guest's tables byte for byte: map the
    ``mappings`` in order (user, writable) and serialise at the first of ``table_gpas``."""
    from tracekit.model.x86 import X86PageTables

    image = backend_x86.X86Backend().build_guest(_spec(page_size))
    paging = image.paging
    tables = X86PageTables(levels=paging["levels"])
    for m in paging["mappings"]:
        tables.map(m["gva"], m["gpa"], m["size"], m["page_size"], user=True)
    root, pages = tables.serialize(min(paging["table_gpas"]))
    assert root == paging["root_gpa"] == paging["cr3"]
    assert sorted(pages) == paging["table_gpas"]
    assert all(pages[gpa] == image.pages[gpa] for gpa in pages)
