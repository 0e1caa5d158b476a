"""A minimal arm64 KVM VM for the lab scenarios (runs inside the emulated arm64 guest).

:class:`Arm64Vm` builds a VM with the workload's ioctl layer (:mod:`tracekit.workload.kvm`) and the arm64
backend's helpers (IPA size, eager-split chunk, manual dirty-log protect), one code and one data slot, and
vCPUs whose MMU is off running a store loop (``str x3, [x0]; add x0, x0, x2; cmp; b.lo``, then an MMIO
store outside every memslot that says "pass done"): every store is a stage-2 access at its IPA. ``log``
lists what the VMM did. Standard library only; a failed ioctl raises :class:`tracekit.errors.WorkloadError`,
an unexpected vCPU exit :class:`tracekit.errors.LabError`.
"""

from __future__ import annotations

import ctypes
import struct
import threading

from tracekit.errors import LabError
from tracekit.workload import libc, uapi
from tracekit.workload.backend_arm64 import PC_REG, Arm64Backend, core_reg_id, set_one_reg, vcpu_init
from tracekit.workload.kvm import IoctlLog, Kvm

__all__ = ["Arm64Vm", "STORE_LOOP", "CODE_IPA", "DATA_IPA", "MMIO_DONE_IPA"]

#: The store loop above, little-endian A64 encodings.
STORE_LOOP = struct.pack(
    "<6I",
    0xF9000003,  # str x3, [x0]
    0x8B020000,  # add x0, x0, x2
    0xEB01001F,  # cmp x0, x1   (subs xzr, x0, x1)
    0x54FFFFA3,  # b.lo -12     (cond LO=3, imm19=-3)
    0xF9000083,  # str x3, [x4]
    0x14000000,  # b .
)

CODE_IPA = 0x1000_0000
DATA_IPA = 0x4000_0000
MMIO_DONE_IPA = 0x0800_0000
_CODE_SIZE = 64 * 1024
_CODE_SLOT = 0
_DATA_SLOT = 1


