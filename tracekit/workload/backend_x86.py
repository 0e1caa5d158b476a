"""x86-64 backend: a long-mode guest entered directly at CPL3, with page tables from the model.

The vCPU starts in 64-bit long mode through ``KVM_SET_SREGS`` alone (no firmware), on the 4-level
tables of :class:`tracekit.model.x86.X86PageTables`, with DPL-3 segments, a real GDT and TSS, IOPL=3
and an I/O bitmap so the guest's ``out`` to :data:`REPORT_PORT` exits to the VMM: user-privilege code
with paging on runs natively even where KVM emulates CPL0 code. The guest (:func:`guest_code`, 48
bytes) runs the access plan; the system area's layout is in the constants below. Unexpected exits
raise WorkloadError with their details. x86 has no per-VM eager-split chunk size: asking for one
raises, naming the ``kvm.eager_page_split`` parameter and its value.
"""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

from tracekit.errors import WorkloadError
from tracekit.model.x86 import X86PageTables
from tracekit.workload import uapi
from tracekit.workload.backend import Backend, GuestImage, GuestSpec
from tracekit.workload.options import format_size

__all__ = ["X86Backend", "guest_code", "EAGER_PAGE_SPLIT_PARAM", "REPORT_PORT", "CODE_GPA", "GDT_GPA", "TSS_GPA", "STACK_TOP", "PLAN_BASE"]

REPORT_PORT = 0x7E
#: The module parameter through which x86 KVM turns eager page splitting on or off for every VM.
EAGER_PAGE_SPLIT_PARAM = Path("/sys/module/kvm/parameters/eager_page_split")
CODE_GPA = 0x1000
GDT_GPA = 0x2000
TSS_GPA = 0x3000
STACK_TOP = 0x8000
PLAN_BASE = 0x10000

_USER_DS = 0x2B  # GDT index 5, RPL 3 (Linux's __USER_DS)
_USER_CS = 0x33  # GDT index 6, RPL 3 (Linux's __USER_CS)
_TSS_SEL = 0x40  # GDT index 8, a 16-byte system descriptor
_TSS_IO_BITMAP = 0x68  # the I/O permission bitmap follows the 104-byte 64-bit TSS
_TSS_IO_PORTS = 0x100  # ports covered by the bitmap (all allowed); the rest are denied
_TSS_LIMIT = _TSS_IO_BITMAP + _TSS_IO_PORTS // 8  # last byte: the 0xff terminator

_CR0_PE = 1 << 0
_CR0_ET = 1 << 4
_CR0_NE = 1 << 5
_CR0_WP = 1 << 16
_CR0_PG = 1 << 31
_CR4_PAE = 1 << 5
_EFER_LME = 1 << 8
_EFER_LMA = 1 << 10
_RFLAGS_FIXED = 1 << 1
_RFLAGS_IOPL3 = 3 << 12

_CPUID_PDPE1GB = 1 << 26  # CPUID 0x80000001 EDX: 1 GiB pages


def _assemble(items: list) -> bytes:
    """Two-pass assembly of byte strings, ``("label", name)`` and ``(opcode_byte, "target")`` rel8 jumps."""
    offsets: dict[str, int] = {}
    position = 0
    for item in items:
        if isinstance(item, bytes):
            position += len(item)
        elif item[0] == "label":
            offsets[item[1]] = position
        else:
            position += 2
    code = bytearray()
    for item in items:
        if isinstance(item, bytes):
            code += item
        elif item[0] != "label":
            opcode, target = item
            displacement = offsets[target] - (len(code) + 2)
            code += bytes([opcode, displacement & 0xFF])
            assert -128 <= displacement < 128
    return bytes(code)


