"""Per-walk and per-fault arrays kept in a temporary file, so an analysis's memory does not grow with them.

:func:`full` and :class:`Growing` make arrays that move to an unlinked, preallocated temporary file once
larger than :data:`SPILL_BYTES`; :func:`trim` drops their resident pages between batches
(docs/analysis.md, "Performance").
"""

from __future__ import annotations

import mmap
import os
import tempfile
import time
import weakref
from typing import Any

import numpy as np

from tracekit.errors import AnalysisError

__all__ = ["SPILL_BYTES", "RESIDENT_BYTES", "COPY_ROWS", "SORT_ROWS", "full", "widened", "trim", "spilled",
           "sort_distinct", "Growing"]

#: Arrays of at least this many bytes go to a file (tests set 0: every array does).
SPILL_BYTES = 4 << 20
#: Rows copied at a time between arrays (widening, growing), with a :func:`trim` after each block.
COPY_ROWS = 1 << 20

#: Rows sorted at a time by :func:`sort_distinct` (8 MiB of int64).
SORT_ROWS = 1 << 20

#: Spilled pages the process may hold before :func:`trim` drops them (tests set 0: every call drops).
RESIDENT_BYTES = 32 << 20

_maps: weakref.WeakSet = weakref.WeakSet()  # the live mappings of spilled arrays, for trim()
_floor: int | None = None  # the resident file-backed bytes after the last drop
#: :func:`trim` reads the process's resident pages at most this often (a read of /proc costs ~20 us).
_CHECK_SECONDS = 0.002
_checked = 0.0  # when trim() last read them
_statm: tuple[int, int] | None = None  # (pid, descriptor of /proc/self/statm)


class _Map(mmap.mmap):
    """An mmap that :data:`_maps` can hold weakly (plain mmap objects take no weak references)."""


def _map_file(file: Any, nbytes: int) -> _Map:
    """A shared mapping of ``file``'s first ``nbytes`` (at least one page), the file grown to that size
    (zero-filled); the mapping keeps the file open (``mapping.file``), so the file can grow again."""
    size = max(nbytes, mmap.PAGESIZE)
    try:
        os.posix_fallocate(file.fileno(), 0, size)
    except OSError as error:
        raise AnalysisError(f"no room for {size / 2**20:,.0f} MB of analysis state in {tempfile.gettempdir()} "
                            f"(set TMPDIR to a larger file system): {error.strerror}") from None
    mapping = _Map(file.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    mapping.file = file
    _maps.add(mapping)
    return mapping


def _mapped(nbytes: int) -> _Map:
    """A shared mapping of ``nbytes`` (at least one page) of a fresh unlinked temporary file, zero-filled."""
    file = tempfile.TemporaryFile(prefix="tracekit-spill-")
    try:
        return _map_file(file, nbytes)
    except BaseException:
        file.close()
        raise


def _mapping_of(array: np.ndarray) -> _Map | None:
    """The mapping made by :func:`_mapped` that ``array`` (or what it views) lives in, None when in memory."""
    while isinstance(array, np.ndarray):
        array = array.base
    found = getattr(array, "obj", array)  # numpy holds a memoryview of the mapping
    return found if isinstance(found, _Map) else None


def full(n: int, value: int | bool, dtype: np.dtype | type) -> np.ndarray:
    """``n`` values ``value`` of ``dtype``: in memory below :data:`SPILL_BYTES`, else in a file."""
    dtype = np.dtype(dtype)
    nbytes = n * dtype.itemsize
    if nbytes < SPILL_BYTES or nbytes == 0:
        return np.full(n, value, dtype)
    array = np.frombuffer(_mapped(nbytes), dtype, count=n)
    if value:
        for start in range(0, n, COPY_ROWS):
            array[start:start + COPY_ROWS] = value
            trim()
    return array


def spilled(array: np.ndarray) -> bool:
    """True when ``array`` (or what it views) lives in a file made by :func:`full`."""
    return _mapping_of(array) is not None


def widened(array: np.ndarray, dtype: np.dtype | type, size: int | None = None, rows: int | None = None
            ) -> np.ndarray:
    """``array``'s values as ``dtype`` in a new array made by :func:`full` (of ``size`` values, default its
    length; zeros after the ``rows`` first values copied, default all), copied a block at a time."""
    out = full(len(array) if size is None else size, 0, dtype)
    end = len(array) if rows is None else rows
    for start in range(0, end, COPY_ROWS):
        out[start:min(start + COPY_ROWS, end)] = array[start:min(start + COPY_ROWS, end)]
        trim()
    return out


def _file_pages_bytes() -> int | None:
    """The process's resident file-backed and shared bytes (/proc/self/statm, kept open), None where unknown."""
    global _statm
    try:
        if _statm is None or _statm[0] != os.getpid():
            _statm = (os.getpid(), os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC))
        return int(os.pread(_statm[1], 256, 0).split()[2]) * mmap.PAGESIZE
    except (OSError, IndexError, ValueError):
        return None


