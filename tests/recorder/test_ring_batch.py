"""Batched ring records (k events per record) decoded without a kernel: synthetic rings and staging arrays."""

from __future__ import annotations

import mmap
import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit import schema as S
from tracekit.errors import RecorderError
from tracekit.recorder.ring_batch import (BATCH_EVENTS, RING_FAILURE_DTYPE, batch_dtype, failure_rows, is_batched,
                                     unbatch)
from tracekit.recorder.backend_bcc import BccBackend, map_declaration_order
from tracekit.recorder.tracepoint_families import MmuFamily, WalkFamily
from tracekit.recorder.probe_family import RecordOptions
from tracekit.recorder.ringbuf import RingReader, record_stride

PAGE = mmap.PAGESIZE
WALK_BATCH = batch_dtype(S.WALK_EVENT_DTYPE)


def walk_batch(first_seq: int, count: int, cpu: int = 0, tid: int = 7) -> np.ndarray:
    """One walk batch record: ``count`` events numbered from ``first_seq`` (ts = seq, walk_id = seq // 4,
    kinds start, element, element, element), slots past ``count`` filled with garbage."""
    rec = np.zeros(1, WALK_BATCH)
    rec["bh"]["count"] = count
    ev = rec["events"][0]
    seq = np.arange(first_seq, first_seq + BATCH_EVENTS)
    ev["hdr"]["ts_ns"], ev["hdr"]["tid"], ev["hdr"]["pid"], ev["hdr"]["cpu"] = seq, tid, 100, cpu
    ev["hdr"]["kind"] = np.where(seq % 4 == 0, S.TK_WALK_START, S.TK_WALK_ELEMENT)
    ev["walk_id"], ev["index"] = seq // 4 + 1, np.where(seq % 4 == 0, 0, seq % 4 - 1)
    ev["aux"] = np.where(seq % 4 == 0, 6, 5 - seq % 4)  # pferr, or levels 4, 3, 2
    ev["hdr"]["ts_ns"][count:] = 0xDEAD  # what an unused slot may hold: never decoded
    rec["events"][0] = ev
    return rec


def test_batch_layout_is_the_header_then_the_events():
    """16-byte header (count u32 @0, busy u8 @4, spare u8 @5, first_ts u64 @8), then 64 x 48-byte events."""
    assert WALK_BATCH.fields["events"][1] == 16
    assert WALK_BATCH.itemsize == 16 + 64 * 48 == 3088
    assert batch_dtype(S.MMU_EVENT_DTYPE).itemsize == 16 + 64 * S.MMU_EVENT_DTYPE.itemsize
    assert record_stride(WALK_BATCH.itemsize) == 3096  # 8-byte ring header + 3088
    with pytest.raises(RecorderError, match="power of two"):
        batch_dtype(S.WALK_EVENT_DTYPE, 48)


def test_unbatch_keeps_record_then_slot_order_and_drops_unused_slots():
    records = np.concatenate([walk_batch(0, 64), walk_batch(64, 5), walk_batch(69, 0), walk_batch(69, 3)])
    events = unbatch(records)
    assert list(events["hdr"]["ts_ns"]) == list(range(72))
    assert is_batched(records) and not is_batched(events)


def test_unbatch_of_full_batches_needs_no_mask():
    records = np.concatenate([walk_batch(0, 64), walk_batch(64, 64)])
    assert list(unbatch(records)["hdr"]["ts_ns"]) == list(range(128))
    assert len(unbatch(records[:0])) == 0


def test_a_count_beyond_the_batch_is_refused():
    bad = walk_batch(0, 64)
    bad["bh"]["count"] = 65
    with pytest.raises(RecorderError, match="65 events"):
        unbatch(bad)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, BATCH_EVENTS), min_size=1, max_size=8))
def test_unbatch_equals_a_per_record_reference(counts):
    starts = np.cumsum([0] + counts[:-1])
    records = np.concatenate([walk_batch(int(s), c) for s, c in zip(starts, counts)])
    expected = [int(r["events"][i]["hdr"]["ts_ns"]) for r in records for i in range(int(r["bh"]["count"]))]
    assert list(unbatch(records)["hdr"]["ts_ns"]) == expected == list(range(sum(counts)))


def test_walk_decode_of_batch_records_rebuilds_the_walks():
    """Two records of 64 + 8 events: 18 walks of 1 start + 3 elements (levels 4, 3, 2, indexes 0-2)."""
    records = np.concatenate([walk_batch(0, 64), walk_batch(64, 8)])
    out = WalkFamily().decode("walk_events", records)
    assert out["walk"].num_rows == 18 and out["walk_element"].num_rows == 54
    assert out["walk"].column("walk_id").to_pylist() == list(range(1, 19))
    elements = out["walk_element"].to_pandas()
    assert (elements.groupby("walk_id")["level"].apply(tuple) == (4, 3, 2)).all()
    assert (elements.groupby("walk_id")["index"].apply(tuple) == (0, 1, 2)).all()


def test_walk_family_streams_batches_of_the_configured_size():
    family = WalkFamily(RecordOptions(batch_events=8))
    [ring] = family.rings()
    assert ring.dtype == batch_dtype(S.WALK_EVENT_DTYPE, 8)
    assert "-DTK_BATCH_EVENTS=8" in family.cflags([], 0)
    assert family.staging_maps() == {"walk_staging": "walk_events"}
    assert MmuFamily().staging_maps() == {"mmu_staging": "mmu_events"}