def guest_code(port: int = REPORT_PORT) -> bytes:
    """Machine code of the guest loop (position independent)."""
    jz, jnc, jnz, jmp = 0x74, 0x73, 0x75, 0xEB
    return _assemble(
        [
            ("label", "pass"),
            bytes.fromhex("49ffc0"),  # inc r8                 ; pass number
            bytes.fromhex("4c89e6"),  # mov rsi, r12           ; plan cursor
            bytes.fromhex("4c89e9"),  # mov rcx, r13           ; entries left
            bytes.fromhex("4885c9"),  # test rcx, rcx
            (jz, "report"),
            ("label", "next"),
            bytes.fromhex("488b06"),  # mov rax, [rsi]
            bytes.fromhex("4883c608"),  # add rsi, 8
            bytes.fromhex("480fbaf000"),  # btr rax, 0         ; CF = write bit
            (jnc, "read"),
            bytes.fromhex("4c8900"),  # mov [rax], r8          ; write one word
            (jmp, "step"),
            ("label", "read"),
            bytes.fromhex("488b18"),  # mov rbx, [rax]         ; read one word
            ("label", "step"),
            bytes.fromhex("48ffc9"),  # dec rcx
            (jnz, "next"),
            ("label", "report"),
            bytes.fromhex("4489c0"),  # mov eax, r8d
            bytes([0xE6, port]),  # out port, al
            (jmp, "pass"),
        ]
    )


def _segment_descriptor(access: int, flags: int) -> int:
    """A flat (base 0, limit 0xfffff pages) code/data descriptor."""
    return 0xFFFF | (access << 40) | (0xF << 48) | (flags << 52)


def _gdt() -> bytes:
    entries = [0] * 10
    entries[1] = _segment_descriptor(0x9B, 0xA)  # kernel code, L=1 G=1
    entries[2] = _segment_descriptor(0x93, 0xC)  # kernel data
    entries[5] = _segment_descriptor(0xF3, 0xC)  # user data, DPL 3
    entries[6] = _segment_descriptor(0xFB, 0xA)  # user code, DPL 3, L=1
    low = (
        (_TSS_LIMIT & 0xFFFF)
        | ((TSS_GPA & 0xFFFFFF) << 16)
        | (0x8B << 40)  # present, busy 64-bit TSS
        | (((TSS_GPA >> 24) & 0xFF) << 56)
    )
    entries[8] = low
    entries[9] = TSS_GPA >> 32
    return struct.pack("<10Q", *entries)


def _tss() -> bytes:
    """A 64-bit TSS whose I/O permission bitmap allows ports 0-0xff at any privilege.

    KVM backends that cannot keep RFLAGS.IOPL=3 for the guest (the paravirtual PVM backend saves
    the hardware RFLAGS, whose IOPL is always 0, on every exit) then still let ``out`` through: the
    instruction emulator's ``emulator_io_permited`` consults this bitmap when CPL > IOPL.
    """
    tss = bytearray(_TSS_LIMIT + 1)
    struct.pack_into("<H", tss, 0x66, _TSS_IO_BITMAP)
    tss[_TSS_LIMIT] = 0xFF  # bitmap terminator
    return bytes(tss)


def _set_segment(segment: uapi.KvmSegment, selector: int, type_: int, code: bool) -> None:
    segment.base = 0
    segment.limit = 0xFFFFFFFF
    segment.selector = selector
    segment.type = type_
    segment.present = 1
    segment.dpl = 3
    segment.db = 0 if code else 1
    segment.s = 1
    segment.l = 1 if code else 0
    segment.g = 1
    segment.avl = 0
    segment.unusable = 0


