"""arm64 backend: an EL1 guest started with its stage-1 MMU already on, no firmware.

The IPA size (:data:`IPA_BITS`) goes in the ``KVM_CREATE_VM`` type; the eager-split chunk size is 0 or
a size ``KVM_CAP_ARM_SUPPORTED_BLOCK_SIZES`` lists, set before the first memslot. ``init_vcpu`` sets
MAIR, TCR, TTBR0, VBAR and SCTLR (M|C|I) through ``KVM_SET_ONE_REG``, so the first instruction runs
with paging on, on 3-level stage-1 tables built here (system area identity-mapped, test region at
``test_gva`` with the guest page size). The guest (:func:`guest_code`) reports a pass as an MMIO
store to :data:`REPORT_GPA`; every exception vector stores to :data:`FAULT_GPA` instead, reported as
a WorkloadError. Standard library only.
"""

from __future__ import annotations

import ctypes
import struct

from tracekit.errors import WorkloadError
from tracekit.workload import uapi
from tracekit.workload.backend import Backend, GuestImage, GuestSpec
from tracekit.workload.options import format_size

__all__ = [
    "Arm64Backend",
    "guest_code",
    "vector_table",
    "core_reg_id",
    "sysreg_id",
    "set_one_reg",
    "vcpu_init",
    "PC_REG",
    "Stage1Tables",
    "IPA_BITS",
    "REPORT_GPA",
    "FAULT_GPA",
    "CODE_GPA",
    "VECTORS_GPA",
    "PLAN_BASE",
]

IPA_BITS = 40
CODE_GPA = 0x1000
VECTORS_GPA = 0x2000  # VBAR_EL1 needs 2 KiB alignment
PLAN_BASE = 0x10000
REPORT_GPA = 0x0800_0000
FAULT_GPA = REPORT_GPA + 0x1000
_MMIO_PAGE = REPORT_GPA

_KVM_REG_ARM64 = 0x6000_0000_0000_0000
_KVM_REG_SIZE_U64 = 0x0030_0000_0000_0000
_KVM_REG_ARM_CORE = 0x0010 << 16
_KVM_REG_ARM64_SYSREG = 0x0013 << 16
PC_REG = 32  # struct user_pt_regs: regs[31], sp, pc

# (op0, op1, CRn, CRm, op2)
_SCTLR_EL1 = (3, 0, 1, 0, 0)
_TTBR0_EL1 = (3, 0, 2, 0, 0)
_TCR_EL1 = (3, 0, 2, 0, 2)
_MAIR_EL1 = (3, 0, 10, 2, 0)
_VBAR_EL1 = (3, 0, 12, 0, 0)

_MAIR = 0x00FF  # attr0 = normal inner/outer write-back, attr1 = device-nGnRnE
_T0SZ = 25  # 39-bit VA: translation starts at level 1
_TCR = _T0SZ | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (2 << 32)  # IRGN0/ORGN0 WB, SH0 inner, EPD1, IPS 40
_SCTLR = 0x30D0_0800 | (1 << 0) | (1 << 2) | (1 << 12)  # RES1 bits + M, C, I

_VALID, _TABLE = 1 << 0, 1 << 1
_AF = 1 << 10
_SH_INNER = 3 << 8
_NORMAL = 0 << 2  # AttrIndx 0
_DEVICE = 1 << 2  # AttrIndx 1
_XN = (1 << 53) | (1 << 54)
_LEVEL_SHIFT = {1: 30, 2: 21, 3: 12}


def core_reg_id(index: int) -> int:
    """``KVM_SET_ONE_REG`` id of core register ``index`` (x0..x30 = 0..30, sp = 31, pc = 32)."""
    return _KVM_REG_ARM64 | _KVM_REG_SIZE_U64 | _KVM_REG_ARM_CORE | (index * 2)


