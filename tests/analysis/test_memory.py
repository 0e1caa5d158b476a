"""The analysis's memory does not grow with the number of segments, and grows with the capture only by the
narrow per-walk state: recorder-shaped captures with every analysed family (walks and elements, the mmu
fault path and split events, lock waits, ioctls) in many small segments, analysed under tracemalloc (numpy's
arrays are traced), with no timing involved."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pyarrow as pa
import pytest

from tracekit.analysis import spill, walkcause, walkgroups, walkstream
from tracekit.analysis.analyze import analyze_capture
from tracekit.analysis.splits import SPLIT_EVENT
from tests.synthetic import SCHEMAS, guest_tables, walk_tables
from tracekit.capture import CaptureWriter, open_capture

# Writes and analyses three captures of 20-80 k walks (about 20 s), with the default spill sizes (these
# captures' per-walk arrays stay in memory), then two of them with every per-walk array spilled.
pytestmark = [pytest.mark.slow, pytest.mark.in_memory]

MMU = SCHEMAS["mmu"]
#: Per walk of the captures, at most this many bytes more at the peak (the events themselves are about
#: 200 bytes per walk once decoded: four walk rows, two mmu rows).
PER_WALK_BYTES = 48


def _write(path, walks: int, segments: int) -> None:
    """``walks`` recorder-shaped walks (two CPUs, concurrent pairs interleaved) with their fault path
    (spte request and set, sharing a time) and a split event every 1000 walks, lock waits and ioctls, in
    ``segments`` segments per family."""
    _, paging = guest_tables(64 << 20)
    manifest = {"target": {"threads": [{"tid": 1000, "vcpu": 0}, {"tid": 1001, "vcpu": 1}]},
                "workload": {"arch": "x86_64", "guest_paging": paging, "vcpus": [],
                             "phases": [{"name": "dirty-memory", "iteration": 1, "start_ns": 10**9,
                                         "end_ns": 10**9 + walks * 500}]}}
    per = walks // segments
    with CaptureWriter(path, manifest=manifest, segment_rows=10**9, segment_seconds=3600) as writer:
        for family in ("walk", "walk_element", "lock", "ioctl"):
            writer.declare(family, SCHEMAS[family])
        writer.declare("mmu", MMU)
        for first in range(0, walks, per):
            part = walk_tables(per, first_id=first, size=64 << 20, interleaved=0.01)
            for family, table in part.items():
                writer.append(family, table)
            walk = part["walk"]
            n = walk.num_rows
            ts = np.repeat(walk.column("ts_ns").to_numpy() + 300, 2)
            names = np.tile(np.array(["kvm_mmu_spte_requested", "kvm_mmu_set_spte"], object), n)
            names[::2000] = SPLIT_EVENT
            writer.append("mmu", pa.table({
                "ts_ns": ts, "cpu": np.repeat(walk.column("cpu").to_numpy(), 2), "pid": np.full(2 * n, 999, np.int32),
                "tid": np.repeat(walk.column("tid").to_numpy(), 2), "event": pa.array(names).dictionary_encode(),
                "gfn": np.arange(2 * n, dtype=np.uint64), "level": np.ones(2 * n, np.int32)}, schema=MMU))
            k = max(n // 100, 2)
            stamp = np.sort(walk.column("ts_ns").to_numpy()[:k])
            writer.append("lock", pa.table({
                "ts_ns": stamp, "cpu": np.zeros(k, np.int32), "pid": np.full(k, 999, np.int32),
                "tid": np.full(k, 1000, np.int32), "lock_addr": np.full(k, 0xFFFF_8880_0000_1000, np.uint64),
                "flags": np.full(k, 5, np.uint32), "wait_ns": np.full(k, 1000, np.int64), "ret": np.zeros(k, np.int32),
                "stack_id": np.full(k, -1, np.int32)}, schema=SCHEMAS["lock"]))
            writer.append("ioctl", pa.table({
                "ts_ns": stamp[:2], "cpu": np.zeros(2, np.int32), "pid": np.full(2, 999, np.int32),
                "tid": np.full(2, 999, np.int32), "duration_ns": np.full(2, 5000, np.int64), "fd": np.full(2, 5, np.int32),
                "cmd": np.full(2, 0xC018AEC0, np.uint32), "cmd_name": pa.array(["KVM_CLEAR_DIRTY_LOG"] * 2).dictionary_encode(),
                "ret": np.zeros(2, np.int64), "slot": np.ones(2, np.uint32), "flags": np.zeros(2, np.uint32),
                "memory_size": np.zeros(2, np.uint64)}, schema=SCHEMAS["ioctl"]))
            writer.flush()


def _peak(path) -> int:
    """The traced peak of analysing ``path`` (bytes), the analysis checked to have streamed every walk."""
    cap = open_capture(path)
    tracemalloc.start()
    try:
        result = analyze_capture(cap)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.info["walk_path"] == "streamed"
    assert result.verdicts["crosscheck"]["match_rate"] == 1.0
    assert result.verdicts["walk_causes"]["fault"] == cap.rows("walk")
    events = cap.table("mmu", ["event"]).column(0).to_pylist()
    assert result.tables["split_calls"]["count"].sum() == events.count(SPLIT_EVENT) > 0
    return peak


@pytest.fixture(scope="module")
def peaks(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    cases = {"few segments": (20_000, 10), "many segments": (20_000, 80), "4x the walks": (80_000, 40)}
    out = {}
    for name, (walks, segments) in cases.items():
        _write(root / f"{segments}-{walks}.tkcap", walks, segments)
        out[name] = (walks, _peak(root / f"{segments}-{walks}.tkcap"))
    # Every per-walk array spilled, and the blocks walked a few thousand rows at a time (smaller than these
    # captures, as the default blocks are smaller than a long recording).
    blocks = ((spill, "SPILL_BYTES", 0), (spill, "SORT_ROWS", 4096), (spill, "COPY_ROWS", 4096),
              (walkstream, "_ID_CHUNK", 4096), (walkgroups, "_CHUNK", 4096), (walkcause, "_MARK_BLOCK", 4096))
    saved = [getattr(module, name) for module, name, _ in blocks]
    for module, name, value in blocks:
        setattr(module, name, value)
    try:
        for name, (walks, segments) in cases.items():
            if name != "many segments":
                out[f"{name}, spilled"] = (walks, _peak(root / f"{segments}-{walks}.tkcap"))
    finally:
        for (module, name, _), value in zip(blocks, saved):
            setattr(module, name, value)
    return out


def test_more_segments_take_no_more_memory(peaks):
    """The same rows in 8x the segments: the same peak within 10% (no per-segment state is kept)."""
    assert peaks["many segments"][1] <= 1.1 * peaks["few segments"][1]


def test_memory_grows_with_the_narrow_per_walk_state_only(peaks):
    """4x the walks (and 4x the segments): at most PER_WALK_BYTES more per added walk; a frame of a whole
    family, or the events' columns held, would take several times that."""
    (small, low), (large, high) = peaks["few segments"], peaks["4x the walks"]
    assert (high - low) / (large - small) < PER_WALK_BYTES, (low, high)


def test_spilled_per_walk_state_leaves_the_peak_flat(peaks):
    """With every per-walk and per-fault array in a file (:mod:`tracekit.analysis.spill`), 4x the walks
    take less than a byte more per added walk of traced memory: nothing per walk is held otherwise, only
    blocks of a bounded number of rows (made smaller than these captures here)."""
    (small, low), (large, high) = peaks["few segments, spilled"], peaks["4x the walks, spilled"]
    assert (high - low) / (large - small) < 1.0, (low, high)
