"""File-descriptor wrappers for ``/dev/kvm``, a VM and a vCPU, with an ioctl log.

:class:`Kvm`, :class:`Vm` and :class:`Vcpu` (its ``struct kvm_run`` mapped) are context managers,
safe to close twice. Every ioctl but ``KVM_RUN`` goes to the shared :class:`IoctlLog` with its
CLOCK_MONOTONIC entry and exit times, thread and result; ``KVM_RUN`` is only counted and timed per
vCPU. Failures raise :class:`tracekit.errors.WorkloadError` naming the ioctl and errno
(``KvmUnavailable`` when the device cannot be opened). Standard library only.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from dataclasses import dataclass
from typing import Optional

from tracekit.errors import WorkloadError
from tracekit.workload import libc, uapi

__all__ = ["IoctlRecord", "IoctlLog", "Kvm", "Vm", "Vcpu", "KvmUnavailable", "KVM_DEVICE"]

KVM_DEVICE = "/dev/kvm"


class KvmUnavailable(WorkloadError):
    """``/dev/kvm`` is missing, not accessible, or speaks another API version."""


@dataclass(frozen=True)
class IoctlRecord:
    """One ioctl the driver issued: name, request number, target fd kind and number, CLOCK_MONOTONIC
    entry/exit (ns), tid, result (``-errno`` on failure) and a summary of the argument."""

    name: str
    request: int
    target: str
    fd: int
    start_ns: int
    end_ns: int
    tid: int
    ret: int
    arg: Optional[dict] = None

    def as_dict(self) -> dict:
        record = {
            "name": self.name,
            "request": self.request,
            "target": self.target,
            "fd": self.fd,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "tid": self.tid,
            "ret": self.ret,
        }
        if self.arg:
            record["arg"] = self.arg
        return record


class IoctlLog:
    """Thread-safe append-only list of :class:`IoctlRecord`."""

    def __init__(self) -> None:
        self._records: list[IoctlRecord] = []
        self._lock = threading.Lock()

    def call(self, target: str, fd: int, request: int, arg=0, summary: Optional[dict] = None) -> int:
        """Issue ``ioctl(fd, request, arg)`` and log it; raise WorkloadError on failure."""
        name = uapi.IOCTL_NAMES.get(request, f"{request:#x}")
        tid = threading.get_native_id()
        start = time.monotonic_ns()
        try:
            ret = libc.ioctl(fd, request, arg)
        except OSError as error:
            end = time.monotonic_ns()
            self._append(IoctlRecord(name, request, target, fd, start, end, tid, -error.errno, summary))
            raise WorkloadError(
                f"{name} failed: {os.strerror(error.errno)} (errno {errno.errorcode.get(error.errno, error.errno)})"
            ) from None
        end = time.monotonic_ns()
        self._append(IoctlRecord(name, request, target, fd, start, end, tid, ret, summary))
        return ret

    def _append(self, record: IoctlRecord) -> None:
        with self._lock:
            self._records.append(record)

    def records(self) -> list[IoctlRecord]:
        with self._lock:
            return list(self._records)

    def total_ns(self, name: str) -> int:
        """Summed kernel time (exit - entry) of every logged ioctl called ``name``."""
        return sum(r.end_ns - r.start_ns for r in self.records() if r.name == name)


class _FileDescriptor:
    """An owned file descriptor ``fd`` (-1 once closed); a context manager that closes it."""

    fd = -1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Kvm(_FileDescriptor):
    """The ``/dev/kvm`` system file descriptor."""

    def __init__(self, log: Optional[IoctlLog] = None, device: str = KVM_DEVICE) -> None:
        self.log = log if log is not None else IoctlLog()
        if not os.path.exists(device):
            raise KvmUnavailable(
                f"{device} does not exist: this host has no KVM (load kvm-intel/kvm-amd or enable nested virtualisation)"
            )
        try:
            self.fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except PermissionError:
            raise KvmUnavailable(
                f"no permission to open {device}: run as root or join the group that owns it (usually 'kvm')"
            ) from None
        except OSError as error:
            raise KvmUnavailable(f"cannot open {device}: {error.strerror}") from None
        try:
            version = self.log.call("kvm", self.fd, uapi.KVM_GET_API_VERSION)
            if version != uapi.KVM_API_VERSION:
                raise KvmUnavailable(f"{device} speaks KVM API version {version}, expected {uapi.KVM_API_VERSION}")
            self.vcpu_mmap_size = self.log.call("kvm", self.fd, uapi.KVM_GET_VCPU_MMAP_SIZE)
        except BaseException:
            self.close()
            raise

    def check_extension(self, cap: int) -> int:
        """``KVM_CHECK_EXTENSION`` on the system fd: 0 when absent, else a capability-specific value."""
        return self.log.call("kvm", self.fd, uapi.KVM_CHECK_EXTENSION, cap, {"cap": cap})

    def create_vm(self, vm_type: int = 0) -> "Vm":
        fd = self.log.call("kvm", self.fd, uapi.KVM_CREATE_VM, vm_type, {"type": vm_type})
        return Vm(self, fd)


class Vm(_FileDescriptor):
    """A VM file descriptor (from ``KVM_CREATE_VM``)."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        self.kvm = kvm
        self.log = kvm.log
        self.fd = fd

    def _call(self, request: int, arg=0, summary: Optional[dict] = None) -> int:
        return self.log.call("vm", self.fd, request, arg, summary)

    def check_extension(self, cap: int) -> int:
        """``KVM_CHECK_EXTENSION`` on the VM fd (answers for this VM type)."""
        return self._call(uapi.KVM_CHECK_EXTENSION, cap, {"cap": cap})

    def enable_cap(self, cap: int, *args: int) -> None:
        request = uapi.KvmEnableCap(cap=cap)
        for i, value in enumerate(args):
            request.args[i] = value
        self._call(uapi.KVM_ENABLE_CAP, request, {"cap": cap, "args": list(args)})

    def set_user_memory_region(
        self, slot: int, flags: int, guest_phys_addr: int, size: int, userspace_addr: int
    ) -> None:
        region = uapi.KvmUserspaceMemoryRegion(
            slot=slot, flags=flags, guest_phys_addr=guest_phys_addr, memory_size=size, userspace_addr=userspace_addr
        )
        self._call(
            uapi.KVM_SET_USER_MEMORY_REGION,
            region,
            {"slot": slot, "flags": flags, "guest_phys_addr": guest_phys_addr, "memory_size": size},
        )

    def get_dirty_log(self, slot: int, bitmap_address: int) -> None:
        """``KVM_GET_DIRTY_LOG``: copy the slot's dirty bitmap to ``bitmap_address``."""
        self._call(uapi.KVM_GET_DIRTY_LOG, uapi.KvmDirtyLog(slot=slot, dirty_bitmap=bitmap_address), {"slot": slot})

    def clear_dirty_log(self, slot: int, first_page: int, num_pages: int, bitmap_address: int) -> None:
        """``KVM_CLEAR_DIRTY_LOG``: re-protect the pages whose bits are set in the bitmap."""
        request = uapi.KvmClearDirtyLog(
            slot=slot, num_pages=num_pages, first_page=first_page, dirty_bitmap=bitmap_address
        )
        self._call(uapi.KVM_CLEAR_DIRTY_LOG, request, {"slot": slot, "first_page": first_page, "num_pages": num_pages})

    def reset_dirty_rings(self) -> int:
        """``KVM_RESET_DIRTY_RINGS``: returns the number of entries reset."""
        return self._call(uapi.KVM_RESET_DIRTY_RINGS)

    def create_vcpu(self, index: int, ring_bytes: int = 0) -> "Vcpu":
        fd = self._call(uapi.KVM_CREATE_VCPU, index, {"index": index})
        return Vcpu(self, fd, index, ring_bytes)


