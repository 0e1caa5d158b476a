"""Memory tuning for tracekit's own processes, which allocate and free large arrays over and over.

:func:`keep_freed_memory` (call from entry points only: the recorder and the analysis commands) makes
glibc keep freed blocks in its heap for the next array (``M_MMAP_MAX`` 0: no fresh mapping per large
block; ``M_TRIM_THRESHOLD`` at its maximum: nothing handed back) and stops numpy from advising huge
pages for large arrays (the switch ``NUMPY_MADVISE_HUGEPAGE=0`` sets at numpy's import). On hosts
where first touches are slow (a VM faults fresh 4 KiB pages at ~600 MB/s, huge pages at ~170 MB/s)
both dominate a recording's batch copies and an analysis's column work. Only this process changes:
children keep the defaults. A no-op where glibc is absent.
"""

from __future__ import annotations

import ctypes

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> None:
    """Keep freed blocks for reuse and no numpy huge-page advice (see the module docstring)."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass
    import numpy as np

    core = getattr(np, "_core", None) or getattr(np, "core", None)  # numpy 2 / numpy 1
    switch = getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)
    if switch is not None:  # numpy offers no public call after import, only the environment variable before
        switch(False)