class X86Backend(Backend):
    """x86-64, 4-level paging, CPL3 guest (see the module contract)."""

    arch = "x86_64"
    guest_page_sizes = (4096, 2 << 20, 1 << 30)
    reserved_bytes = PLAN_BASE
    dirty_ring_cap = uapi.KVM_CAP_DIRTY_LOG_RING
    levels = 4

    def __init__(self, eager_page_split_param: Path = EAGER_PAGE_SPLIT_PARAM) -> None:
        self._cpuid: ctypes.Array | None = None
        self._eager_param = eager_page_split_param

    def check_eager_split_chunk(self, kvm, chunk: int) -> dict:
        try:
            current = f"currently {self._eager_param.read_text().strip()}"
        except OSError:
            current = f"not readable here: {self._eager_param} is missing"
        raise WorkloadError(
            "--eager-split-chunk applies to arm64 only: x86 KVM splits huge pages eagerly or not for every VM "
            f"according to the kvm.eager_page_split module parameter ({current}; set it in {self._eager_param})"
        )

    def vm_type(self, kvm) -> int:
        return 0

    def guest_mode(self, spec: GuestSpec) -> str:
        return f"PA-bits:ANY, VA-bits:48,  {format_size(spec.guest_page_size)} pages"

    def build_guest(self, spec: GuestSpec) -> GuestImage:
        tables = X86PageTables(levels=self.levels)
        system_start = spec.system_gpa + CODE_GPA
        tables.map(system_start, system_start, spec.system_map_end - system_start, 4096, user=True)
        tables.map(spec.test_gva, spec.test_gpa, spec.test_size, spec.guest_page_size, user=True)
        root_gpa, table_pages = tables.serialize(spec.table_base_gpa)
        pages = dict(table_pages)
        pages[spec.system_gpa + CODE_GPA] = guest_code()
        pages[spec.system_gpa + GDT_GPA] = _gdt()
        pages[spec.system_gpa + TSS_GPA] = _tss()
        end_gpa = spec.table_base_gpa + len(table_pages) * 4096
        paging = {
            "levels": self.levels,
            "page_size": spec.guest_page_size,
            "root_gpa": root_gpa,
            "cr3": root_gpa,
            "table_gpas": sorted(table_pages),
            "mappings": [
                {"role": "system", "gva": system_start, "gpa": system_start,
                 "size": spec.system_map_end - system_start, "page_size": 4096},
                {"role": "test", "gva": spec.test_gva, "gpa": spec.test_gpa,
                 "size": spec.test_size, "page_size": spec.guest_page_size},
            ],
            "code_gva": CODE_GPA,
            "report_port": REPORT_PORT,
        }  # fmt: skip
        return GuestImage(pages=pages, entry_gva=CODE_GPA, end_gpa=end_gpa, paging=paging, extra={"model": tables})

    def _supported_cpuid(self, kvm) -> ctypes.Array:
        """``KVM_GET_SUPPORTED_CPUID`` as a buffer (kvm_cpuid2 header + entries), fetched once."""
        if self._cpuid is None:
            entries = 64
            while True:
                size = ctypes.sizeof(uapi.KvmCpuid2) + entries * ctypes.sizeof(uapi.KvmCpuidEntry2)
                buffer = ctypes.create_string_buffer(size)
                uapi.KvmCpuid2.from_buffer(buffer).nent = entries
                try:
                    kvm.log.call("kvm", kvm.fd, uapi.KVM_GET_SUPPORTED_CPUID, ctypes.addressof(buffer))
                    break
                except WorkloadError:
                    if entries >= 4096:
                        raise
                    entries *= 4  # E2BIG: ask again with room for more entries
            self._cpuid = buffer
        return self._cpuid

    def _cpuid_entry(self, kvm, function: int, index: int = 0) -> uapi.KvmCpuidEntry2 | None:
        buffer = self._supported_cpuid(kvm)
        count = uapi.KvmCpuid2.from_buffer(buffer).nent
        entries = (uapi.KvmCpuidEntry2 * count).from_buffer(buffer, ctypes.sizeof(uapi.KvmCpuid2))
        for entry in entries:
            if entry.function == function and entry.index == index:
                return entry
        return None

    def check_host(self, kvm, guest_page_size: int) -> None:
        if guest_page_size == 1 << 30:
            entry = self._cpuid_entry(kvm, 0x8000_0001)
            if entry is None or not entry.edx & _CPUID_PDPE1GB:
                raise WorkloadError(
                    "1 GiB guest pages: this host's KVM does not offer PDPE1GB in KVM_GET_SUPPORTED_CPUID "
                    "(use --guest-page-size 2m or 4k)"
                )

    def init_vcpu(self, vcpu, image: GuestImage, index: int, plan_gva: int, plan_entries: int) -> None:
        # The guest CPUID decides which paging features KVM honours (1 GiB pages need PDPE1GB,
        # MAXPHYADDR comes from leaf 0x80000008): give the vCPU everything KVM supports.
        cpuid = self._supported_cpuid(vcpu.vm.kvm)
        vcpu.call(uapi.KVM_SET_CPUID2, ctypes.addressof(cpuid))
        sregs = uapi.KvmSregs()
        vcpu.call(uapi.KVM_GET_SREGS, sregs)
        _set_segment(sregs.cs, _USER_CS, 0xB, code=True)
        for name in ("ds", "es", "fs", "gs", "ss"):
            _set_segment(getattr(sregs, name), _USER_DS, 0x3, code=False)
        sregs.tr.base = TSS_GPA
        sregs.tr.limit = _TSS_LIMIT
        sregs.tr.selector = _TSS_SEL
        sregs.tr.type = 0xB
        sregs.tr.present = 1
        sregs.tr.dpl = 0
        sregs.tr.s = 0
        sregs.tr.l = 0
        sregs.tr.db = 0
        sregs.tr.g = 0
        sregs.tr.unusable = 0
        sregs.gdt.base = GDT_GPA
        sregs.gdt.limit = 10 * 8 - 1
        sregs.idt.base = 0
        sregs.idt.limit = 0
        sregs.cr0 = _CR0_PE | _CR0_ET | _CR0_NE | _CR0_WP | _CR0_PG
        sregs.cr3 = image.paging["root_gpa"]
        sregs.cr4 = _CR4_PAE
        sregs.efer = _EFER_LME | _EFER_LMA
        vcpu.call(uapi.KVM_SET_SREGS, sregs)
        regs = uapi.KvmRegs()
        regs.rip = image.entry_gva
        regs.rsp = STACK_TOP
        regs.rflags = _RFLAGS_FIXED | _RFLAGS_IOPL3
        regs.r12 = plan_gva
        regs.r13 = plan_entries
        regs.r8 = 0
        vcpu.call(uapi.KVM_SET_REGS, regs)

    def guest_report(self, vcpu, exit_reason: int) -> int:
        if exit_reason == uapi.KVM_EXIT_IO:
            io = vcpu.run_struct(uapi.RunIo)
            if io.direction == uapi.KVM_EXIT_IO_OUT and io.port == REPORT_PORT and io.size == 1:
                return ctypes.c_uint8.from_address(vcpu.run_address + io.data_offset).value
            raise WorkloadError(
                f"vCPU {vcpu.index}: unexpected port I/O (port {io.port:#x}, size {io.size}, "
                f"{'out' if io.direction else 'in'})"
            )
        name = uapi.KVM_EXIT_NAMES.get(exit_reason, str(exit_reason))
        detail = ""
        if exit_reason == uapi.KVM_EXIT_FAIL_ENTRY:
            reason = ctypes.c_uint64.from_address(vcpu.run_address + uapi.RUN_UNION_OFFSET).value
            detail = f" (hardware entry failure reason {reason:#x})"
        elif exit_reason == uapi.KVM_EXIT_INTERNAL_ERROR:
            suberror = ctypes.c_uint32.from_address(vcpu.run_address + uapi.RUN_UNION_OFFSET).value
            detail = f" (suberror {suberror})"
        elif exit_reason == uapi.KVM_EXIT_SHUTDOWN:
            detail = " (the guest triple-faulted)"
        try:
            regs = uapi.KvmRegs()
            vcpu.call(uapi.KVM_GET_REGS, regs)
            detail += f" at rip {regs.rip:#x}"
        except WorkloadError:
            pass
        raise WorkloadError(f"vCPU {vcpu.index}: unexpected exit {name}{detail}")