def sysreg_id(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """``KVM_SET_ONE_REG`` id of a 64-bit system register (``ARM64_SYS_REG``)."""
    return (_KVM_REG_ARM64 | _KVM_REG_SIZE_U64 | _KVM_REG_ARM64_SYSREG
            | (op0 << 14) | (op1 << 11) | (crn << 7) | (crm << 3) | op2)  # fmt: skip


def set_one_reg(vcpu, reg_id: int, value: int) -> None:
    """``KVM_SET_ONE_REG`` of a 64-bit register on ``vcpu`` (a :class:`tracekit.workload.kvm.Vcpu`), logged."""
    cell = ctypes.c_uint64(value)
    vcpu.call(uapi.KVM_SET_ONE_REG, uapi.KvmOneReg(reg_id, ctypes.addressof(cell)), {"reg": reg_id, "value": value})


def vcpu_init(vcpu) -> None:
    """``KVM_ARM_PREFERRED_TARGET`` on the VM, then ``KVM_ARM_VCPU_INIT`` of ``vcpu`` with that target."""
    init = uapi.KvmVcpuInit()
    vcpu.vm.log.call("vm", vcpu.vm.fd, uapi.KVM_ARM_PREFERRED_TARGET, init)
    vcpu.call(uapi.KVM_ARM_VCPU_INIT, init, {"target": init.target})


def _branch(opcode: int, offset: int, bits: int, shift: int) -> int:
    if offset % 4:
        raise ValueError("branch offsets are multiples of 4")
    return opcode | (((offset // 4) & ((1 << bits) - 1)) << shift)


def guest_code() -> bytes:
    """The plan loop, A64, position independent (branch offsets in bytes from the branch)."""
    words = [
        0x91000508,  # 0  pass:   add  x8, x8, #1
        0xAA0003E2,  # 4          mov  x2, x0          ; plan cursor
        0xAA0103E3,  # 8          mov  x3, x1          ; entries left
        _branch(0xB4000000 | 3, 48 - 12, 19, 5),  # 12 cbz x3, report
        0xF8408444,  # 16 next:   ldr  x4, [x2], #8
        _branch(0x36000000 | 4, 36 - 20, 14, 5),  # 20 tbz x4, #0, read
        0x927FF885,  # 24         and  x5, x4, #~1
        0xF90000A8,  # 28         str  x8, [x5]        ; write one word
        _branch(0x14000000, 40 - 32, 26, 0),  # 32 b step
        0xF9400086,  # 36 read:   ldr  x6, [x4]        ; read one word
        0xF1000463,  # 40 step:   subs x3, x3, #1
        _branch(0x54000000 | 1, 16 - 44, 19, 5),  # 44 b.ne next
        0xF9000288,  # 48 report: str  x8, [x20]       ; MMIO exit with the pass number
        _branch(0x14000000, 0 - 52, 26, 0),  # 52 b pass
    ]
    return struct.pack(f"<{len(words)}I", *words)


def vector_table() -> bytes:
    """16 exception vectors (0x80 apart), each ``str xzr, [x22]; b .``: any exception exits to the VMM."""
    entry = struct.pack("<2I", 0xF90002DF, 0x14000000) + b"\0" * (0x80 - 8)
    return entry * 16


class Stage1Tables:
    """arm64 stage-1 tables, 4 KiB granule, 39-bit VA (levels 1..3), serialised from a base GPA."""

    def __init__(self) -> None:
        self.root: dict[int, object] = {}

    def _insert(self, va: int, level: int, descriptor: int) -> None:
        table = self.root
        for lvl in range(1, level):
            index = (va >> _LEVEL_SHIFT[lvl]) & 511
            child = table.setdefault(index, {})
            if not isinstance(child, dict):
                raise WorkloadError(f"stage-1 mapping at {va:#x} overlaps a block at level {lvl}")
            table = child
        index = (va >> _LEVEL_SHIFT[level]) & 511
        if index in table:
            raise WorkloadError(f"stage-1 mapping at {va:#x} is mapped twice")
        table[index] = descriptor

    def map(self, va: int, pa: int, size: int, page_size: int, device: bool = False) -> None:
        level = {4096: 3, 2 << 20: 2, 1 << 30: 1}[page_size]
        if va % page_size or pa % page_size or size % page_size:
            raise WorkloadError(f"stage-1 mapping {va:#x}+{size:#x} is not aligned to {page_size:#x}")
        attrs = _AF | ((_DEVICE | _XN) if device else (_NORMAL | _SH_INNER))
        kind = (_VALID | _TABLE) if level == 3 else _VALID  # level 3: page; 1/2: block
        for offset in range(0, size, page_size):
            self._insert(va + offset, level, (pa + offset) | attrs | kind)

    def serialize(self, base_gpa: int) -> tuple[int, dict[int, bytes]]:
        """(root GPA, {GPA: 4 KiB page}) with tables laid out from ``base_gpa`` in pre-order."""
        pages: dict[int, bytes] = {}
        cursor = [base_gpa]

        def emit(table: dict) -> int:
            gpa = cursor[0]
            cursor[0] += 4096
            entries = [0] * 512
            for index, child in table.items():
                entries[index] = emit(child) | _VALID | _TABLE if isinstance(child, dict) else child
            pages[gpa] = struct.pack("<512Q", *entries)
            return gpa

        return emit(self.root), pages


class Arm64Backend(Backend):
    """arm64, 39-bit stage-1 VA, EL1 guest with the MMU on (see the module contract)."""

    arch = "aarch64"
    guest_page_sizes = (4096, 2 << 20, 1 << 30)
    reserved_bytes = PLAN_BASE
    dirty_ring_cap = uapi.KVM_CAP_DIRTY_LOG_RING_ACQ_REL  # arm64 offers only the acquire/release ring
    max_gpa = 1 << IPA_BITS

    def vm_type(self, kvm) -> int:
        limit = kvm.check_extension(uapi.KVM_CAP_ARM_VM_IPA_SIZE)
        if limit and limit < IPA_BITS:
            raise WorkloadError(f"this host's KVM offers a {limit}-bit IPA space; the workload needs {IPA_BITS} bits")
        return IPA_BITS & 0xFF

    def check_eager_split_chunk(self, kvm, chunk: int) -> dict:
        sizes = kvm.check_extension(uapi.KVM_CAP_ARM_SUPPORTED_BLOCK_SIZES)
        if not sizes:
            raise WorkloadError(
                "--eager-split-chunk: this host's KVM does not offer KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE "
                "(KVM_CAP_ARM_SUPPORTED_BLOCK_SIZES is 0; eager page splitting needs Linux 6.5 or later)"
            )
        if chunk and not chunk & sizes:
            offered = ", ".join(format_size(1 << bit) for bit in range(64) if sizes >> bit & 1)
            raise WorkloadError(
                f"--eager-split-chunk {format_size(chunk)} is not a stage-2 block size of this host's KVM "
                f"(KVM_CAP_ARM_SUPPORTED_BLOCK_SIZES: {offered}; 0 turns eager splitting off)"
            )
        return {"arm_supported_block_sizes": sizes}

    def set_eager_split_chunk(self, vm, chunk: int) -> int:
        try:
            vm.enable_cap(uapi.KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE, chunk)
        except WorkloadError as error:
            raise WorkloadError(
                f"KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE={chunk} refused ({error}): the size must be a "
                "supported block size and be set before the first memslot"
            ) from None
        return vm.check_extension(uapi.KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE)

    def guest_mode(self, spec: GuestSpec) -> str:
        return f"PA-bits:{IPA_BITS}, VA-bits:39,  {format_size(spec.guest_page_size)} pages"

    def build_guest(self, spec: GuestSpec) -> GuestImage:
        tables = Stage1Tables()
        start = spec.system_gpa + CODE_GPA
        tables.map(start, start, spec.system_map_end - start, 4096)
        tables.map(spec.test_gva, spec.test_gpa, spec.test_size, spec.guest_page_size)
        tables.map(_MMIO_PAGE, _MMIO_PAGE, 2 * 4096, 4096, device=True)
        root_gpa, table_pages = tables.serialize(spec.table_base_gpa)
        pages = dict(table_pages)
        pages[spec.system_gpa + CODE_GPA] = guest_code()
        pages[spec.system_gpa + VECTORS_GPA] = vector_table()
        paging = {
            "levels": 3,
            "va_bits": 39,
            "page_size": spec.guest_page_size,
            "root_gpa": root_gpa,
            "ttbr0": root_gpa,
            "table_gpas": sorted(table_pages),
            "mappings": [
                {"role": "system", "gva": start, "gpa": start, "size": spec.system_map_end - start, "page_size": 4096},
                {"role": "test", "gva": spec.test_gva, "gpa": spec.test_gpa, "size": spec.test_size,
                 "page_size": spec.guest_page_size},
                {"role": "mmio", "gva": _MMIO_PAGE, "gpa": _MMIO_PAGE, "size": 2 * 4096, "page_size": 4096},
            ],
            "code_gva": CODE_GPA,
            "report_gpa": REPORT_GPA,
        }  # fmt: skip
        end_gpa = spec.table_base_gpa + len(table_pages) * 4096
        return GuestImage(pages=pages, entry_gva=CODE_GPA, end_gpa=end_gpa, paging=paging)

    def init_vcpu(self, vcpu, image: GuestImage, index: int, plan_gva: int, plan_entries: int) -> None:
        vcpu_init(vcpu)
        for reg, value in (
            (_MAIR_EL1, _MAIR),
            (_TCR_EL1, _TCR),
            (_TTBR0_EL1, image.paging["root_gpa"]),
            (_VBAR_EL1, VECTORS_GPA),
            (_SCTLR_EL1, _SCTLR),
        ):
            set_one_reg(vcpu, sysreg_id(*reg), value)
        for reg, value in ((0, plan_gva), (1, plan_entries), (8, 0), (20, REPORT_GPA), (22, FAULT_GPA)):
            set_one_reg(vcpu, core_reg_id(reg), value)
        set_one_reg(vcpu, core_reg_id(PC_REG), image.entry_gva)

    def guest_report(self, vcpu, exit_reason: int) -> int:
        if exit_reason == uapi.KVM_EXIT_MMIO:
            address = ctypes.c_uint64.from_address(vcpu.run_address + uapi.RUN_UNION_OFFSET).value
            data = ctypes.c_uint64.from_address(vcpu.run_address + uapi.RUN_UNION_OFFSET + 8).value
            if address == REPORT_GPA:
                return data & 0xFF
            if address == FAULT_GPA:
                raise WorkloadError(f"vCPU {vcpu.index}: the guest took an exception (vector store to {FAULT_GPA:#x})")
            raise WorkloadError(f"vCPU {vcpu.index}: unexpected MMIO access at {address:#x}")
        name = uapi.KVM_EXIT_NAMES.get(exit_reason, str(exit_reason))
        raise WorkloadError(f"vCPU {vcpu.index}: unexpected exit {name}")
