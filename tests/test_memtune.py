"""The one memory-tuning recipe of the recorder and the analysis commands (tracekit.memtune)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import ctypes, json
import numpy as np
from tracekit.memtune import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
keep_freed_memory()
before = libc.mallinfo2()
big = np.ones(8 << 20, np.int64)  # 64 MiB: a fresh mapping of its own under glibc's defaults
held = libc.mallinfo2()
del big
freed = libc.mallinfo2()
core = getattr(np, "_core", None) or np.core
print(json.dumps({"mapped_blocks": held.hblks - before.hblks, "heap_in_use": held.uordblks - before.uordblks, "heap_free_after": freed.fordblks,
                  "numpy_hugepage_advice": bool(core.multiarray._set_madvise_hugepage(True))}))
"""


def test_large_arrays_come_from_the_heap_and_stay_there_and_numpy_advises_no_huge_pages():
    try:
        import ctypes

        ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        pytest.skip("not glibc 2.33 or later (no mallinfo2): the recipe is a no-op here")
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    got = json.loads(out)
    assert got["mapped_blocks"] == 0 and got["heap_in_use"] >= 64 << 20  # from the heap, not a fresh mapping
    assert got["heap_free_after"] >= 64 << 20  # kept for the next array, not trimmed
    assert got["numpy_hugepage_advice"] is False
