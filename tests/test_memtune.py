"""The one memory-tuning recipe of the tracekit commands (tracekit.memtune), observed from outside numpy:
glibc's heap statistics and the kernel's flags on the array's mapping (``hg``: MADV_HUGEPAGE)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes, json, os, sys
from tracekit.memtune import import_numpy_without_huge_pages, keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

def vm_flags(address):
    with open("/proc/self/smaps") as smaps:
        inside = False
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                low, high = (int(x, 16) for x in head.split("-"))
                inside = low <= address < high
            elif inside and line.startswith("VmFlags:"):
                return line.split()[1:]

tuned = sys.argv[1] == "tuned"
imported = import_numpy_without_huge_pages() if tuned else None
if sys.argv[1] == "console":  # the console script's own start, as `tracekit --version` runs it
    from tracekit.__main__ import main
    sys.argv = ["tracekit", "--version"]
    try:
        main()
    except SystemExit:
        pass
import numpy as np
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if tuned:
    keep_freed_memory()
before = libc.mallinfo2()
big = np.ones(8 << 20, np.int64)  # 64 MiB: a fresh mapping of its own under glibc's defaults
held = libc.mallinfo2()
flags = vm_flags(big.ctypes.data + big.nbytes // 2)
del big
freed = libc.mallinfo2()
print(json.dumps({"mapped_blocks": held.hblks - before.hblks, "heap_in_use": held.uordblks - before.uordblks,
                  "heap_free_after": freed.fordblks, "huge_page_advice": "hg" in flags, "imported": imported,
                  "variable_left": os.environ.get("NUMPY_MADVISE_HUGEPAGE")}))
"""


def _probe(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.splitlines()[-1])  # the last line (the console script prints its version first)


def test_large_arrays_come_from_the_heap_and_stay_there_and_numpy_advises_no_huge_pages():
    try:
        import ctypes

        ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        pytest.skip("not glibc 2.33 or later (no mallinfo2): the recipe is a no-op here")
    default, tuned = _probe("default"), _probe("tuned")
    assert default["mapped_blocks"] == 1 and default["huge_page_advice"] is True  # what the recipe changes
    assert tuned["mapped_blocks"] == 0 and tuned["heap_in_use"] >= 64 << 20  # from the heap, not a fresh mapping
    assert tuned["heap_free_after"] >= 64 << 20  # kept for the next array, not trimmed
    assert tuned["huge_page_advice"] is False and tuned["imported"] is True
    assert tuned["variable_left"] is None  # children keep numpy's default


def test_numpy_imported_before_keeps_its_advice(monkeypatch):
    import numpy  # noqa: F401  (already imported by the test run: the call cannot take effect)

    from tracekit.memtune import import_numpy_without_huge_pages

    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    assert import_numpy_without_huge_pages() is False
    assert "NUMPY_MADVISE_HUGEPAGE" not in os.environ


def test_the_console_script_imports_numpy_without_huge_page_advice():
    console = _probe("console")
    assert console["huge_page_advice"] is False and console["variable_left"] is None