class Vcpu(_FileDescriptor):
    """A vCPU file descriptor with its ``struct kvm_run`` (and dirty ring, if any) mapped."""

    def __init__(self, vm: Vm, fd: int, index: int, ring_bytes: int = 0) -> None:
        self.vm = vm
        self.log = vm.log
        self.fd = fd
        self.index = index
        self.run_count = 0
        self.run_ns = 0
        self.run_address = 0
        self.ring_address = 0
        self.ring_bytes = ring_bytes
        self._run_size = vm.kvm.vcpu_mmap_size
        try:
            self.run_address = libc.mmap(self._run_size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd, 0)
            if ring_bytes:
                self.ring_address = libc.mmap(
                    ring_bytes,
                    libc.PROT_READ | libc.PROT_WRITE,
                    libc.MAP_SHARED,
                    fd,
                    uapi.KVM_DIRTY_LOG_PAGE_OFFSET * os.sysconf("SC_PAGE_SIZE"),
                )
        except OSError as error:
            self.close()
            raise WorkloadError(f"cannot map vCPU {index}'s kvm_run or dirty ring: {error.strerror}") from None
        self._exit_reason = ctypes.c_uint32.from_address(self.run_address + uapi.RUN_EXIT_REASON_OFFSET)

    def call(self, request: int, arg=0, summary: Optional[dict] = None) -> int:
        """A logged vCPU ioctl (registers, init, ...)."""
        return self.log.call(f"vcpu{self.index}", self.fd, request, arg, summary)

    def run(self) -> int:
        """``KVM_RUN`` until an exit to user space; returns the exit reason (EINTR is retried)."""
        while True:
            start = time.monotonic_ns()
            try:
                libc.ioctl(self.fd, uapi.KVM_RUN, 0)
            except OSError as error:
                self.run_ns += time.monotonic_ns() - start
                self.run_count += 1
                if error.errno in (errno.EINTR, errno.EAGAIN):
                    continue
                raise WorkloadError(f"KVM_RUN of vCPU {self.index} failed: {os.strerror(error.errno)}") from None
            self.run_ns += time.monotonic_ns() - start
            self.run_count += 1
            return self._exit_reason.value

    def run_struct(self, struct_type: type, offset: int = uapi.RUN_UNION_OFFSET):
        """A ctypes view of part of ``struct kvm_run`` (the exit union by default)."""
        return struct_type.from_address(self.run_address + offset)

    def close(self) -> None:
        if self.ring_address:
            libc.munmap(self.ring_address, self.ring_bytes)
            self.ring_address = 0
        if self.run_address:
            libc.munmap(self.run_address, self._run_size)
            self.run_address = 0
        super().close()
