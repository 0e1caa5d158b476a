"""Memory tuning for tracekit's own processes, which allocate and free large arrays over and over.

:func:`keep_freed_memory` (called by the recorder session and by ``analyze``, ``report`` and ``compare``)
makes glibc keep freed blocks for the next array; :func:`import_numpy_without_huge_pages` (the console
script, before any other import) imports numpy with its huge-page advice off. Where first touches are
slow (a VM faults fresh 4 KiB pages at ~600 MB/s, huge pages at ~170 MB/s) both dominate the column work.
Children keep the defaults.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory", "import_numpy_without_huge_pages"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
#: numpy reads it once, at its import (numpy/__init__.py ``hugepage_setup``): 0 = no MADV_HUGEPAGE for large arrays
NUMPY_HUGEPAGE_VARIABLE = "NUMPY_MADVISE_HUGEPAGE"


def keep_freed_memory() -> None:
    """glibc keeps freed blocks in its heap (``M_MMAP_MAX`` 0: no fresh mapping per large block;
    ``M_TRIM_THRESHOLD`` at its maximum: nothing handed back). A no-op where glibc is absent."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def import_numpy_without_huge_pages() -> bool:
    """Import numpy with ``NUMPY_MADVISE_HUGEPAGE=0`` set for its import only (a user's own setting wins);
    False when numpy was already imported, which leaves its advice as it was."""
    if "numpy" in sys.modules:
        return False
    saved = os.environ.get(NUMPY_HUGEPAGE_VARIABLE)
    os.environ.setdefault(NUMPY_HUGEPAGE_VARIABLE, "0")
    try:
        import numpy  # noqa: F401  (the import is the point: numpy reads the variable now)
    finally:
        if saved is None:
            del os.environ[NUMPY_HUGEPAGE_VARIABLE]  # children keep numpy's default
    return True
