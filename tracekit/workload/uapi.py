"""KVM user-space ABI: ioctl numbers, structure layouts, capabilities and exit reasons.

The one place where the workload spells out ``include/uapi/linux/kvm.h`` (and the arch headers
``arch/x86/include/uapi/asm/kvm.h``, ``arch/arm64/include/uapi/asm/kvm.h``). Everything else uses
the names defined here. Ioctl numbers are computed with the asm-generic ``_IOC`` encoding, which is
the same on x86_64 and arm64 (direction in bits 31:30, size in 29:16, type in 15:8, number in 7:0);
structures are :mod:`ctypes` mirrors whose ``sizeof`` equals the C one. Sizes are bytes. Nothing
here touches the kernel or raises; only the standard library is imported.
"""

from __future__ import annotations

import ctypes

__all__ = [
    "IOC_NONE",
    "IOC_WRITE",
    "IOC_READ",
    "ioc",
    "io",
    "iow",
    "ior",
    "iowr",
    "KVMIO",
    "KVM_API_VERSION",
    "KVM_GET_API_VERSION",
    "KVM_CREATE_VM",
    "KVM_CHECK_EXTENSION",
    "KVM_GET_VCPU_MMAP_SIZE",
    "KVM_GET_SUPPORTED_CPUID",
    "KVM_SET_CPUID2",
    "KvmCpuid2",
    "KvmCpuidEntry2",
    "KVM_CREATE_VCPU",
    "KVM_GET_DIRTY_LOG",
    "KVM_SET_USER_MEMORY_REGION",
    "KVM_RUN",
    "KVM_GET_REGS",
    "KVM_SET_REGS",
    "KVM_GET_SREGS",
    "KVM_SET_SREGS",
    "KVM_ENABLE_CAP",
    "KVM_ARM_VCPU_INIT",
    "KVM_ARM_PREFERRED_TARGET",
    "KVM_SET_ONE_REG",
    "KVM_CLEAR_DIRTY_LOG",
    "KVM_RESET_DIRTY_RINGS",
    "IOCTL_NAMES",
    "KvmUserspaceMemoryRegion",
    "KvmDirtyLog",
    "KvmClearDirtyLog",
    "KvmEnableCap",
    "KvmDirtyGfn",
    "KvmVcpuInit",
    "KvmOneReg",
    "KvmRegs",
    "KvmSegment",
    "KvmDtable",
    "KvmSregs",
    "KVM_MEM_LOG_DIRTY_PAGES",
    "KVM_MEM_READONLY",
    "KVM_CAP_NR_MEMSLOTS",
    "KVM_CAP_MAX_VCPUS",
    "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2",
    "KVM_CAP_DIRTY_LOG_RING",
    "KVM_CAP_DIRTY_LOG_RING_ACQ_REL",
    "KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP",
    "KVM_CAP_ARM_VM_IPA_SIZE",
    "KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE",
    "KVM_CAP_ARM_SUPPORTED_BLOCK_SIZES",
    "KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE",
    "KVM_DIRTY_LOG_INITIALLY_SET",
    "KVM_DIRTY_GFN_F_DIRTY",
    "KVM_DIRTY_GFN_F_RESET",
    "KVM_DIRTY_LOG_PAGE_OFFSET",
    "KVM_EXIT_NAMES",
    "KVM_EXIT_IO",
    "KVM_EXIT_MMIO",
    "KVM_EXIT_HLT",
    "KVM_EXIT_SHUTDOWN",
    "KVM_EXIT_FAIL_ENTRY",
    "KVM_EXIT_INTR",
    "KVM_EXIT_INTERNAL_ERROR",
    "KVM_EXIT_DIRTY_RING_FULL",
    "KVM_EXIT_IO_OUT",
    "RUN_EXIT_REASON_OFFSET",
    "RUN_UNION_OFFSET",
    "RunIo",
]

# asm-generic/ioctl.h
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8
_IOC_SIZESHIFT = 16
_IOC_DIRSHIFT = 30
_IOC_SIZEBITS = 14
IOC_NONE = 0
IOC_WRITE = 1
IOC_READ = 2


def ioc(direction: int, type_: int, nr: int, size: int) -> int:
    """``_IOC(dir, type, nr, size)`` of asm-generic/ioctl.h."""
    if not 0 <= size < (1 << _IOC_SIZEBITS):
        raise ValueError(f"ioctl argument size {size} does not fit in {_IOC_SIZEBITS} bits")
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def io(type_: int, nr: int) -> int:
    """``_IO(type, nr)``: no argument structure."""
    return ioc(IOC_NONE, type_, nr, 0)


