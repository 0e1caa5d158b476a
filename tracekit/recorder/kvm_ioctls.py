"""Names and numbers of KVM ioctl commands (x86_64 and arm64 share the asm-generic ``_IOC`` encoding).

The workload's commands come from :mod:`tracekit.workload.uapi`'s ctypes structs, the others from
``_IOC(dir, KVMIO, nr, size)`` with the sizes of the uAPI headers; the BPF programs get their
numbers from here too (:func:`ioctl_cflags`). An unknown KVM command is named
``KVM_IOC_<dir>_<nr>_<size>``, a non-KVM one ``IOC_0x<cmd>``.
"""

from __future__ import annotations

from tracekit.errors import UsageError
from tracekit.workload import uapi

__all__ = ["KVMIO", "KVM_IOCTLS", "IOCTL_NUMBERS", "ioc", "ioctl_name", "parse_ioctl", "ioctl_cflags",
           "KVM_RUN", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION", "KVM_SET_USER_MEMORY_REGION2",
           "KVM_GET_DIRTY_LOG", "KVM_CLEAR_DIRTY_LOG", "KVM_ENABLE_CAP"]

KVMIO = uapi.KVMIO
_NONE, _WRITE, _READ = uapi.IOC_NONE, uapi.IOC_WRITE, uapi.IOC_READ
_RW = _WRITE | _READ


def ioc(direction: int, nr: int, size: int = 0, type_: int = KVMIO) -> int:
    """``_IOC(dir, type, nr, size)`` of the asm-generic encoding (the workload's uAPI encoder)."""
    return uapi.ioc(direction, type_, nr, size)


# KVM commands the workload does not issue, named only: (name, direction, nr, size of the argument
# struct in include/uapi/linux/kvm.h). The workload's own commands come from its ctypes structs.
_NAMED_ONLY = (
    ("KVM_GET_MSR_INDEX_LIST", _RW, 0x02, 4), ("KVM_GET_EMULATED_CPUID", _RW, 0x09, 8),
    ("KVM_GET_MSR_FEATURE_INDEX_LIST", _RW, 0x0A, 4), ("KVM_SET_NR_MMU_PAGES", _NONE, 0x44, 0),
    ("KVM_SET_TSS_ADDR", _NONE, 0x47, 0), ("KVM_SET_IDENTITY_MAP_ADDR", _WRITE, 0x48, 8),
    ("KVM_SET_USER_MEMORY_REGION2", _WRITE, 0x49, 160), ("KVM_CREATE_IRQCHIP", _NONE, 0x60, 0),
    ("KVM_IRQ_LINE", _WRITE, 0x61, 8), ("KVM_GET_IRQCHIP", _RW, 0x62, 520), ("KVM_SET_IRQCHIP", _READ, 0x63, 520),
    ("KVM_IRQ_LINE_STATUS", _RW, 0x67, 8), ("KVM_REGISTER_COALESCED_MMIO", _WRITE, 0x67, 16),
    ("KVM_UNREGISTER_COALESCED_MMIO", _WRITE, 0x68, 16), ("KVM_SET_GSI_ROUTING", _WRITE, 0x6A, 8),
    ("KVM_IRQFD", _WRITE, 0x76, 32), ("KVM_CREATE_PIT2", _WRITE, 0x77, 64),
    ("KVM_SET_BOOT_CPU_ID", _NONE, 0x78, 0), ("KVM_IOEVENTFD", _WRITE, 0x79, 64),
    ("KVM_SET_CLOCK", _WRITE, 0x7B, 48), ("KVM_GET_CLOCK", _READ, 0x7C, 48), ("KVM_TRANSLATE", _RW, 0x85, 24),
    ("KVM_INTERRUPT", _WRITE, 0x86, 4), ("KVM_GET_MSRS", _RW, 0x88, 8), ("KVM_SET_MSRS", _WRITE, 0x89, 8),
    ("KVM_SET_CPUID", _WRITE, 0x8A, 8), ("KVM_SET_SIGNAL_MASK", _WRITE, 0x8B, 4),
    ("KVM_GET_FPU", _READ, 0x8C, 416), ("KVM_SET_FPU", _WRITE, 0x8D, 416), ("KVM_GET_LAPIC", _READ, 0x8E, 1024),
    ("KVM_SET_LAPIC", _WRITE, 0x8F, 1024), ("KVM_GET_CPUID2", _RW, 0x91, 8),
    ("KVM_SET_VAPIC_ADDR", _WRITE, 0x93, 8), ("KVM_GET_MP_STATE", _READ, 0x98, 4),
    ("KVM_SET_MP_STATE", _WRITE, 0x99, 4), ("KVM_NMI", _NONE, 0x9A, 0), ("KVM_SET_GUEST_DEBUG", _WRITE, 0x9B, 72),
    ("KVM_X86_SETUP_MCE", _WRITE, 0x9C, 8), ("KVM_X86_GET_MCE_CAP_SUPPORTED", _READ, 0x9D, 8),
    ("KVM_GET_PIT2", _READ, 0x9F, 112), ("KVM_GET_VCPU_EVENTS", _READ, 0x9F, 64),
    ("KVM_SET_PIT2", _WRITE, 0xA0, 112), ("KVM_SET_VCPU_EVENTS", _WRITE, 0xA0, 64),
    ("KVM_GET_DEBUGREGS", _READ, 0xA1, 128), ("KVM_SET_DEBUGREGS", _WRITE, 0xA2, 128),
    ("KVM_SET_TSC_KHZ", _NONE, 0xA2, 0), ("KVM_GET_TSC_KHZ", _NONE, 0xA3, 0), ("KVM_GET_XSAVE", _READ, 0xA4, 4096),
    ("KVM_SET_XSAVE", _WRITE, 0xA5, 4096), ("KVM_SIGNAL_MSI", _WRITE, 0xA5, 32),
    ("KVM_GET_XCRS", _READ, 0xA6, 392), ("KVM_SET_XCRS", _WRITE, 0xA7, 392), ("KVM_GET_ONE_REG", _WRITE, 0xAB, 16),
    ("KVM_KVMCLOCK_CTRL", _NONE, 0xAD, 0), ("KVM_GET_REG_LIST", _RW, 0xB0, 8),
    ("KVM_SET_PMU_EVENT_FILTER", _WRITE, 0xB2, 32), ("KVM_SMI", _NONE, 0xB7, 0),
    ("KVM_MEMORY_ENCRYPT_OP", _RW, 0xBA, 8), ("KVM_GET_NESTED_STATE", _RW, 0xBE, 128),
    ("KVM_SET_NESTED_STATE", _WRITE, 0xBF, 128), ("KVM_GET_SUPPORTED_HV_CPUID", _RW, 0xC1, 8),
    ("KVM_X86_SET_MSR_FILTER", _WRITE, 0xC6, 392), ("KVM_GET_STATS_FD", _NONE, 0xCE, 0),
    ("KVM_GET_XSAVE2", _READ, 0xCF, 4096), ("KVM_SET_MEMORY_ATTRIBUTES", _WRITE, 0xD2, 32),
    ("KVM_CREATE_GUEST_MEMFD", _RW, 0xD4, 64), ("KVM_PRE_FAULT_MEMORY", _RW, 0xD5, 64),
    ("KVM_CREATE_DEVICE", _RW, 0xE0, 12), ("KVM_SET_DEVICE_ATTR", _WRITE, 0xE1, 24),
    ("KVM_GET_DEVICE_ATTR", _WRITE, 0xE2, 24), ("KVM_HAS_DEVICE_ATTR", _WRITE, 0xE3, 24),
)

