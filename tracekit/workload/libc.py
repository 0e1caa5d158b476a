"""Thin ctypes bindings of the few libc calls the workload needs.

``ioctl``, ``mmap``, ``munmap``, ``madvise`` and ``set_thread_name`` (``prctl(PR_SET_NAME)``) call
libc directly, release the GIL while in the kernel (ctypes does so for every foreign call, which
lets vCPU threads sit in ``KVM_RUN`` concurrently) and raise :class:`OSError` with the C errno on
failure. Addresses and lengths are plain ints (bytes). Standard library only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = [
    "PROT_READ",
    "PROT_WRITE",
    "MAP_SHARED",
    "MAP_PRIVATE",
    "MAP_ANONYMOUS",
    "MAP_NORESERVE",
    "MAP_HUGETLB",
    "MAP_HUGE_SHIFT",
    "MADV_HUGEPAGE",
    "MADV_NOHUGEPAGE",
    "THREAD_NAME_MAX",
    "ioctl",
    "mmap",
    "munmap",
    "madvise",
    "set_thread_name",
]

PROT_READ = 0x1
PROT_WRITE = 0x2
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_HUGETLB = 0x40000
#: MAP_HUGETLB page size is log2(size) << MAP_HUGE_SHIFT.
MAP_HUGE_SHIFT = 26
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
_PR_SET_NAME = 15
#: Linux thread names hold 15 characters plus the terminating NUL.
THREAD_NAME_MAX = 15
_MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)

_ioctl = _libc.ioctl
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_ioctl.restype = ctypes.c_int

_mmap = _libc.mmap
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_mmap.restype = ctypes.c_void_p

_munmap = _libc.munmap
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_munmap.restype = ctypes.c_int

_madvise = _libc.madvise
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_madvise.restype = ctypes.c_int

_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int


def _raise_errno(what: str) -> None:
    errno = ctypes.get_errno()
    raise OSError(errno, f"{what}: {os.strerror(errno)}")


def ioctl(fd: int, request: int, arg: int | ctypes.Structure | None = 0) -> int:
    """``ioctl(fd, request, arg)``; ``arg`` is an int (value or address) or a ctypes structure (by reference)."""
    if isinstance(arg, ctypes.Structure):
        pointer = ctypes.addressof(arg)
    else:
        pointer = arg or 0
    ret = _ioctl(fd, request, pointer)
    if ret < 0:
        _raise_errno(f"ioctl {request:#x}")
    return ret


def mmap(length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """``mmap(NULL, length, prot, flags, fd, offset)``; returns the address."""
    address = _mmap(None, length, prot, flags, fd, offset)
    if address is None or address == _MAP_FAILED:
        _raise_errno("mmap")
    return int(address)


def munmap(address: int, length: int) -> None:
    """``munmap(address, length)``."""
    if _munmap(address, length) < 0:
        _raise_errno("munmap")


def madvise(address: int, length: int, advice: int) -> None:
    """``madvise(address, length, advice)``."""
    if _madvise(address, length, advice) < 0:
        _raise_errno("madvise")


def set_thread_name(name: str) -> None:
    """Set the calling OS thread's name (``/proc/self/task/TID/comm``), at most 15 characters."""
    encoded = name.encode()
    if len(encoded) > THREAD_NAME_MAX:
        raise ValueError(f"thread name {name!r} is longer than {THREAD_NAME_MAX} bytes")
    if _prctl(_PR_SET_NAME, encoded, 0, 0, 0) < 0:
        _raise_errno("prctl(PR_SET_NAME)")