class FakeRing:
    """A BPF ring-buffer mapping (consumer page, producer page, data twice) holding batch records."""

    def __init__(self, data_size: int):
        self.size = data_size
        self.fd = os.memfd_create("fake-batch-ring")
        os.ftruncate(self.fd, 2 * PAGE + 2 * data_size)
        self.map = mmap.mmap(self.fd, 2 * PAGE + 2 * data_size)
        self.producer = 0

    def put(self, record: np.ndarray) -> None:
        blob = struct.pack("<II", record.dtype.itemsize, 0) + record.tobytes()
        blob += bytes(record_stride(record.dtype.itemsize) - len(blob))
        offset = self.producer & (self.size - 1)
        for copy in (0, self.size):
            start = 2 * PAGE + copy + offset
            end = min(start + len(blob), 2 * PAGE + 2 * self.size)
            self.map[start:end] = blob[:end - start]
        if offset + len(blob) > self.size:
            over = offset + len(blob) - self.size
            self.map[2 * PAGE:2 * PAGE + over] = blob[len(blob) - over:]
        self.producer += len(blob)
        struct.pack_into("<Q", self.map, PAGE, self.producer)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


def test_ring_of_batch_records_decodes_in_one_drain_across_the_wrap():
    """A 16 KiB ring holds 5 batch records of 3096 bytes; the 6th and 7th wrap around the end."""
    ring = FakeRing(4 * PAGE)
    try:
        with RingReader(ring.fd, ring.size, WALK_BATCH) as reader:
            for k in range(5):
                ring.put(walk_batch(64 * k, 64))
            assert len(unbatch(reader.drain())) == 320
            ring.put(walk_batch(320, 64))
            ring.put(walk_batch(384, 10))
            events = unbatch(reader.drain())
            assert list(events["hdr"]["ts_ns"]) == list(range(320, 394))
    finally:
        ring.close()


class _Leaf(bytes):
    """What bytes() of a bcc ctypes leaf gives: the value's raw bytes."""


class _PerCpuTable:
    """bcc's per-CPU array as BccBackend.staged reads it: len() entries, getvalue(Key(i)) -> per-CPU leaves."""

    def __init__(self, values: list[list[np.ndarray]]):
        self.values = values  # [index][cpu] -> one batch record

    def __len__(self) -> int:
        return len(self.values)

    def Key(self, index: int) -> int:  # noqa: N802 (bcc's spelling)
        return index

    def getvalue(self, index: int) -> list[_Leaf]:
        return [_Leaf(v.tobytes()) for v in self.values[index]]


def test_staged_partial_batches_of_every_cpu_are_decoded_cpu_by_cpu():
    """After detaching, CPU 0 holds 3 staged events, CPU 1 holds 64 in its batch and 1 in its spare."""
    family = WalkFamily()
    staging = _PerCpuTable([[walk_batch(1000, 3, cpu=0), walk_batch(2000, 64, cpu=1)],
                            [walk_batch(0, 0, cpu=0), walk_batch(3000, 1, cpu=1)]])
    backend = BccBackend([(family, [])], target_tgid=100)
    backend.bpf = {b"walk_staging": staging}
    [(got_family, tables)] = backend.staged()
    assert got_family is family
    elements = tables["walk_element"].column("ts_ns").to_pylist()
    starts = tables["walk"].column("ts_ns").to_pylist()
    assert sorted(starts + elements) == [1000, 1001, 1002] + list(range(2000, 2064)) + [3000]
    assert tables["walk"].column("cpu").to_pylist()[0] == 0
    backend.bpf = None  # nothing to free


def test_fake_map_numbers_follow_declaration_order():
    text = ("BPF_RINGBUF_OUTPUT(walk_events, 8);\n  BPF_PERCPU_ARRAY(walk_lost, __u64, 3);\n"
            "/* BPF_HASH(not_a_map, u32, u32) in a comment line is not at a line start */\n"
            " * BPF_ARRAY(nor_this, u64, 1);\nBPF_HASH(walk_state_by_tid, __u32, struct s, 16);\n"
            "BPF_RINGBUF_OUTPUT(mmu_events, 8);\n")
    assert map_declaration_order(text) == ["walk_events", "walk_lost", "walk_state_by_tid", "mmu_events"]
    backend = BccBackend([(WalkFamily(), []), (MmuFamily(), [])], target_tgid=1)
    flags = backend.cflags()
    order = map_declaration_order(backend.program_text())
    assert order[:2] == ["tk_window", "walk_events"] and "-DTK_FAKE_FD_walk_events=-2" in flags  # the window first
    assert f"-DTK_FAKE_FD_mmu_events=-{order.index('mmu_events') + 1}" in flags
    assert flags.count("-DTK_BATCH_EVENTS=64") == 1
    for family in ("walk", "mmu"):  # every map TK_BATCHING reaches by number (probes/tk_bpf.h TK_MAP)
        for suffix in ("events", "lost", "staging", "failures", "failure_count"):
            name = f"{family}_{suffix}"
            assert order.count(name) == 1 and f"-DTK_FAKE_FD_{name}=-{order.index(name) + 1}" in flags, name


def test_failure_rows_name_the_probe():
    rec = np.zeros(1, RING_FAILURE_DTYPE)
    rec["probe"], rec["events"], rec["ret"], rec["tid"], rec["nested"] = 1, 64, -11, 4242, 1
    rec["ring_size"], rec["avail_data"] = 4096, 3096
    [row] = failure_rows(rec, WalkFamily.tracepoints)
    assert row["probe"] == "kvmmmu:kvm_mmu_paging_element" and row["ret"] == -11
    assert row["tid"] == 4242 and row["nested"] is True and row["avail_data"] == 3096
    assert RING_FAILURE_DTYPE.itemsize == 64


def test_unbatch_of_a_strided_selection():
    records = np.concatenate([walk_batch(64 * k, 64) for k in range(4)])[::2]
    assert list(unbatch(records)["hdr"]["ts_ns"]) == list(range(64)) + list(range(128, 192))