def iow(type_: int, nr: int, struct_type: type) -> int:
    """``_IOW(type, nr, struct)``: user space writes the structure."""
    return ioc(IOC_WRITE, type_, nr, ctypes.sizeof(struct_type))


def ior(type_: int, nr: int, struct_type: type) -> int:
    """``_IOR(type, nr, struct)``: the kernel fills the structure."""
    return ioc(IOC_READ, type_, nr, ctypes.sizeof(struct_type))


def iowr(type_: int, nr: int, struct_type: type) -> int:
    """``_IOWR(type, nr, struct)``: both directions."""
    return ioc(IOC_READ | IOC_WRITE, type_, nr, ctypes.sizeof(struct_type))


# -- structures (generic) ----------------------------------------------------------------------


class KvmUserspaceMemoryRegion(ctypes.Structure):
    """``struct kvm_userspace_memory_region`` (32 bytes); slot bits 31:16 are the address space."""

    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
    ]


class KvmDirtyLog(ctypes.Structure):
    """``struct kvm_dirty_log`` (16 bytes): slot and a user pointer to the bitmap."""

    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("padding1", ctypes.c_uint32),
        ("dirty_bitmap", ctypes.c_uint64),
    ]


class KvmClearDirtyLog(ctypes.Structure):
    """``struct kvm_clear_dirty_log`` (24 bytes); first_page a multiple of 64."""

    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("num_pages", ctypes.c_uint32),
        ("first_page", ctypes.c_uint64),
        ("dirty_bitmap", ctypes.c_uint64),
    ]


