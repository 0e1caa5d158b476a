"""ioctl numbers and structure layouts of tracekit.workload.uapi against KERNEL-FACTS §6 (no KVM needed).

The expected numbers are the ones compiled from the 6.1 UAPI headers (or computed there from the
asm-generic _IOC encoding); the sizes are ``sizeof`` of the C structures.
"""

from __future__ import annotations

import ctypes

import pytest

from tracekit.workload import uapi

# name -> value from KERNEL-FACTS §6.1 (HDR = compiled against linux/kvm.h).
IOCTLS = {
    "KVM_GET_API_VERSION": 0xAE00,
    "KVM_CREATE_VM": 0xAE01,
    "KVM_CHECK_EXTENSION": 0xAE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0xAE04,
    "KVM_CREATE_VCPU": 0xAE41,
    "KVM_GET_DIRTY_LOG": 0x4010AE42,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46,
    "KVM_RUN": 0xAE80,
    "KVM_ENABLE_CAP": 0x4068AEA3,
    "KVM_ARM_VCPU_INIT": 0x4020AEAE,
    "KVM_ARM_PREFERRED_TARGET": 0x8020AEAF,
    "KVM_CLEAR_DIRTY_LOG": 0xC018AEC0,
    "KVM_RESET_DIRTY_RINGS": 0xAEC7,
    # x86 register ioctls (arch/x86/include/uapi/asm/kvm.h sizes 144 and 312).
    "KVM_GET_REGS": 0x8090AE81,
    "KVM_SET_REGS": 0x4090AE82,
    "KVM_GET_SREGS": 0x8138AE83,
    "KVM_SET_SREGS": 0x4138AE84,
    "KVM_GET_SUPPORTED_CPUID": 0xC008AE05,
    "KVM_SET_CPUID2": 0x4008AE90,
}

SIZES = {
    "KvmUserspaceMemoryRegion": 32,
    "KvmDirtyLog": 16,
    "KvmClearDirtyLog": 24,
    "KvmEnableCap": 104,
    "KvmDirtyGfn": 16,
    "KvmVcpuInit": 32,
    "KvmOneReg": 16,
    "KvmRegs": 144,
    "KvmSegment": 24,
    "KvmDtable": 16,
    "KvmSregs": 312,
    "KvmCpuid2": 8,
    "KvmCpuidEntry2": 40,
    "RunIo": 16,
}


@pytest.mark.parametrize("name,value", sorted(IOCTLS.items()))
def test_ioctl_number(name, value):
    assert getattr(uapi, name) == value, f"{name} = {getattr(uapi, name):#x}, expected {value:#x}"


@pytest.mark.parametrize("name,size", sorted(SIZES.items()))
def test_struct_size(name, size):
    assert ctypes.sizeof(getattr(uapi, name)) == size


def test_ioc_encoding_fields():
    """_IOC packs dir<<30 | size<<16 | type<<8 | nr: 0xC018AEC0 = (3, 24, 0xAE, 0xC0)."""
    assert uapi.ioc(uapi.IOC_READ | uapi.IOC_WRITE, 0xAE, 0xC0, 24) == 0xC018AEC0
    assert uapi.io(0xAE, 0x80) == 0xAE80
    with pytest.raises(ValueError):
        uapi.ioc(uapi.IOC_WRITE, 0xAE, 0, 1 << 14)


def test_field_offsets_match_c():
    """Offsets a C compiler gives these members (natural alignment, no packing)."""
    assert uapi.KvmClearDirtyLog.first_page.offset == 8
    assert uapi.KvmClearDirtyLog.dirty_bitmap.offset == 16
    assert uapi.KvmEnableCap.args.offset == 8
    assert uapi.KvmEnableCap.pad.offset == 40
    assert uapi.KvmSregs.gdt.offset == 192
    assert uapi.KvmSregs.cr0.offset == 224
    assert uapi.KvmSregs.efer.offset == 264
    assert uapi.KvmSregs.interrupt_bitmap.offset == 280
    assert uapi.KvmRegs.rip.offset == 128
    assert uapi.KvmDirtyGfn.offset.offset == 8


def test_capabilities_and_flags():
    assert uapi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 == 168
    assert uapi.KVM_CAP_DIRTY_LOG_RING == 192
    assert uapi.KVM_CAP_DIRTY_LOG_RING_ACQ_REL == 223
    assert uapi.KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE == 228
    assert (uapi.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, uapi.KVM_DIRTY_LOG_INITIALLY_SET) == (1, 2)
    assert (uapi.KVM_DIRTY_GFN_F_DIRTY, uapi.KVM_DIRTY_GFN_F_RESET) == (1, 2)
    assert uapi.KVM_DIRTY_LOG_PAGE_OFFSET == 64
    assert uapi.KVM_EXIT_DIRTY_RING_FULL == 31


def test_ioctl_names_are_unique_and_complete():
    assert uapi.IOCTL_NAMES[0x4010AE42] == "KVM_GET_DIRTY_LOG"
    assert set(IOCTLS) <= set(uapi.IOCTL_NAMES.values())
    assert len(set(uapi.IOCTL_NAMES.values())) == len(uapi.IOCTL_NAMES)
