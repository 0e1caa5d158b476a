"""The arm64 workload backend without arm64 KVM: instruction encodings, stage-1 tables, register ids.

It runs for real only inside the arm64 lab (``tracekit lab arm64 --scenario workload``); here the
tables are walked by a small independent stage-1 translator and the code is checked field by field.
"""

from __future__ import annotations

import struct

import pytest

from tracekit.errors import WorkloadError
from tracekit.workload.backend import GuestSpec
from tracekit.workload.backend_arm64 import (
    FAULT_GPA, REPORT_GPA, Arm64Backend, Stage1Tables, core_reg_id, guest_code, sysreg_id, vector_table,
)  # fmt: skip

MiB = 1 << 20


def _translate(pages: dict[int, bytes], root: int, va: int) -> tuple[int, int, int]:
    """(PA, level of the leaf, leaf descriptor) by walking 4 KiB-granule tables from level 1."""
    table = root
    for level, shift in ((1, 30), (2, 21), (3, 12)):
        desc = struct.unpack_from("<Q", pages[table], ((va >> shift) & 511) * 8)[0]
        assert desc & 1, f"VA {va:#x} not mapped at level {level}"
        out = desc & 0x0000_FFFF_FFFF_F000
        if level == 3 or not desc & 2:
            mask = (1 << shift) - 1
            return (out & ~mask) | (va & mask), level, desc
        table = out
    raise AssertionError("unreachable")


def test_register_ids():
    assert core_reg_id(32) == 0x6030_0000_0010_0040  # pc: offsetof(user_pt_regs, pc) / 4 = 64
    assert sysreg_id(3, 0, 1, 0, 0) == 0x6030_0000_0013_C080  # SCTLR_EL1 (ARM64_SYS_REG)


def test_guest_code_fields():
    words = struct.unpack("<14I", guest_code())
    assert words[3] & 0xFF00001F == 0xB4000003 and (words[3] >> 5) & 0x7FFFF == 9  # cbz x3, +36
    assert words[5] >> 24 == 0x36 and (words[5] >> 5) & 0x3FFF == 4  # tbz x4, #0, +16
    assert words[11] & 0xFF00001F == 0x54000001 and ((words[11] >> 5) & 0x7FFFF) - (1 << 19) == -7  # b.ne -28
    assert words[13] & 0x3FFFFFF == (1 << 26) - 13  # b -52
    assert len(vector_table()) == 16 * 0x80


def test_stage1_tables_translate_every_mapping():
    spec = GuestSpec(system_gpa=0, reserved_end=0x10000, system_map_end=0x30000, table_base_gpa=0x30000,
                     test_gva=0xC000_0000, test_gpa=1 << 32, test_size=64 * MiB, guest_page_size=2 * MiB)  # fmt: skip
    image = Arm64Backend().build_guest(spec)
    root = image.paging["root_gpa"]
    assert _translate(image.pages, root, 0x1234)[0:2] == (0x1234, 3)
    pa, level, desc = _translate(image.pages, root, 0xC000_0000 + 5 * MiB + 8)
    assert (pa, level) == ((1 << 32) + 5 * MiB + 8, 2) and desc & (1 << 10)  # block, access flag set
    pa, level, desc = _translate(image.pages, root, REPORT_GPA)
    assert (pa, level) == (REPORT_GPA, 3) and (desc >> 2) & 7 == 1  # device attribute index
    assert _translate(image.pages, root, FAULT_GPA)[0] == FAULT_GPA
    assert image.end_gpa == spec.table_base_gpa + 4096 * len(image.paging["table_gpas"])


def test_overlapping_or_misaligned_mappings_are_refused():
    tables = Stage1Tables()
    tables.map(0x4000_0000, 0x4000_0000, 1 << 30, 1 << 30)
    with pytest.raises(WorkloadError, match="overlaps a block"):
        tables.map(0x4000_0000, 0, 4096, 4096)
    with pytest.raises(WorkloadError, match="not aligned"):
        tables.map(0x1000, 0x1000, 2 * MiB, 2 * MiB)