class Arm64Vm:
    """One nested arm64 VM with a data slot of ``data_bytes`` at :data:`DATA_IPA`.

    ``backing`` is ``"thp"`` (anonymous + MADV_HUGEPAGE), ``"4k"`` (MADV_NOHUGEPAGE) or
    ``"hugetlb-2m"`` / ``"hugetlb-1g"`` (MAP_HUGETLB; the pool must hold enough pages).
    """

    def __init__(
        self,
        data_bytes: int,
        *,
        backing: str = "thp",
        eager_split_chunk: int = 0,
        manual_protect: bool = False,
        vcpus: int = 1,
    ):
        self.data_bytes = data_bytes
        self.backing = backing
        self.log: list[dict] = []
        #: Thread ids that ran a vCPU (so a trace can tell the VMM's threads from the rest).
        self.tids: set[int] = set()
        self._code = self.data = 0
        self._data_map = (0, 0)
        self.vcpus = []
        self.vm = None
        self.kvm = Kvm(IoctlLog())
        try:
            backend = Arm64Backend()
            if eager_split_chunk:
                backend.check_eager_split_chunk(self.kvm, eager_split_chunk)
            self.vm = self.kvm.create_vm(backend.vm_type(self.kvm))
            if eager_split_chunk:  # before the first memslot: KVM refuses the size afterwards
                backend.set_eager_split_chunk(self.vm, eager_split_chunk)
                cap = uapi.KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE
                self.log.append({"op": "enable_cap", "cap": cap, "arg0": eager_split_chunk})
            if manual_protect:
                flags = uapi.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | uapi.KVM_DIRTY_LOG_INITIALLY_SET
                self.vm.enable_cap(uapi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, flags)
                self.log.append({"op": "enable_cap", "cap": uapi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, "arg0": flags})
            self._code = libc.mmap(_CODE_SIZE, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)
            ctypes.memmove(self._code, STORE_LOOP, len(STORE_LOOP))
            self._set_slot(_CODE_SLOT, CODE_IPA, _CODE_SIZE, self._code, 0)
            self.data = self._map_data()
            self._set_slot(_DATA_SLOT, DATA_IPA, data_bytes, self.data, 0)
            for index in range(vcpus):
                vcpu = self.vm.create_vcpu(index)
                self.vcpus.append(vcpu)
                vcpu_init(vcpu)
        except BaseException:
            self.close()
            raise

    # -- setup ---------------------------------------------------------------------------------
    def _map_data(self) -> int:
        size = self.data_bytes
        prot = libc.PROT_READ | libc.PROT_WRITE
        flags = libc.MAP_PRIVATE | libc.MAP_ANONYMOUS
        if self.backing.startswith("hugetlb-"):
            shift = {"hugetlb-2m": 21, "hugetlb-1g": 30}[self.backing]
            start = libc.mmap(size, prot, flags | libc.MAP_HUGETLB | (shift << libc.MAP_HUGE_SHIFT))
            self._data_map = (start, size)
            return start
        # Over-allocate so the slot starts on a 1 GiB boundary of the host VA: THP then backs
        # every 2 MiB of it, and the stage-2 blocks line up with the IPA.
        align = 1 << 30
        raw = libc.mmap(size + align, prot, flags | libc.MAP_NORESERVE)
        self._data_map = (raw, size + align)
        start = (raw + align - 1) & ~(align - 1)
        advice = libc.MADV_HUGEPAGE if self.backing == "thp" else libc.MADV_NOHUGEPAGE
        libc.madvise(start, size, advice)
        return start

    def _set_slot(self, slot: int, ipa: int, size: int, host: int, flags: int) -> None:
        self.vm.set_user_memory_region(slot, flags, ipa, size, host)
        self.log.append({"op": "set_memory_region", "slot": slot, "flags": flags, "ipa": ipa, "size": size})

    def prefault_host(self, stride: int = 4096) -> None:
        """Write one byte per ``stride`` from the host side, so THP/hugetlb pages exist before the guest runs."""
        step = ctypes.c_uint8 * 1
        for offset in range(0, self.data_bytes, stride):
            step.from_address(self.data + offset)[0] = 1

    # -- dirty logging -------------------------------------------------------------------------
    def set_dirty_logging(self, enabled: bool) -> None:
        """KVM_SET_USER_MEMORY_REGION on the data slot with or without KVM_MEM_LOG_DIRTY_PAGES."""
        flags = uapi.KVM_MEM_LOG_DIRTY_PAGES if enabled else 0
        self._set_slot(_DATA_SLOT, DATA_IPA, self.data_bytes, self.data, flags)

    def _bitmap(self, pages: int) -> ctypes.Array:
        return (ctypes.c_uint64 * ((pages + 63) // 64))()

    def get_dirty_log(self) -> int:
        """KVM_GET_DIRTY_LOG on the data slot; returns the number of dirty pages."""
        bitmap = self._bitmap(self.data_bytes // 4096)
        self.vm.get_dirty_log(_DATA_SLOT, ctypes.addressof(bitmap))
        dirty = sum(bin(word).count("1") for word in bitmap)
        self.log.append({"op": "get_dirty_log", "dirty": dirty})
        return dirty

    def clear_dirty_log(self, first_page: int = 0, num_pages: int | None = None) -> None:
        """KVM_CLEAR_DIRTY_LOG of ``num_pages`` from ``first_page`` (all bits set: re-protect everything)."""
        pages = self.data_bytes // 4096 if num_pages is None else num_pages
        bitmap = self._bitmap(pages)
        for i in range(len(bitmap)):
            bitmap[i] = 0xFFFF_FFFF_FFFF_FFFF
        self.vm.clear_dirty_log(_DATA_SLOT, first_page, pages, ctypes.addressof(bitmap))
        self.log.append({"op": "clear_dirty_log", "first_page": first_page, "num_pages": pages})

    # -- running -------------------------------------------------------------------------------
    def touch(self, stride: int, *, vcpu: int = 0, start: int = 0, length: int | None = None) -> None:
        """Make vCPU ``vcpu`` store once every ``stride`` bytes of ``[start, start+length)`` of the slot."""
        end = self.data_bytes if length is None else start + length
        cpu = self.vcpus[vcpu]
        for reg, value in ((0, DATA_IPA + start), (1, DATA_IPA + end), (2, stride), (3, 0x5A5A_5A5A_5A5A_5A5A),
                           (4, MMIO_DONE_IPA), (PC_REG, CODE_IPA)):  # fmt: skip
            set_one_reg(cpu, core_reg_id(reg), value)
        self.tids.add(threading.get_native_id())
        reason = cpu.run()
        address = ctypes.c_uint64.from_address(cpu.run_address + uapi.RUN_UNION_OFFSET).value
        if reason != uapi.KVM_EXIT_MMIO or address != MMIO_DONE_IPA:
            name = uapi.KVM_EXIT_NAMES.get(reason, str(reason))
            raise LabError(f"nested arm64 vCPU {vcpu} stopped with exit {name}, not the end-of-pass MMIO store")
        self.log.append({"op": "touch", "vcpu": vcpu, "start": start, "end": end, "stride": stride})

    def touch_parallel(self, stride: int, *, together: bool = False) -> None:
        """Split the slot evenly between all vCPUs and run them at once (threads named tk-vcpu-N); ``together``:
        every vCPU stores over the whole slot, in the same order, so they meet in each block."""
        share = self.data_bytes // (1 if together else len(self.vcpus))
        errors: list[BaseException] = []

        def run(index: int) -> None:
            try:
                libc.set_thread_name(f"tk-vcpu-{index}")
                self.touch(stride, vcpu=index, start=0 if together else index * share, length=share)
            except BaseException as error:  # re-raised in the caller
                errors.append(error)

        threads = [threading.Thread(target=run, args=(i,), name=f"tk-vcpu-{i}") for i in range(len(self.vcpus))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Close the vCPUs, the VM and /dev/kvm, and unmap the memory; harmless to call twice."""
        for cpu in self.vcpus:
            cpu.close()
        self.vcpus = []
        for resource in (self.vm, self.kvm):
            if resource is not None:
                resource.close()
        self.vm = self.kvm = None
        for address, size in ((self._code, _CODE_SIZE), self._data_map):
            if address:
                libc.munmap(address, size)
        self._code, self._data_map = 0, (0, 0)
