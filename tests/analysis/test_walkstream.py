"""The streaming rebuild and cross-check agree with the in-memory ones, whatever the segment boundaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from tracekit.analysis.crosscheck import crosscheck_walks, model_from_layout
from tracekit.analysis.synthetic import GVA, SCHEMAS, guest_tables
from tracekit.analysis.walks import rebuild_walks
from tracekit.analysis.walkstream import HOLD_ROWS, stream_walks
from tracekit.capture import CaptureWriter, open_capture

_, PAGING = guest_tables(64 << 20)
MODEL = model_from_layout({"guest_paging": PAGING})


def _write(path, walks, elements, segment_rows):
    with CaptureWriter(path, segment_rows=segment_rows, segment_seconds=3600) as writer:
        for family, rows in (("walk", walks), ("walk_element", elements)):
            writer.declare(family, SCHEMAS[family])
            n = len(next(iter(rows.values())))
            common = {"ts_ns": rows.pop("ts_ns", list(range(n))), "cpu": [0] * n, "pid": [1] * n, "tid": [1] * n}
            writer.append(family, pa.table({**common, **rows}, schema=SCHEMAS[family]))


@given(st.lists(st.tuples(st.integers(0, 31), st.integers(0, 3), st.integers(-1, 2)), min_size=1, max_size=25),
       st.integers(1, 9), st.data())
def test_streaming_equals_in_memory(tmp_path_factory, specs, segment_rows, data):
    """Walks of random 2 MiB pages, truncated, lengthened or with a flipped PTE bit, some without elements,
    split into segments of a few rows: both paths give the same walks, verdict, per-level counts and
    mismatch list."""
    walks = {"walk_id": [], "addr": [], "pferr": [], "ts_ns": []}
    elements = {"walk_id": [], "index": [], "level": [], "pte": []}
    for wid, (page, change, extra) in enumerate(specs):
        addr = GVA + (page << 21) + 0x1000
        walks["walk_id"].append(wid), walks["addr"].append(addr), walks["pferr"].append(6), walks["ts_ns"].append(wid)
        steps = [(s.level, s.pte) for s in MODEL(addr).levels]
        if change == 1:
            steps = steps[: max(len(steps) + extra - 1, 0)]
        elif change == 2:
            steps = steps + [(1, 0x5027)] * max(extra, 0)
        elif change == 3:
            steps[data.draw(st.integers(0, len(steps) - 1))] = (steps[0][0], steps[0][1] ^ 0x2)
        for i, (level, pte) in enumerate(steps):
            elements["walk_id"].append(wid), elements["index"].append(i)
            elements["level"].append(level), elements["pte"].append(pte)
    if not elements["walk_id"]:
        return
    frame_w, frame_e = pd.DataFrame(walks), pd.DataFrame(elements)
    path = tmp_path_factory.mktemp("s") / "c.tkcap"
    _write(path, dict(walks), dict(elements), segment_rows)
    streamed, check = stream_walks(open_capture(path), MODEL)
    memory, steps = rebuild_walks(frame_w.assign(tid=1), frame_e)
    for column in ("depth", "root_level", "leaf_level", "level_path"):
        assert streamed[column].tolist() == memory[column].tolist(), column
    reference = crosscheck_walks(memory, steps, MODEL)
    assert check.summary == reference.summary
    pd.testing.assert_frame_equal(check.per_level, reference.per_level, check_dtype=False)
    pd.testing.assert_frame_equal(check.mismatches, reference.mismatches, check_dtype=False)


def test_out_of_order_ids_stream(tmp_path):
    """Walk ids in no order, elements out of index order: streamed like the in-memory path sorts them."""
    path = tmp_path / "c.tkcap"
    walks = {"walk_id": [7, 3, 5], "addr": [GVA] * 3, "pferr": [6] * 3}
    elements = {"walk_id": [3, 7, 3, 5], "index": [1, 0, 0, 0], "level": [3, 4, 4, 4], "pte": [0, 0, 0x21, 0]}
    _write(path, dict(walks), dict(elements), 10)
    streamed, _ = stream_walks(open_capture(path))
    memory, _ = rebuild_walks(pd.DataFrame(walks).assign(ts_ns=0, tid=1), pd.DataFrame(elements))
    assert streamed["level_path"].tolist() == memory["level_path"].tolist() == [4, 43, 4]
    assert streamed["depth"].tolist() == [1, 2, 1]


def test_far_apart_or_repeated_ids_fall_back(tmp_path):
    """One walk's elements in row groups further apart than the held rows, or a walk id twice: None, so
    the caller takes the in-memory path."""
    n, chunk = 3 * HOLD_ROWS, HOLD_ROWS // 2
    ids = np.arange(n, dtype=np.uint64)
    path = tmp_path / "far.tkcap"
    with CaptureWriter(path, segment_rows=chunk, segment_seconds=3600) as writer:
        for family in ("walk", "walk_element"):
            writer.declare(family, SCHEMAS[family])
        common = {"ts_ns": np.zeros(n, np.int64), "cpu": np.zeros(n, np.int32), "pid": np.ones(n, np.int32),
                  "tid": np.ones(n, np.int32)}
        writer.append("walk", pa.table({**common, "walk_id": ids, "addr": np.full(n, GVA, np.uint64),
                                        "pferr": np.full(n, 6, np.uint32)}, schema=SCHEMAS["walk"]))
        element = pa.table({**common, "walk_id": np.append(ids, 0), "ts_ns": np.zeros(n + 1, np.int64),
                            "cpu": np.zeros(n + 1, np.int32), "pid": np.ones(n + 1, np.int32),
                            "tid": np.ones(n + 1, np.int32), "index": np.append(np.zeros(n, np.uint8), 1),
                            "level": np.full(n + 1, 4, np.int8), "pte": np.zeros(n + 1, np.uint64)},
                           schema=SCHEMAS["walk_element"])
        for first in range(0, n + 1, chunk):
            writer.append("walk_element", element.slice(first, chunk))
    assert len(open_capture(path).segments("walk_element")) > 3
    assert stream_walks(open_capture(path)) is None
    path = tmp_path / "twice.tkcap"
    _write(path, {"walk_id": [1, 1], "addr": [GVA, GVA], "pferr": [6, 6]},
           {"walk_id": [1], "index": [0], "level": [4], "pte": [0]}, 10)
    assert stream_walks(open_capture(path)) is None


@given(st.lists(st.tuples(st.integers(0, 31), st.integers(0, 1), st.booleans()), min_size=2, max_size=30),
       st.integers(1, 9), st.randoms())
def test_interleaved_cpus_stream_per_cpu(tmp_path_factory, specs, segment_rows, rnd):
    """Walk ids interleave across two CPUs (each CPU's rows in order, as the recorder drains its buffers):
    the per-CPU streams give the in-memory results; a flipped PTE bit is found in both."""
    per_cpu = {0: [], 1: []}
    for wid, (page, cpu, flip) in enumerate(specs):
        addr = GVA + (page << 21)
        steps = [(s.level, s.pte ^ (0x2 if flip and i == 1 else 0)) for i, s in enumerate(MODEL(addr).levels)]
        per_cpu[cpu].append((wid, addr, cpu, steps))
    merged = []
    queues = [list(q) for q in per_cpu.values()]
    while any(queues):
        queue = rnd.choice([q for q in queues if q])
        merged.append(queue.pop(0))
    walks = {"walk_id": [m[0] for m in merged], "addr": [m[1] for m in merged], "pferr": [6] * len(merged),
             "ts_ns": list(range(len(merged)))}
    elements = {"walk_id": [], "index": [], "level": [], "pte": [], "cpu": []}
    for wid, _, cpu, steps in merged:
        for i, (level, pte) in enumerate(steps):
            for key, value in (("walk_id", wid), ("index", i), ("level", level), ("pte", pte), ("cpu", cpu)):
                elements[key].append(value)
    path = tmp_path_factory.mktemp("s") / "c.tkcap"
    cpus = elements.pop("cpu")
    with CaptureWriter(path, segment_rows=segment_rows, segment_seconds=3600) as writer:
        for family, rows, cpu in (("walk", walks, [m[2] for m in merged]), ("walk_element", elements, cpus)):
            writer.declare(family, SCHEMAS[family])
            n = len(cpu)
            common = {"ts_ns": rows.pop("ts_ns", list(range(n))), "cpu": cpu, "pid": [1] * n, "tid": [1] * n}
            writer.append(family, pa.table({**common, **rows}, schema=SCHEMAS[family]))
    result = stream_walks(open_capture(path), MODEL, limit=100)
    assert result is not None
    streamed, check = result
    memory, steps = rebuild_walks(pd.DataFrame(walks).assign(ts_ns=0, tid=1), pd.DataFrame(elements))
    for column in ("walk_id", "depth", "root_level", "leaf_level", "level_path"):
        assert streamed[column].tolist() == memory[column].tolist(), column
    reference = crosscheck_walks(memory, steps, MODEL, limit=100)
    assert check.summary == reference.summary
    assert check.summary["mismatched"] == sum(1 for s in specs if s[2])
    pd.testing.assert_frame_equal(check.mismatches, reference.mismatches, check_dtype=False)
