"""The streaming core's rebuild and cross-check agree with the in-memory reference (walkref), whatever the
segment boundaries, id order or interleaving; its pieces (model cache, id map, reader thread) checked on
their own."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracekit.analysis import walkstream
from tracekit.analysis.crosscheck import ModelCache, model_from_layout
from tests.synthetic import GVA, SCHEMAS, guest_tables, walk_tables, write_synthetic_capture
from tracekit.analysis.walkstream import HOLD_ROWS, RowMap, prefetch, stream_walks
from tracekit.capture import CaptureWriter, open_capture
from tracekit.errors import CaptureFormatError, ModelError
from tracekit.model.x86 import X86PageTables

from .conftest import SAMPLES
from .walkref import REBUILT_COLUMNS, TableCapture, core_walks, crosscheck_walks, rebuild_walks

_, PAGING = guest_tables(64 << 20)
MODEL = model_from_layout({"guest_paging": PAGING})


def _write(path, walks, elements, segment_rows):
    with CaptureWriter(path, segment_rows=segment_rows, segment_seconds=3600) as writer:
        for family, rows in (("walk", walks), ("walk_element", elements)):
            writer.declare(family, SCHEMAS[family])
            n = len(next(iter(rows.values())))
            common = {"ts_ns": rows.pop("ts_ns", list(range(n))), "cpu": [0] * n, "pid": [1] * n, "tid": [1] * n}
            writer.append(family, pa.table({**common, **rows}, schema=SCHEMAS[family]))


@given(st.lists(st.tuples(st.integers(0, 31), st.integers(0, 4), st.integers(-1, 2)), min_size=1, max_size=25),
       st.integers(1, 9), st.data())
def test_streaming_equals_in_memory(tmp_path_factory, specs, segment_rows, data):
    """Walks of random 2 MiB pages, truncated, lengthened, with a flipped PTE bit or retried from the root,
    some without elements, split into segments of a few rows: both paths give the same walks, verdict, per-level counts and
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
        elif change == 4:  # retried from the root after part of a pass, the last pass right or not
            last = [(lv, p ^ (0x2 if extra == 2 and i == 1 else 0)) for i, (lv, p) in enumerate(steps)]
            steps = steps[: extra + 2] + last
        for i, (level, pte) in enumerate(steps):
            elements["walk_id"].append(wid), elements["index"].append(i)
            elements["level"].append(level), elements["pte"].append(pte)
    if not elements["walk_id"]:
        return
    frame_w, frame_e = pd.DataFrame(walks), pd.DataFrame(elements)
    path = tmp_path_factory.mktemp("s") / "c.tkcap"
    _write(path, dict(walks), dict(elements), segment_rows)
    streamed, check = core_walks(open_capture(path), MODEL)
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
    streamed, _ = core_walks(open_capture(path))
    memory, _ = rebuild_walks(pd.DataFrame(walks).assign(ts_ns=0, tid=1), pd.DataFrame(elements))
    assert streamed["level_path"].tolist() == memory["level_path"].tolist() == [4, 43, 4]
    assert streamed["depth"].tolist() == [1, 2, 1]


