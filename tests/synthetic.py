"""Synthetic captures for tests and benchmarks: x86 guest walks, lock waits and dirty-log ioctls.

:data:`SCHEMAS` are the capture's own schemas (lock, ioctl and mmu cut to the columns the tests fill).
:func:`walk_tables` builds model-consistent walks of one 4-level guest shaped like the recorder's (per-CPU
walk ids interleaved in time order, a fraction ``interleaved`` of concurrent walks' elements interleaved);
:func:`write_synthetic_capture` writes such a capture plus lock and ioctl rows chunk by chunk, in bounded
memory, and returns the number of events written.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from tracekit.capture import COMMON_FIELDS, CaptureWriter
from tracekit.capture.columns import SCHEMAS as CAPTURE_SCHEMAS
from tracekit.model.x86 import X86PageTables

__all__ = ["SCHEMAS", "guest_tables", "walk_tables", "write_synthetic_capture"]


def _cut(family: str, *names: str) -> pa.Schema:
    """The capture schema of ``family`` cut to the common columns and ``names`` (the columns the
    synthetic data fills; the analyses need no others)."""
    schema = CAPTURE_SCHEMAS[family]
    return pa.schema([schema.field(name) for name in [field.name for field in COMMON_FIELDS] + list(names)])


SCHEMAS = {
    "walk": CAPTURE_SCHEMAS["walk"],
    "walk_element": CAPTURE_SCHEMAS["walk_element"],
    "walk_error": CAPTURE_SCHEMAS["walk_error"],
    "lock": _cut("lock", "lock_addr", "flags", "wait_ns", "ret", "stack_id"),
    "ioctl": _cut("ioctl", "duration_ns", "fd", "cmd", "cmd_name", "ret", "slot", "flags", "memory_size"),
    "mmu": _cut("mmu", "event", "gfn", "level"),
}

GVA = 0xC000_0000
GPA = 1 << 32
TABLE_BASE = 0x100000
PID = 999


def guest_tables(size: int = 1 << 30) -> tuple[X86PageTables, dict]:
    """The model tables of the synthetic guest and its workload ``guest_paging`` record."""
    tables = X86PageTables(levels=4)
    tables.map(GVA, GPA, size, 2 << 20, user=True)
    root, pages = tables.serialize(TABLE_BASE)
    record = {"levels": 4, "page_size": 2 << 20, "root_gpa": root, "table_gpas": sorted(pages),
              "mappings": [{"role": "test", "gva": GVA, "gpa": GPA, "size": size, "page_size": 2 << 20}]}
    return tables, record


def walk_tables(n_walks: int, *, first_id: int = 0, vcpus: int = 2, cpus: int = 2, t0_ns: int = 10**9,
                period_ns: int = 1000, size: int = 1 << 30, interleaved: float = 0.001,
                seed: int = 1) -> dict[str, pa.Table]:
    """``walk`` and ``walk_element`` tables of ``n_walks`` model-consistent guest walks (walks
    ``first_id`` .. ``first_id + n_walks - 1`` of one capture, so chunks can be made separately)."""
    tables, _ = guest_tables(size)
    rng = np.random.default_rng(seed + first_id)
    n_huge = size >> 21
    huge = rng.integers(0, n_huge, n_walks)
    # The three PTEs of each 2 MiB page, from the model (one walk per distinct page index).
    l4 = np.empty(n_huge, np.uint64)
    l3 = np.empty(n_huge, np.uint64)
    l2 = np.empty(n_huge, np.uint64)
    for i in range(n_huge):
        steps = tables.walk(GVA + (i << 21)).levels
        l4[i], l3[i], l2[i] = steps[0].pte, steps[1].pte, steps[2].pte
    seq = np.arange(first_id, first_id + n_walks, dtype=np.int64)  # the walks' order in time
    ts = t0_ns + seq * period_ns
    cpu = (seq % cpus).astype(np.int32)
    ids = (cpu.astype(np.uint64) << np.uint64(48)) | (seq // cpus + 1).astype(np.uint64)
    tid = (1000 + seq % vcpus).astype(np.int32)
    addr = (GVA + (huge.astype(np.uint64) << np.uint64(21)) + rng.integers(0, 512, n_walks).astype(np.uint64) * 4096)
    common = {"ts_ns": ts, "cpu": cpu, "pid": np.full(n_walks, PID, np.int32), "tid": tid}
    walk = pa.table({**common, "walk_id": ids, "addr": addr.astype(np.uint64),
                     "pferr": np.full(n_walks, 7, np.uint32)}, schema=SCHEMAS["walk"])
    rep = np.repeat
    element_ts = (rep(ts, 3) + np.tile(np.arange(1, 4), n_walks)).reshape(n_walks, 3)
    # Concurrent pairs (walk a, then b on the other CPU): a's elements come after b started, so the
    # time-ordered element rows go a0 b0 a1 b1 a2 b2.
    pairs = np.flatnonzero(rng.random(n_walks // 2) < interleaved) * 2
    pairs = pairs[(pairs + 1 < n_walks) & (cpu[pairs] != cpu[np.minimum(pairs + 1, n_walks - 1)])]
    order = np.arange(3 * n_walks).reshape(n_walks, 3)
    if len(pairs):
        b_start = ts[pairs + 1]
        element_ts[pairs] = b_start[:, None] + np.array([1, 3, 5])
        element_ts[pairs + 1] = b_start[:, None] + np.array([2, 4, 6])
        a_rows, b_rows = order[pairs].copy(), order[pairs + 1].copy()
        order[pairs] = np.stack([a_rows[:, 0], b_rows[:, 0], a_rows[:, 1]], axis=1)
        order[pairs + 1] = np.stack([b_rows[:, 1], a_rows[:, 2], b_rows[:, 2]], axis=1)
    order = order.reshape(-1)
    element = pa.table({
        "ts_ns": element_ts.reshape(-1), "cpu": rep(cpu, 3),
        "pid": rep(common["pid"], 3), "tid": rep(tid, 3), "walk_id": rep(ids, 3),
        "index": np.tile(np.arange(3, dtype=np.uint8), n_walks),
        "level": np.tile(np.array([4, 3, 2], np.int8), n_walks),
        "pte": np.stack([l4[huge], l3[huge], l2[huge]], axis=1).reshape(-1),
    }, schema=SCHEMAS["walk_element"]).take(order)
    return {"walk": walk, "walk_element": element}


def _lock_table(n: int, t0_ns: int, span_ns: int, vcpus: int, rng: Any) -> pa.Table:
    ts = np.sort(rng.integers(t0_ns, t0_ns + span_ns, n)).astype(np.int64)
    tid = (1000 + rng.integers(0, vcpus + 1, n)).astype(np.int32)
    tid[tid == 1000 + vcpus] = PID
    addr = np.where(rng.random(n) < 0.7, 0xFFFF_8880_0000_1000, 0xFFFF_8880_0000_2000).astype(np.uint64)
    return pa.table({"ts_ns": ts, "cpu": np.zeros(n, np.int32), "pid": np.full(n, PID, np.int32), "tid": tid,
                     "lock_addr": addr, "flags": np.where(tid == PID, 5, 3).astype(np.uint32),
                     "wait_ns": rng.integers(100, 100_000, n).astype(np.int64), "ret": np.zeros(n, np.int32),
                     "stack_id": np.full(n, -1, np.int32)}, schema=SCHEMAS["lock"])


def _ioctl_table(n: int, t0_ns: int, span_ns: int, rng: Any) -> pa.Table:
    ts = np.sort(rng.integers(t0_ns, t0_ns + span_ns, n)).astype(np.int64)
    names = np.where(np.arange(n) % 2 == 0, "KVM_GET_DIRTY_LOG", "KVM_CLEAR_DIRTY_LOG")
    return pa.table({"ts_ns": ts, "cpu": np.zeros(n, np.int32), "pid": np.full(n, PID, np.int32),
                     "tid": np.full(n, PID, np.int32), "duration_ns": rng.integers(1000, 3_000_000, n).astype(np.int64),
                     "fd": np.full(n, 5, np.int32), "cmd": np.where(names == "KVM_GET_DIRTY_LOG", 0x4010AE42,
                                                                    0xC018AEC0).astype(np.uint32),
                     "cmd_name": pa.array(names).dictionary_encode(), "ret": np.zeros(n, np.int64),
                     "slot": np.ones(n, np.uint16), "flags": np.zeros(n, np.uint32),
                     "memory_size": np.zeros(n, np.uint64)}, schema=SCHEMAS["ioctl"])


def write_synthetic_capture(path: str | os.PathLike, n_walks: int, *, vcpus: int = 2, chunk: int = 2_000_000,
                            extra_rows: int = 10_000, seed: int = 1) -> int:
    """Write a synthetic capture of ``n_walks`` walks (4 events each) plus lock and ioctl rows."""
    _, paging = guest_tables()
    manifest = {"source": {"kind": "synthetic", "description": f"{n_walks} synthetic guest walks"},
                "target": {"pids": [PID], "threads": [{"tid": 1000 + v, "comm": f"tk-vcpu-{v}", "vcpu": v}
                                                      for v in range(vcpus)]},
                "workload": {"arch": "x86_64", "guest_paging": paging, "vcpus": []}}
    rng = np.random.default_rng(seed)
    period = 1000
    events = 0
    with CaptureWriter(path, manifest=manifest, segment_seconds=3600, segment_rows=chunk * 3) as writer:
        for family in ("walk", "walk_element", "lock", "ioctl"):
            writer.declare(family, SCHEMAS[family])
        for first in range(0, n_walks, chunk):
            part = walk_tables(min(chunk, n_walks - first), first_id=first, vcpus=vcpus, period_ns=period, seed=seed)
            for family, table in part.items():
                writer.append(family, table)
                events += table.num_rows
        span = max(n_walks * period, 1)
        writer.append("lock", _lock_table(extra_rows, 10**9, span, vcpus, rng))
        writer.append("ioctl", _ioctl_table(max(extra_rows // 100, 2), 10**9, span, rng))
        events += extra_rows + max(extra_rows // 100, 2)
    return events
