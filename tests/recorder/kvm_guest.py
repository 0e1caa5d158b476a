"""A tiny long-mode KVM guest at CPL3, driven through /dev/kvm, for the recorder's live tests.

Contract: :func:`run_guest` creates a VM with a 2 MiB-page identity map, a code slot and a data
slot of ``data_pages`` 4 KiB pages with dirty logging, and runs ``passes`` passes of a guest loop
that writes one byte in each data page, calling ``KVM_GET_DIRTY_LOG`` after each pass. It
returns a :class:`GuestLog`: every ioctl it issued (command, CLOCK_MONOTONIC entry/exit ns,
thread id, return value) and the dirty pages counted per pass. It raises ``OSError`` from the
ioctls and ``RuntimeError`` on an unexpected exit. Used as ground truth: the guest runs natively
at CPL3, so each first write to a page takes one shadow-MMU fault (one software page-table walk
of 3 levels: the PML4, PDPT and PD entries).
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import signal
import struct
import threading
import time
from dataclasses import dataclass, field

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_GET_DIRTY_LOG = 0x4010AE42
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_RUN = 0xAE80
KVM_GET_REGS = 0x8090AE81
KVM_SET_REGS = 0x4090AE82
KVM_GET_SREGS = 0x8138AE83
KVM_SET_SREGS = 0x4138AE84
KVM_MEM_LOG_DIRTY_PAGES = 1
KVM_EXIT_IO = 2

CODE_GPA = 0x10000
TABLES_GPA = 0x1000
DATA_GPA = 0x400000
IO_PORT = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


@dataclass
class IoctlRecord:
    cmd: int
    entry_ns: int
    exit_ns: int
    tid: int
    ret: int
    slot: int | None = None
    flags: int | None = None


@dataclass
class GuestLog:
    pid: int
    ioctls: list[IoctlRecord] = field(default_factory=list)
    dirty_per_pass: list[int] = field(default_factory=list)
    vcpu_tid: int = 0


class _Driver:
    def __init__(self, log: GuestLog):
        self.log = log

    def ioctl(self, fd: int, cmd: int, arg: int | ctypes.Array | None = 0, **decoded: int) -> int:
        if isinstance(arg, ctypes.Array):
            pointer = ctypes.cast(arg, ctypes.c_void_p).value
        else:
            pointer = arg
        entry = time.monotonic_ns()
        ret = _libc.ioctl(fd, cmd, pointer)
        exit_ = time.monotonic_ns()
        err = ctypes.get_errno()
        self.log.ioctls.append(IoctlRecord(cmd, entry, exit_, threading.get_native_id(), ret if ret >= 0 else -err, **decoded))
        if ret < 0:
            raise OSError(err, f"ioctl {cmd:#x}: {os.strerror(err)}")
        return ret


def _segment(selector: int, type_: int, dpl: int, *, code64: bool = False, system: bool = False) -> bytes:
    # struct kvm_segment: base, limit, selector, type, present, dpl, db, s, l, g, avl, unusable, pad
    return struct.pack(
        "<QIHBBBBBBBBBB", 0, 0xFFFFFFFF if not system else 0x67, selector, type_, 1, dpl,
        0 if (code64 or system) else 1, 0 if system else 1, 1 if code64 else 0, 0 if system else 1, 0, 0, 0,
    )


def _guest_code(data_pages: int) -> bytes:
    code = b"\x48\xbf" + struct.pack("<Q", DATA_GPA)          # mov rdi, DATA_GPA
    code += b"\x48\xb9" + struct.pack("<Q", data_pages)       # mov rcx, pages
    code += b"\xc6\x07\x01"                                   # loop: mov byte [rdi], 1
    code += b"\x48\x81\xc7\x00\x10\x00\x00"                   # add rdi, 4096
    code += b"\x48\xff\xc9"                                   # dec rcx
    code += b"\x75\xf1"                                       # jnz loop
    code += bytes([0xE6, IO_PORT])                            # out IO_PORT, al
    code += b"\xeb" + struct.pack("<b", -(len(code) + 2))     # jmp start
    return code


def run_guest(data_pages: int = 512, passes: int = 2) -> GuestLog:
    """Run the guest in a new thread of this process (named ``tk-vcpu-0``); return its log."""
    log = GuestLog(pid=os.getpid())
    errors: list[BaseException] = []

    def body() -> None:
        try:
            _run(log, data_pages, passes)
        except BaseException as error:  # reported to the caller below
            errors.append(error)

    thread = threading.Thread(target=body, name="tk-vcpu-0")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return log


def _run(log: GuestLog, data_pages: int, passes: int) -> None:
    libc_prctl = _libc.prctl
    libc_prctl(15, b"tk-vcpu-0", 0, 0, 0)  # PR_SET_NAME: the recorder finds vCPU threads by name
    log.vcpu_tid = threading.get_native_id()
    drv = _Driver(log)
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    fds = [kvm]
    maps: list[mmap.mmap] = []
    try:
        drv.ioctl(kvm, KVM_GET_API_VERSION)
        vm = drv.ioctl(kvm, KVM_CREATE_VM)
        fds.append(vm)
        low = mmap.mmap(-1, 0x200000)
        data = mmap.mmap(-1, data_pages * 4096)
        maps += [low, data]
        # Identity map of the first 1 GiB with 2 MiB user pages: PML4 -> PDPT -> PD.
        struct.pack_into("<Q", low, TABLES_GPA, (TABLES_GPA + 0x1000) | 0x7)
        struct.pack_into("<Q", low, TABLES_GPA + 0x1000, (TABLES_GPA + 0x2000) | 0x7)
        for i in range(512):
            struct.pack_into("<Q", low, TABLES_GPA + 0x2000 + 8 * i, (i << 21) | 0x87)
        code = _guest_code(data_pages)
        low[CODE_GPA:CODE_GPA + len(code)] = code
        for slot, (gpa, mem, flags) in enumerate(((0, low, 0), (DATA_GPA, data, KVM_MEM_LOG_DIRTY_PAGES))):
            addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
            region = (ctypes.c_uint64 * 4)(slot | (flags << 32), gpa, len(mem), addr)
            drv.ioctl(vm, KVM_SET_USER_MEMORY_REGION, region, slot=slot, flags=flags)
        run_size = drv.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE)
        vcpu = drv.ioctl(vm, KVM_CREATE_VCPU, 0)
        fds.append(vcpu)
        run = mmap.mmap(vcpu, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        maps.append(run)
        sregs = (ctypes.c_uint8 * 312)()
        drv.ioctl(vcpu, KVM_GET_SREGS, sregs)
        raw = bytearray(sregs)
        code_seg = _segment(0x1B, 11, 3, code64=True)
        data_seg = _segment(0x23, 3, 3)
        for index, seg in enumerate((code_seg, data_seg, data_seg, data_seg, data_seg, data_seg)):
            raw[24 * index:24 * index + 24] = seg  # cs ds es fs gs ss
        raw[24 * 6:24 * 7] = _segment(0x28, 11, 0, system=True)  # tr: busy 64-bit TSS
        struct.pack_into("<QQQQQQ", raw, 224, 0x80050033, 0, TABLES_GPA, 0x20, 0, 0x500)  # cr0 cr2 cr3 cr4 cr8 efer
        ctypes.memmove(sregs, bytes(raw), 312)
        drv.ioctl(vcpu, KVM_SET_SREGS, sregs)
        regs = (ctypes.c_uint64 * 18)()
        regs[6] = 0x1FF000      # rsp
        regs[16] = CODE_GPA     # rip
        regs[17] = 0x3002       # rflags: IOPL=3 so that `out` exits to us
        drv.ioctl(vcpu, KVM_SET_REGS, regs)
        bitmap = (ctypes.c_uint64 * ((data_pages + 63) // 64))()
        dirty_log = (ctypes.c_uint64 * 2)(1, ctypes.addressof(bitmap))
        for _ in range(passes):
            drv.ioctl(vcpu, KVM_RUN)
            reason = struct.unpack_from("<I", run, 8)[0]
            if reason != KVM_EXIT_IO:
                raise RuntimeError(f"guest exit reason {reason}, expected KVM_EXIT_IO")
            drv.ioctl(vm, KVM_GET_DIRTY_LOG, dirty_log, slot=1)
            log.dirty_per_pass.append(sum(bin(word).count("1") for word in bitmap))
    finally:
        for mapping in maps:
            try:
                mapping.close()
            except BufferError:
                pass
        for fd in reversed(fds):
            os.close(fd)


KVM_CREATE_IRQCHIP = 0xAE60
HALT_GPA = 0x1000


def halt_in_kvm_run() -> None:
    """A vCPU that sleeps inside KVM_RUN until this process is killed: a real-mode guest (run by KVM's
    emulator) executes ``cli; hlt``, and with the in-kernel irqchip the halt blocks in the kernel instead
    of exiting to us. Prints ``ready <vcpu fd> <vcpu tid>`` just before entering KVM_RUN; SIGUSR1 makes
    KVM_RUN return EINTR and the thread enter it again."""
    drv = _Driver(GuestLog(pid=os.getpid()))
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = drv.ioctl(kvm, KVM_CREATE_VM)
    drv.ioctl(vm, KVM_CREATE_IRQCHIP)
    memory = mmap.mmap(-1, 0x10000)
    memory[HALT_GPA:HALT_GPA + 4] = b"\xfa\xf4\xeb\xfd"  # cli; hlt; jmp back to the hlt
    region = (ctypes.c_uint64 * 4)(0, 0, len(memory), ctypes.addressof(ctypes.c_char.from_buffer(memory)))
    drv.ioctl(vm, KVM_SET_USER_MEMORY_REGION, region)
    vcpu = drv.ioctl(vm, KVM_CREATE_VCPU, 0)
    sregs = (ctypes.c_uint8 * 312)()
    drv.ioctl(vcpu, KVM_GET_SREGS, sregs)
    ctypes.memmove(sregs, struct.pack("<QIH", 0, 0xFFFF, 0), 14)  # cs: base 0, selector 0
    drv.ioctl(vcpu, KVM_SET_SREGS, sregs)
    regs = (ctypes.c_uint64 * 18)()
    regs[16], regs[17] = HALT_GPA, 0x2  # rip, rflags (IF clear: nothing wakes the halt)
    drv.ioctl(vcpu, KVM_SET_REGS, regs)
    _libc.prctl(15, b"tk-vcpu-0", 0, 0, 0)  # PR_SET_NAME
    signal.signal(signal.SIGUSR1, lambda *_: None)  # a kick: KVM_RUN returns EINTR, and is entered again
    print("ready", vcpu, threading.get_native_id(), flush=True)
    while True:
        try:
            drv.ioctl(vcpu, KVM_RUN)
        except InterruptedError:
            continue
        raise RuntimeError("the halted guest left KVM_RUN")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["halt"]:
        halt_in_kvm_run()
    else:
        result = run_guest(4096, 3)
        print(len(result.ioctls), result.dirty_per_pass)