def test_far_apart_elements_and_repeated_ids_stream(tmp_path, monkeypatch):
    """One walk's elements in row groups further apart than the held rows: a second pass sets that walk
    aside and gives the in-memory rebuild. A walk id twice: each of its rows gets its elements, as in
    the reference, and each is compared."""
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
    passes = []
    monkeypatch.setattr(walkstream, "_Rebuilder", _counting(walkstream._Rebuilder, passes))
    streamed, _ = core_walks(open_capture(path))
    memory, _ = rebuild_walks(element.to_pandas()[["walk_id"]].drop_duplicates().assign(
        ts_ns=0, tid=1, addr=np.uint64(GVA), pferr=np.uint32(6)), element.to_pandas())
    assert streamed["level_path"].tolist() == memory["level_path"].tolist()
    assert streamed["level_path"].tolist()[:2] == [44, 4] and len(passes) == 2
    assert passes[1].tolist() == [0]  # the second pass set walk 0 aside, and only it
    # The same rows, but every row between walk 0's two elements from another CPU (the recorder's late
    # flush of a CPU the vCPU thread left): walk 0 is held on its CPU, one pass.
    path = tmp_path / "late.tkcap"
    cpu = np.ones(n + 1, np.int32)
    cpu[[0, n]] = 0
    with CaptureWriter(path, segment_rows=chunk, segment_seconds=3600) as writer:
        for family in ("walk", "walk_element"):
            writer.declare(family, SCHEMAS[family])
        writer.append("walk", pa.table({**common, "walk_id": ids, "addr": np.full(n, GVA, np.uint64),
                                        "pferr": np.full(n, 6, np.uint32)}, schema=SCHEMAS["walk"]))
        late = element.set_column(1, element.schema.field(1), pa.array(cpu))
        for first in range(0, n + 1, chunk):
            writer.append("walk_element", late.slice(first, chunk))
    passes.clear()
    streamed, _ = core_walks(open_capture(path))
    assert streamed["level_path"].tolist() == memory["level_path"].tolist() and len(passes) == 1
    path = tmp_path / "twice.tkcap"
    walks = {"walk_id": [1, 2, 1, 3, 2], "addr": [GVA] * 5, "pferr": [6] * 5}
    elements = {"walk_id": [1, 2, 1, 3], "index": [0, 0, 1, 0], "level": [4, 4, 3, 4], "pte": [0x21, 0, 0, 0]}
    _write(path, dict(walks), dict(elements), 2)
    streamed, check = core_walks(open_capture(path), MODEL)
    memory, steps = rebuild_walks(pd.DataFrame(walks).assign(ts_ns=0, tid=1), pd.DataFrame(elements))
    assert streamed["level_path"].tolist() == memory["level_path"].tolist() == [43, 4, 43, 4, 4]
    assert streamed.attrs["orphan_elements"] == memory.attrs["orphan_elements"] == 0
    assert check.summary == crosscheck_walks(memory, steps, MODEL).summary and check.summary["compared"] == 5


def _counting(rebuilder, passes):
    """``rebuilder`` noting in ``passes`` the walks set aside by each pass it is made for."""
    class Counting(rebuilder):
        def __init__(self, state, row_map, aside=None):
            super().__init__(state, row_map, aside)
            passes.append(self.aside)
    return Counting


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
    streamed, check = core_walks(open_capture(path), MODEL, limit=100)
    memory, steps = rebuild_walks(pd.DataFrame(walks).assign(ts_ns=0, tid=1), pd.DataFrame(elements))
    for column in ("walk_id", "depth", "root_level", "leaf_level", "level_path"):
        assert streamed[column].tolist() == memory[column].tolist(), column
    reference = crosscheck_walks(memory, steps, MODEL, limit=100)
    assert check.summary == reference.summary
    assert check.summary["mismatched"] == sum(1 for s in specs if s[2])
    pd.testing.assert_frame_equal(check.mismatches, reference.mismatches, check_dtype=False)


# -- the pieces of the streaming path ------------------------------------------------------------------------

MIXED = X86PageTables(levels=4)
MIXED.map(GVA, 1 << 32, 4 << 20, 2 << 20, user=True)  # two 2 MiB pages
MIXED.map(GVA + (8 << 20), (1 << 32) + (8 << 20), 64 << 10, 4096, user=True)  # 16 small pages
MIXED.map(1 << 30, 2 << 30, 1 << 30, 1 << 30, user=True)  # one 1 GiB page


@given(st.lists(st.lists(st.sampled_from([GVA, GVA + (2 << 20), GVA + (8 << 20), GVA + (20 << 20), 1 << 30,
                                          0x7000_0000]).flatmap(lambda base: st.integers(base, base + (1 << 21) - 1)),
                         max_size=20), min_size=1, max_size=4))
