"""Host memory that backs guest memory: anonymous, THP, hugetlb (2 MiB / 1 GiB) or shmem.

:func:`allocate` maps ``size`` bytes of a backing source named as KVM selftests' ``-s`` and returns a
:class:`Backing` to close (or use as a context manager); nothing is pre-faulted. It first checks the
host and raises a one-line :class:`tracekit.errors.WorkloadError` with the fix: hugetlb pages not
reserved (with the command; this module never reserves any), THP disabled, not enough memory, a size
that is not a multiple of the backing page size. Standard library only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tracekit.errors import WorkloadError
from tracekit.workload import libc

__all__ = [
    "BACKING_SOURCES",
    "Backing",
    "allocate",
    "backing_page_size",
    "hugetlb_pool",
    "check_host",
    "HUGEPAGES_SYSFS",
]

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

#: Backing source name -> host page size in bytes.
BACKING_SOURCES = {
    "anonymous": 4 * KIB,
    "anonymous_thp": 2 * MIB,
    "anonymous_hugetlb_2mb": 2 * MIB,
    "anonymous_hugetlb_1gb": 1 * GIB,
    "shmem": 4 * KIB,
}
HUGEPAGES_SYSFS = Path("/sys/kernel/mm/hugepages")
_THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def backing_page_size(source: str) -> int:
    """Host page size (bytes) of a backing source; WorkloadError for an unknown name."""
    try:
        return BACKING_SOURCES[source]
    except KeyError:
        raise WorkloadError(f"unknown backing source {source!r} (choose from {', '.join(BACKING_SOURCES)})") from None


def hugetlb_pool(page_size: int) -> tuple[int, int]:
    """(nr_hugepages, free_hugepages) of the hugetlb pool of ``page_size`` bytes; (0, 0) if absent."""
    directory = HUGEPAGES_SYSFS / f"hugepages-{page_size // KIB}kB"
    try:
        total = int((directory / "nr_hugepages").read_text())
        free = int((directory / "free_hugepages").read_text())
    except (OSError, ValueError):
        return 0, 0
    return total, free


def _mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * KIB
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62  # unknown: do not refuse


def _size_text(size: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


@dataclass
class Backing:
    """A mapping of host memory: ``address`` (host virtual), ``size`` and ``page_size`` in bytes."""

    source: str
    address: int
    size: int
    page_size: int

    def close(self) -> None:
        if self.address:
            libc.munmap(self.address, self.size)
            self.address = 0

    def __enter__(self) -> "Backing":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_host(source: str, size: int) -> None:
    """Raise WorkloadError (with the fix) unless this host can back ``size`` bytes with ``source``."""
    _check_host(source, size, backing_page_size(source))


def _check_host(source: str, size: int, page_size: int) -> None:
    if size <= 0:
        raise WorkloadError(f"guest memory size must be positive, got {size}")
    if size % page_size:
        raise WorkloadError(f"{source} needs a size that is a multiple of {_size_text(page_size)}, got {size} bytes")
    if source.startswith("anonymous_hugetlb"):
        needed = size // page_size
        total, free = hugetlb_pool(page_size)
        if free < needed:
            pool = HUGEPAGES_SYSFS / f"hugepages-{page_size // KIB}kB" / "nr_hugepages"
            raise WorkloadError(
                f"{source} needs {needed} free {_size_text(page_size)} hugetlb pages but {free} are free: "
                f"reserve them with 'echo {total + needed - free} > {pool}' (and give them back afterwards)"
            )
        return
    if source == "anonymous_thp":
        try:
            mode = _THP_ENABLED.read_text()
        except OSError:
            raise WorkloadError("anonymous_thp: this kernel has no transparent huge pages") from None
        if "[never]" in mode:
            raise WorkloadError(f"anonymous_thp: transparent huge pages are disabled (echo madvise > {_THP_ENABLED})")
    available = _mem_available()
    if size > available:
        raise WorkloadError(
            f"guest memory of {_size_text(size)} exceeds the {available // MIB} MiB this host has available"
        )


def allocate(source: str, size: int) -> Backing:
    """Map ``size`` bytes of backing ``source`` (see the module contract); WorkloadError on failure."""
    page_size = backing_page_size(source)
    _check_host(source, size, page_size)
    prot = libc.PROT_READ | libc.PROT_WRITE
    try:
        if source == "shmem":
            fd = os.memfd_create("tracekit-workload", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, size)
                address = libc.mmap(size, prot, libc.MAP_SHARED, fd, 0)
            finally:
                os.close(fd)
            return Backing(source, address, size, page_size)
        flags = libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE
        if source.startswith("anonymous_hugetlb"):
            flags |= libc.MAP_HUGETLB | ((page_size.bit_length() - 1) << libc.MAP_HUGE_SHIFT)
            return Backing(source, libc.mmap(size, prot, flags), size, page_size)
        if source == "anonymous_thp":
            # Over-map by one huge page and trim, so the region is 2 MiB aligned for THP.
            raw = libc.mmap(size + page_size, prot, flags)
            aligned = (raw + page_size - 1) & ~(page_size - 1)
            if aligned > raw:
                libc.munmap(raw, aligned - raw)
            tail = raw + size + page_size - (aligned + size)
            if tail:
                libc.munmap(aligned + size, tail)
            backing = Backing(source, aligned, size, page_size)
            try:
                libc.madvise(aligned, size, libc.MADV_HUGEPAGE)
            except OSError as error:
                backing.close()
                raise WorkloadError(f"anonymous_thp: madvise(MADV_HUGEPAGE) failed: {error.strerror}") from None
            return backing
        return Backing(source, libc.mmap(size, prot, flags), size, page_size)
    except OSError as error:
        raise WorkloadError(f"cannot map {_size_text(size)} of {source} memory: {error.strerror}") from None
