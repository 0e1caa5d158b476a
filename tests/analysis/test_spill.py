"""Per-walk arrays in files (:mod:`tracekit.analysis.spill`): their values survive :func:`spill.trim`, the
block-wise sort equals a whole sort on nearly sorted and unordered data, a full disk is one line, and an
analysis whose every per-walk array is spilled equals the golden copy made in memory."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracekit.analysis import spill
from tracekit.analysis.analyze import analysis_json, analyze_capture
from tracekit.capture import open_capture
from tracekit.errors import AnalysisError

from .conftest import SAMPLES

SAMPLE = SAMPLES / "x86-dirty-log-2m.tkcap"


def test_spilled_arrays_keep_their_values_when_their_pages_are_dropped():
    array = spill.full(10_000, 7, np.int32)
    assert spill.spilled(array) and spill.spilled(array[10:20])
    array[::3] = np.arange(len(array[::3]))
    spill.trim()
    expected = np.full(10_000, 7, np.int32)
    expected[::3] = np.arange(len(expected[::3]))
    assert np.array_equal(array, expected)
    wide = spill.widened(array, np.int64)
    spill.trim()
    assert wide.dtype == np.int64 and spill.spilled(wide) and np.array_equal(wide, expected)


@pytest.mark.in_memory
def test_small_arrays_stay_in_memory():
    assert not spill.spilled(spill.full(1000, 0, np.uint8))
    assert spill.spilled(spill.full(spill.SPILL_BYTES, 0, np.uint8))


def test_a_growing_vector_moves_to_a_file_and_keeps_what_was_appended():
    vector = spill.Growing(np.int64, capacity=4)
    parts = [np.arange(start, start + size) for start, size in ((0, 3), (3, 5), (8, 4000), (4008, 1))]
    for part in parts:
        vector.append(part)
        spill.trim()
    assert spill.spilled(vector.values()) and np.array_equal(vector.values(), np.arange(4009))


@given(st.lists(st.integers(-50, 50), max_size=300), st.integers(1, 40), st.booleans())
def test_the_blockwise_sort_equals_a_whole_sort(values, block, nearly_sorted):
    data = np.array(sorted(values) if nearly_sorted else values, np.int64)
    if nearly_sorted and len(data) > 2:  # a few values moved far: a late batch
        data[[0, len(data) // 2, -1]] = data[[-1, 0, len(data) // 2]]
    saved = spill.SORT_ROWS
    spill.SORT_ROWS = block
    try:
        work = spill.full(len(data), 0, np.int64)
        work[:] = data
        kept = spill.sort_distinct(work)
    finally:
        spill.SORT_ROWS = saved
    assert np.array_equal(work[:kept], np.unique(data))


def test_a_full_disk_is_one_line(monkeypatch):
    def full_disk(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spill.os, "posix_fallocate", full_disk)
    with pytest.raises(AnalysisError) as error:
        analyze_capture(open_capture(SAMPLE))
    assert "\n" not in str(error.value) and "No space left on device" in str(error.value)


def _document() -> str:
    return json.dumps(analysis_json(analyze_capture(open_capture(SAMPLE))), sort_keys=True, default=str)


def test_an_analysis_with_every_array_spilled_equals_one_in_memory(monkeypatch):
    made = []
    mapped = spill._mapped
    monkeypatch.setattr(spill, "_mapped", lambda nbytes: made.append(nbytes) or mapped(nbytes))
    spilled = _document()
    assert len(made) >= 6  # the id map, the group / shape / cause codes, model rows, the fault times
    monkeypatch.setattr(spill, "SPILL_BYTES", 1 << 40)
    made.clear()
    assert _document() == spilled and made == []