#: command number -> name
KVM_IOCTLS: dict[int, str] = {ioc(d, nr, size): name for name, d, nr, size in _NAMED_ONLY} | uapi.IOCTL_NAMES
#: name -> command number
IOCTL_NUMBERS: dict[str, int] = {name: cmd for cmd, name in KVM_IOCTLS.items()}

KVM_RUN = IOCTL_NUMBERS["KVM_RUN"]
KVM_CREATE_VCPU = IOCTL_NUMBERS["KVM_CREATE_VCPU"]
KVM_SET_USER_MEMORY_REGION = IOCTL_NUMBERS["KVM_SET_USER_MEMORY_REGION"]
KVM_SET_USER_MEMORY_REGION2 = IOCTL_NUMBERS["KVM_SET_USER_MEMORY_REGION2"]
KVM_GET_DIRTY_LOG = IOCTL_NUMBERS["KVM_GET_DIRTY_LOG"]
KVM_CLEAR_DIRTY_LOG = IOCTL_NUMBERS["KVM_CLEAR_DIRTY_LOG"]
KVM_ENABLE_CAP = IOCTL_NUMBERS["KVM_ENABLE_CAP"]

_DIRS = {_NONE: "IO", _WRITE: "IOW", _READ: "IOR", _RW: "IOWR"}


def ioctl_name(cmd: int) -> str:
    """Name of ioctl command ``cmd`` (see the module docstring)."""
    cmd &= 0xFFFFFFFF
    name = KVM_IOCTLS.get(cmd)
    if name:
        return name
    if (cmd >> 8) & 0xFF == KVMIO:
        return f"KVM_IOC_{_DIRS[cmd >> 30]}_{cmd & 0xFF:#04x}_{(cmd >> 16) & 0x3FFF}"
    return f"IOC_{cmd:#010x}"


def parse_ioctl(text: str) -> int:
    """A command from its name (``KVM_RUN``) or number (``0xae80``)."""
    text = text.strip()
    if text.upper() in IOCTL_NUMBERS:
        return IOCTL_NUMBERS[text.upper()]
    try:
        return int(text, 0) & 0xFFFFFFFF
    except ValueError:
        raise UsageError(f"unknown ioctl {text!r}: give a KVM_* name or a number") from None


def ioctl_cflags(*names: str) -> list[str]:
    """``-DTK_KVMIO`` and ``-DTK_<NAME>`` for the commands ``names``: a BPF program's numbers, from this table."""
    return [f"-DTK_KVMIO={KVMIO:#x}"] + [f"-DTK_{name}={IOCTL_NUMBERS[name]:#x}" for name in names]