class KvmEnableCap(ctypes.Structure):
    """``struct kvm_enable_cap`` (104 bytes)."""

    _fields_ = [
        ("cap", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("args", ctypes.c_uint64 * 4),
        ("pad", ctypes.c_uint8 * 64),
    ]


class KvmDirtyGfn(ctypes.Structure):
    """``struct kvm_dirty_gfn`` (16 bytes), one dirty-ring entry."""

    _fields_ = [
        ("flags", ctypes.c_uint32),
        ("slot", ctypes.c_uint32),
        ("offset", ctypes.c_uint64),
    ]


class KvmVcpuInit(ctypes.Structure):
    """arm64 ``struct kvm_vcpu_init`` (32 bytes)."""

    _fields_ = [
        ("target", ctypes.c_uint32),
        ("features", ctypes.c_uint32 * 7),
    ]


class KvmOneReg(ctypes.Structure):
    """``struct kvm_one_reg`` (16 bytes): register id and a user pointer to its value."""

    _fields_ = [
        ("id", ctypes.c_uint64),
        ("addr", ctypes.c_uint64),
    ]


# -- structures (x86) --------------------------------------------------------------------------


class KvmRegs(ctypes.Structure):
    """x86 ``struct kvm_regs`` (144 bytes)."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]  # fmt: skip


class KvmSegment(ctypes.Structure):
    """x86 ``struct kvm_segment`` (24 bytes): the hidden part of a segment register."""

    _fields_ = [
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint32),
        ("selector", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("present", ctypes.c_uint8),
        ("dpl", ctypes.c_uint8),
        ("db", ctypes.c_uint8),
        ("s", ctypes.c_uint8),
        ("l", ctypes.c_uint8),
        ("g", ctypes.c_uint8),
        ("avl", ctypes.c_uint8),
        ("unusable", ctypes.c_uint8),
        ("padding", ctypes.c_uint8),
    ]


class KvmDtable(ctypes.Structure):
    """x86 ``struct kvm_dtable`` (16 bytes): GDTR/IDTR."""

    _fields_ = [
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint16),
        ("padding", ctypes.c_uint16 * 3),
    ]


class KvmCpuidEntry2(ctypes.Structure):
    """x86 ``struct kvm_cpuid_entry2`` (40 bytes)."""

    _fields_ = [
        ("function", ctypes.c_uint32),
        ("index", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("eax", ctypes.c_uint32),
        ("ebx", ctypes.c_uint32),
        ("ecx", ctypes.c_uint32),
        ("edx", ctypes.c_uint32),
        ("padding", ctypes.c_uint32 * 3),
    ]


class KvmCpuid2(ctypes.Structure):
    """x86 ``struct kvm_cpuid2`` header (8 bytes); ``nent`` entries follow it in memory."""

    _fields_ = [
        ("nent", ctypes.c_uint32),
        ("padding", ctypes.c_uint32),
    ]


class KvmSregs(ctypes.Structure):
    """x86 ``struct kvm_sregs`` (312 bytes)."""

    _fields_ = [
        ("cs", KvmSegment),
        ("ds", KvmSegment),
        ("es", KvmSegment),
        ("fs", KvmSegment),
        ("gs", KvmSegment),
        ("ss", KvmSegment),
        ("tr", KvmSegment),
        ("ldt", KvmSegment),
        ("gdt", KvmDtable),
        ("idt", KvmDtable),
        ("cr0", ctypes.c_uint64),
        ("cr2", ctypes.c_uint64),
        ("cr3", ctypes.c_uint64),
        ("cr4", ctypes.c_uint64),
        ("cr8", ctypes.c_uint64),
        ("efer", ctypes.c_uint64),
        ("apic_base", ctypes.c_uint64),
        ("interrupt_bitmap", ctypes.c_uint64 * 4),
    ]


# -- ioctl numbers -----------------------------------------------------------------------------

KVMIO = 0xAE
KVM_API_VERSION = 12

KVM_GET_API_VERSION = io(KVMIO, 0x00)
KVM_CREATE_VM = io(KVMIO, 0x01)
KVM_CHECK_EXTENSION = io(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = io(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = iowr(KVMIO, 0x05, KvmCpuid2)
KVM_CREATE_VCPU = io(KVMIO, 0x41)
KVM_GET_DIRTY_LOG = iow(KVMIO, 0x42, KvmDirtyLog)
KVM_SET_USER_MEMORY_REGION = iow(KVMIO, 0x46, KvmUserspaceMemoryRegion)
KVM_RUN = io(KVMIO, 0x80)
KVM_GET_REGS = ior(KVMIO, 0x81, KvmRegs)
KVM_SET_REGS = iow(KVMIO, 0x82, KvmRegs)
KVM_GET_SREGS = ior(KVMIO, 0x83, KvmSregs)
KVM_SET_SREGS = iow(KVMIO, 0x84, KvmSregs)
KVM_SET_CPUID2 = iow(KVMIO, 0x90, KvmCpuid2)
KVM_ENABLE_CAP = iow(KVMIO, 0xA3, KvmEnableCap)
KVM_SET_ONE_REG = iow(KVMIO, 0xAC, KvmOneReg)
KVM_ARM_VCPU_INIT = iow(KVMIO, 0xAE, KvmVcpuInit)
KVM_ARM_PREFERRED_TARGET = ior(KVMIO, 0xAF, KvmVcpuInit)
KVM_CLEAR_DIRTY_LOG = iowr(KVMIO, 0xC0, KvmClearDirtyLog)
KVM_RESET_DIRTY_RINGS = io(KVMIO, 0xC7)

#: ioctl number -> name, for the ioctl log.
IOCTL_NAMES = {
    value: name
    for name, value in globals().items()
    if name.startswith("KVM_") and isinstance(value, int) and name not in ("KVM_API_VERSION",) and value > 0xFFF
}

# -- flags and capabilities --------------------------------------------------------------------

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168
KVM_CAP_DIRTY_LOG_RING = 192
KVM_CAP_DIRTY_LOG_RING_ACQ_REL = 223
KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP = 225
KVM_CAP_ARM_VM_IPA_SIZE = 165
KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE = 228
KVM_CAP_ARM_SUPPORTED_BLOCK_SIZES = 229

KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1 << 0
KVM_DIRTY_LOG_INITIALLY_SET = 1 << 1

KVM_DIRTY_GFN_F_DIRTY = 1 << 0
KVM_DIRTY_GFN_F_RESET = 1 << 1
#: The dirty ring is mmap()ed from the vCPU fd at this many pages.
KVM_DIRTY_LOG_PAGE_OFFSET = 64

# -- struct kvm_run ----------------------------------------------------------------------------

KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_DIRTY_RING_FULL = 31

KVM_EXIT_NAMES = {
    value: name[len("KVM_EXIT_") :]
    for name, value in globals().items()
    if name.startswith("KVM_EXIT_") and isinstance(value, int)
}

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

#: ``struct kvm_run``: __u32 exit_reason after two u8 flags and six bytes of padding.
RUN_EXIT_REASON_OFFSET = 8
#: ``struct kvm_run``: the exit-reason union starts after cr8 and apic_base.
RUN_UNION_OFFSET = 32


class RunIo(ctypes.Structure):
    """The ``io`` member of the ``struct kvm_run`` union (KVM_EXIT_IO); data lives at data_offset."""

    _fields_ = [
        ("direction", ctypes.c_uint8),
        ("size", ctypes.c_uint8),
        ("port", ctypes.c_uint16),
        ("count", ctypes.c_uint32),
        ("data_offset", ctypes.c_uint64),
    ]