def test_model_cache_equals_the_model_walk_by_walk(batches):
    """Addresses in 2 MiB, 4 KiB and 1 GiB pages and unmapped ones, looked up in several batches: the cached
    row of each address holds exactly the model's own walk of it (levels, PTEs, depth; 0 and a fault when
    the model faults), and rows handed out earlier stay valid as the cache grows."""
    cache = ModelCache(MIXED.walk)
    seen = []
    for addrs in batches:
        rows = cache.rows(np.array(addrs, np.uint64))
        seen.extend(zip(addrs, rows.tolist()))
    for addr, row in seen:
        try:
            expected = [(s.level, s.pte) for s in MIXED.walk(addr).levels]
        except ModelError:
            expected = []
            assert cache.faults
        depth = int(cache.depths[row])
        assert [(int(cache.levels[row, d]), int(cache.ptes[row, d])) for d in range(depth)] == expected
    assert len(cache) <= len({a >> 21 for a, _ in seen}) + len({a >> 12 for a, _ in seen})


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 50)), min_size=1, max_size=4), st.randoms(),
       st.integers(0, 4))
def test_row_map_finds_every_id(cpus, rnd, shape):
    """Per-CPU sequences (shuffled or not, or with gaps where walk events were lost), consecutive ids and
    arbitrary ids: every id maps to its row, unknown ids (a gap's too) to -1, rows back to their ids, and a
    repeated id to its first row, its later rows named by repeats()."""
    ids = [(cpu << 48) | (start + i) for cpu, count in dict(cpus).items() for start in [rnd.randint(1, 9)]
           for i in range(count)]
    gaps = []
    if shape == 1:
        rnd.shuffle(ids)
    elif shape == 2:
        ids = list(range(100, 100 + len(ids)))
    elif shape == 3:
        ids = rnd.sample(range(1 << 60), len(ids))
    elif shape == 4 and len(ids) > 2:  # every third id lost: the per-CPU table keeps its gaps
        gaps = ids[1::3]
        ids = [i for i in ids if i not in gaps]
    row_map = RowMap(np.array(ids, np.uint64))
    if shape in (0, 4):
        assert row_map._lookup is not None or row_map._first is not None  # a table or an offset, not sorted ids
    unknown = [max(ids) + 1, 0 if 0 not in ids else max(ids) + 2, (1 << 63) + 5, *gaps]
    assert row_map.rows(np.array([*ids, *unknown], np.uint64)).tolist() == [*range(len(ids)), *[-1] * len(unknown)]
    rows = np.array(rnd.sample(range(len(ids)), min(len(ids), 5)), np.int64)
    assert row_map.ids(rows).tolist() == [ids[r] for r in rows.tolist()]  # the inverse, for named walks
    again = RowMap(np.array([*ids, ids[0], ids[0]], np.uint64))  # an id thrice: its first row, and repeats
    assert again.rows(np.array([ids[0]], np.uint64)).tolist() == [0]
    wi, starts, counts = again.repeats(np.array([0]), np.array([7]), np.array([2]))
    assert list(zip(wi.tolist(), starts.tolist(), counts.tolist())) == [(0, 7, 2), (len(ids), 7, 2),
                                                                        (len(ids) + 1, 7, 2)]


@given(st.integers(20, 300), st.sampled_from([0.0, 0.3, 1.0]), st.integers(2, 3), st.integers(1, 200),
       st.integers(1, 50), st.sets(st.integers(0, 299), max_size=5))