def trim() -> None:
    """Drop every page of the spilled arrays from this process (their data stays in their files), once the
    process's file-backed pages grew by :data:`RESIDENT_BYTES` since the last drop (cheap to call often)."""
    global _floor, _checked
    if not _maps:
        return
    if RESIDENT_BYTES and time.monotonic() - _checked < _CHECK_SECONDS:
        return  # checked a moment ago: the pages touched since are few
    _checked = time.monotonic()
    now = _file_pages_bytes()
    if now is not None and _floor is not None and now < _floor + RESIDENT_BYTES:
        return
    for mapping in list(_maps):
        try:
            mapping.madvise(mmap.MADV_DONTNEED)
        except (ValueError, OSError):  # closed meanwhile
            pass
    _floor = _file_pages_bytes()


def sort_distinct(values: np.ndarray) -> int:
    """Sort ``values`` in place and move its distinct values to its front; return their number.

    A block of :data:`SORT_ROWS` at a time: each block is sorted, then at each block boundary the values
    out of order across it (those of the sorted part above the block's first value and those of the
    block below the sorted part's last) are sorted together, which leaves the whole sorted up to the
    block's end. Memory: a block (and a copy of its distinct values) and the values out of order across a
    boundary (a few in nearly sorted data, as a recorder's per-thread times are: a CPU's batch flushed
    late; up to all of them in data in no order)."""
    n = len(values)
    for start in range(0, n, SORT_ROWS):
        values[start:start + SORT_ROWS].sort(kind="stable")  # timsort: runs, as nearly sorted data has
        trim()
    for boundary in range(SORT_ROWS, n, SORT_ROWS):
        if values[boundary - 1] <= values[boundary]:
            continue
        end = min(boundary + SORT_ROWS, n)
        low = int(np.searchsorted(values[:boundary], values[boundary], "right"))
        high = boundary + int(np.searchsorted(values[boundary:end], values[boundary - 1], "left"))
        values[low:high] = np.sort(values[low:high], kind="stable")
        trim()
    kept, last = 0, None
    for start in range(0, n, SORT_ROWS):
        block = values[start:start + SORT_ROWS]
        distinct = block[np.r_[last is None or block[0] != last, block[1:] != block[:-1]]]
        last = block[-1]
        values[kept:kept + len(distinct)] = distinct
        kept += len(distinct)
        trim()
    return kept


class Growing:
    """A vector of ``dtype`` appended to a block at a time (:meth:`append`); :meth:`values` is what was
    appended so far (a view: valid until the next append). Moved to a file at :data:`SPILL_BYTES`."""

    def __init__(self, dtype: np.dtype | type, capacity: int = 1024):
        self.dtype = np.dtype(dtype)
        self.size = 0
        self._data = np.empty(capacity, self.dtype)

    def append(self, values: np.ndarray) -> None:
        end = self.size + len(values)
        if end > len(self._data):
            size = max(end, 2 * len(self._data))
            mapping = _mapping_of(self._data)
            if mapping is not None:  # in a file: the file grows under a new mapping, nothing is copied
                self._data = np.frombuffer(_map_file(mapping.file, size * self.dtype.itemsize), self.dtype, count=size)
            else:
                bigger = full(size, 0, self.dtype)
                for start in range(0, self.size, COPY_ROWS):
                    stop = min(start + COPY_ROWS, self.size)
                    bigger[start:stop] = self._data[start:stop]
                    trim()
                self._data = bigger
        self._data[self.size:end] = values
        self.size = end

    def values(self) -> np.ndarray:
        return self._data[:self.size]

    def shrink(self, size: int) -> None:
        """Keep the first ``size`` values."""
        self.size = min(size, self.size)