def test_recorder_shaped_batches_equal_the_whole_table(n, interleaved, cpus, batch, hold, flipped):
    """Recorder-shaped walks (per-CPU ids in time order, concurrent pairs interleaving their elements),
    some with a flipped PTE bit, fed in batches of any size with any number of held rows: the same walks,
    verdict, per-level counts and mismatches as the in-memory rebuild and check of the whole table."""
    tables = walk_tables(n, cpus=cpus, interleaved=interleaved, size=64 << 20)
    walk, element = tables["walk"].to_pandas(), tables["walk_element"].to_pandas()
    bad_rows = np.array(sorted(i * 3 + 1 for i in flipped if i < n), np.int64)
    element.loc[bad_rows, "pte"] ^= 0x2
    cap = TableCapture({"walk": tables["walk"], "walk_element": pa.Table.from_pandas(
        element, schema=SCHEMAS["walk_element"], preserve_index=False)}, batch_rows=batch)
    saved = walkstream.HOLD_ROWS
    walkstream.HOLD_ROWS = hold
    try:  # a concurrent pair cut further apart than the held rows: a second pass
        streamed, check = core_walks(cap, MODEL, limit=3)
    finally:
        walkstream.HOLD_ROWS = saved
    memory, steps = rebuild_walks(walk, element)
    reference = crosscheck_walks(memory, steps, MODEL, limit=3)
    for column in ("walk_id", "depth", "root_level", "leaf_level", "level_path"):
        assert streamed[column].tolist() == memory[column].tolist(), column
    assert check.summary == reference.summary and (check.summary["mismatched"] > 0) == (len(bad_rows) > 0)
    pd.testing.assert_frame_equal(check.per_level, reference.per_level, check_dtype=False)
    pd.testing.assert_frame_equal(check.mismatches, reference.mismatches, check_dtype=False)


def test_capture_row_groups_equal_one_batch(tmp_path):
    """A capture read a row group at a time (Capture.iter_batches) gives what one batch of it gives."""
    path = tmp_path / "c.tkcap"
    write_synthetic_capture(path, 3000, chunk=700, extra_rows=10)
    cap = open_capture(path)
    model = model_from_layout(cap.manifest["workload"])
    streamed, check = core_walks(cap, model)
    whole = TableCapture({f: cap.table(f) for f in ("walk", "walk_element")}, cap.manifest)
    alone, check_alone = core_walks(whole, model)
    pd.testing.assert_frame_equal(streamed, alone)
    assert check.summary == check_alone.summary and check.summary["matched"] == 3000
    assert len(list(cap.iter_batches("walk_element", ["walk_id"], batch_rows=1000))) >= 9


def test_prefetch_hands_over_errors_and_stops():
    def failing():
        yield 1
        raise ValueError("bad segment")

    reader = prefetch(failing())
    assert next(reader) == 1
    with pytest.raises(ValueError, match="bad segment"):
        next(reader)
    endless = prefetch(iter(range(10**9)), depth=1)
    assert next(endless) == 0
    endless.close()
    assert not endless._thread.is_alive()


@pytest.mark.parametrize("sample", ["x86-dirty-log-2m.tkcap", "x86-dirty-log-4k.tkcap"])
def test_real_samples_stream_like_memory(sample):
    """The recorder's captures (two vCPUs interleaving per-CPU ids; 4 KiB pages): the streamed walks and
    check equal the in-memory ones."""
    from tracekit.analysis.common import load
    from tracekit.analysis.walks import ELEMENT_COLUMNS, WALK_COLUMNS

    cap = open_capture(SAMPLES / sample)
    model = model_from_layout(cap.manifest["workload"])
    streamed, check = core_walks(cap, model)
    memory, steps = rebuild_walks(load(cap, "walk", list(WALK_COLUMNS)), load(cap, "walk_element", list(ELEMENT_COLUMNS)),
                                  load(cap, "walk_error", ["walk_id"]) if "walk_error" in cap.families() else None)
    reference = crosscheck_walks(memory, steps, model)
    pd.testing.assert_frame_equal(streamed, memory[REBUILT_COLUMNS], check_dtype=False)
    assert check.summary == reference.summary and check.summary["compared"] > 8000
    pd.testing.assert_frame_equal(check.per_level, reference.per_level, check_dtype=False)


def test_corrupt_element_segment_raises_through_the_reader_thread(tmp_path):
    """A truncated walk_element segment: CaptureFormatError naming it, raised in the caller, thread stopped."""
    path = tmp_path / "c.tkcap"
    write_synthetic_capture(path, 300, chunk=100, extra_rows=10)
    segment = open_capture(path).segments("walk_element")[1]
    segment.write_bytes(segment.read_bytes()[:200])
    with pytest.raises(CaptureFormatError, match=segment.name):
        stream_walks(open_capture(path))
    assert not [t for t in threading.enumerate() if t.name == "tracekit-prefetch"]
