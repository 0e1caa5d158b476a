"""The walk tables counted from narrow per-walk codes by the streaming core equal the tables of the per-walk
frame of the in-memory reference (walkref), whatever the batch boundaries, CPU interleaving, phases, vCPU
threads, mismatches and losses; the per-walk frame on request; the dictionary codes on their own."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracekit.analysis import analyze, phases as phases_mod, walkgroups, walkstream
from tracekit.analysis.common import count_by
from tracekit.analysis.crosscheck import model_from_layout
from tests.synthetic import SCHEMAS, guest_tables, walk_tables
from tracekit.analysis.walks import depth_distribution
from tracekit.analysis.walkgroups import Codes, walk_group_counts
from tracekit.capture import CaptureWriter, open_capture

from .walkref import REBUILT_COLUMNS, reference_walk_frame

_, PAGING = guest_tables(64 << 20)
MODEL = model_from_layout({"guest_paging": PAGING})
T0 = 10**9  # walk_tables' first timestamp; one walk per microsecond


def _capture(path, n, cpus, interleaved, flipped, dropped, vcpu_threads, seed, late=(), lost_cpu=None):
    """Recorder-shaped walks (tids 1000, 1001) with flipped PTE bits, dropped elements and some addresses
    the model cannot walk, in row groups of 7 rows so walks straddle batches; ``vcpu_threads`` of the tids
    are named vCPUs in the manifest; ``lost_cpu`` lost walk elements (its short walks are cut short). The last elements of the ``late`` walks come at the end of the table
    (a CPU's staged batch flushed late after the vCPU thread moved to another CPU)."""
    tables = walk_tables(n, cpus=cpus, interleaved=interleaved, size=64 << 20, seed=seed)
    element = tables["walk_element"].to_pandas()
    flip = np.array(sorted(i * 3 + 1 for i in flipped if i < n), np.int64)
    element.loc[flip, "pte"] ^= 0x2
    element = element.drop(index=[i * 3 + 2 for i in dropped if i < n])
    moved = element.index.isin([i * 3 + 2 for i in late if i < n])
    element = pd.concat([element[~moved], element[moved]]).reset_index(drop=True)
    walk = tables["walk"].to_pandas()
    walk.loc[walk.index % 5 == 3, "pferr"] = 6  # two fault codes
    walk.loc[walk.index % 17 == 16, "addr"] = np.uint64(0x7000_0000)  # unmapped: the model faults
    manifest = {"target": {"threads": [{"tid": 1000 + v, "vcpu": v} for v in range(vcpu_threads)]}}
    with CaptureWriter(path, manifest=manifest, segment_rows=50, segment_seconds=3600) as writer:
        for family, frame in (("walk", walk), ("walk_element", element)):
            writer.declare(family, SCHEMAS[family])
            table = pa.Table.from_pandas(frame, schema=SCHEMAS[family], preserve_index=False)
            for first in range(0, len(frame), 7):
                writer.append(family, table.slice(first, 7))
        if lost_cpu is not None:
            writer.add_lost("kvmmmu:kvm_mmu_paging_element", lost_cpu, 2)
    return open_capture(path)


def _tables(counts, weights):
    paths = count_by(counts, ["level_path", "pferr"], "walks", weights=weights)
    return [depth_distribution(counts, ["vcpu"], weights=weights), depth_distribution(counts, ["phase"], weights=weights),
            paths]


@given(st.integers(10, 120), st.integers(1, 3), st.sampled_from([0.0, 0.5]), st.sets(st.integers(0, 119), max_size=4),
       st.sets(st.integers(0, 119), max_size=3), st.integers(0, 2), st.integers(1, 40),
       st.lists(st.integers(0, 130), min_size=0, max_size=4), st.booleans(), st.integers(1, 50),
       st.sets(st.integers(0, 119), max_size=3), st.sampled_from([None, 0, 1]))
def test_group_counts_equal_the_walk_frame(tmp_path_factory, n, cpus, interleaved, flipped, dropped, vcpu_threads,
                                           batch, cuts, cut, seed, late, lost_cpu):
    """Tables and cross-check from the group counts equal those of the in-memory walk frame, cut by a
    phase or not; batches of any size (walks straddle them, concurrent walks interleave across CPUs, some
    walks end far from where they began), with lost elements on a CPU or none."""
    cap = _capture(tmp_path_factory.mktemp("g") / "c.tkcap", n, cpus, interleaved, flipped, dropped, vcpu_threads,
                   seed, late, lost_cpu)
    bounds = sorted(set(cuts))
    rows = [{"name": "dirty-memory", "iteration": i + 1, "start_ns": T0 + a * 1000, "end_ns": T0 + b * 1000}
            for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    phase_table = phases_mod.make_phase_table(rows, "workload")
    phase = "dirty-memory" if cut and rows else None
    saved = walkstream.WALK_BATCH_ROWS, walkstream.ELEMENT_BATCH_ROWS, walkstream.HOLD_ROWS
    walkstream.WALK_BATCH_ROWS, walkstream.ELEMENT_BATCH_ROWS, walkstream.HOLD_ROWS = batch + 2, batch, 64
    try:
        grouped = walk_group_counts(cap, MODEL, phase_table=phase_table, phase=phase, limit=3)
    finally:
        walkstream.WALK_BATCH_ROWS, walkstream.ELEMENT_BATCH_ROWS, walkstream.HOLD_ROWS = saved
    frame, reference = reference_walk_frame(cap, phase_table, phase, MODEL, 3)
    assert grouped is not None and grouped.walks == n
    assert grouped.counts["walks"].sum() == len(frame)
    for ours, theirs in zip(_tables(grouped.counts, "walks"), _tables(frame, None)):
        pd.testing.assert_frame_equal(ours, theirs)
    assert grouped.check.summary == reference.summary
    assert (grouped.check.summary["mismatched"] > 0) == bool(reference.summary["mismatched"])
    pd.testing.assert_frame_equal(grouped.check.mismatches, reference.mismatches, check_dtype=False)
    pd.testing.assert_frame_equal(grouped.check.per_level, reference.per_level, check_dtype=False)
    assert grouped.orphans == frame.attrs["orphan_elements"] == 0


@pytest.mark.parametrize("phase", [None, "dirty-memory#1"])
def test_walk_frame_is_made_on_request_and_equals_the_reference(tmp_path, phase):
    """analyze_capture holds no per-walk frame and walk_frame() rebuilds it (one row per walk); the
    frame of a phase cut equals the reference's, cause, vCPU and phase included."""
    cap = _capture(tmp_path / "c.tkcap", 40, 2, 0.5, {3}, {5}, 2, 1)
    result = analyze.analyze_capture(cap)
    assert result.info["walk_path"] == "streamed" and "walks" not in result.frames
    assert len(result.walk_frame()) == result.tables["walk_depth"]["walks"].sum() == 40
    phase_table = phases_mod.make_phase_table([{"name": "dirty-memory", "iteration": 1, "start_ns": T0 + 10_000,
                                                "end_ns": T0 + 30_000}], "workload")
    walks = walkgroups.walk_frame(cap, phase_table, phase)
    reference, _ = reference_walk_frame(cap, phase_table, phase)
    pd.testing.assert_frame_equal(walks.reset_index(drop=True), reference.reset_index(drop=True), check_dtype=False)
    assert len(walks) == (40 if phase is None else 20) and set(walks["vcpu"]) == {0, 1}


def test_codes_widen_and_decode():
    """Codes in order of first appearance; the column widens from uint8 to uint16 past 256 values."""
    codes = Codes(600, first=(0,))
    codes.put(slice(0, 3), np.array([432, 0, 432]))
    assert codes.codes.dtype == np.uint8 and codes.codes[:3].tolist() == [1, 0, 1]
    codes.put(np.arange(3, 600), np.arange(3, 600) * 7)
    assert codes.codes.dtype == np.uint16
    assert codes.decode(codes.codes).tolist() == [432, 0, 432, *(np.arange(3, 600) * 7).tolist()]


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3), st.booleans()), max_size=60))
def test_group_counts_dense_and_hashed_agree(rows):
    """The dense bincount and the hashed count of code combinations give the same combinations (in
    ascending order) and counts, with and without a row selection; the expected counts by Counter."""
    from collections import Counter

    a = np.array([r[0] for r in rows], np.uint8)
    b = np.array([r[1] for r in rows], np.uint16)
    keep = np.array([r[2] for r in rows], bool)
    for selection in (None, keep):
        chosen = [(x, y) for (x, y, k) in rows if selection is None or k]
        expected = sorted(Counter(chosen).items())
        for dense in (1 << 22, 1):
            saved = walkgroups._DENSE_KEYS
            walkgroups._DENSE_KEYS = dense
            try:
                codes, counts = walkgroups._group_counts([(a, 7), (b, 4)], selection)
            finally:
                walkgroups._DENSE_KEYS = saved
            assert [((int(x), int(y)), int(c)) for x, y, c in zip(codes[0], codes[1], counts)] == expected


def test_null_walk_columns_read_as_zero(tmp_path):
    """A walk column with nulls (a damaged capture): the null reads as 0, every walk still counted."""
    path = tmp_path / "c.tkcap"
    with CaptureWriter(path, segment_seconds=3600) as writer:
        for family in ("walk", "walk_element"):
            writer.declare(family, SCHEMAS[family])
        writer.append("walk", pa.table({"ts_ns": [1, 2], "cpu": [0, 0], "pid": [1, 1], "tid": [1, 1],
                                        "walk_id": [1, 2], "addr": [0, 0], "pferr": [6, None]}, schema=SCHEMAS["walk"]))
        writer.append("walk_element", pa.table({"ts_ns": [1], "cpu": [0], "pid": [1], "tid": [1], "walk_id": [1],
                                                "index": [0], "level": [4], "pte": [0]},
                                               schema=SCHEMAS["walk_element"]))
    grouped = walk_group_counts(open_capture(path), phase_table=phases_mod.make_phase_table([], "workload"))
    assert sorted(zip(grouped.counts["pferr"].tolist(), grouped.counts["depth"].tolist())) == [(0, 0), (6, 1)]


@pytest.mark.parametrize("phase", [None, "dirty-memory#2"])
def test_sample_group_counts_equal_the_walk_frame(phase):
    """The recorder's two-vCPU sample: the same tables and cross-check both ways, cut or not."""
    from .conftest import SAMPLES

    cap = open_capture(SAMPLES / "x86-dirty-log-2m.tkcap")
    phase_table = phases_mod.capture_phases(cap)
    model = model_from_layout(cap.manifest["workload"])
    grouped = walk_group_counts(cap, model, phase_table=phase_table, phase=phase)
    frame, reference = reference_walk_frame(cap, phase_table, phase, model, 20)
    for ours, theirs in zip(_tables(grouped.counts, "walks"), _tables(frame, None)):
        pd.testing.assert_frame_equal(ours, theirs)
    assert grouped.check.summary == reference.summary and reference.summary["compared"] > 8000
    pd.testing.assert_frame_equal(grouped.check.mismatches, reference.mismatches, check_dtype=False)


def test_retried_walk_matches_and_is_reported(tmp_path):
    """A walk retried from the root (its 3 elements read twice under one walk id, as walk_addr_generic's
    retry does): the capture's walks all match, 1 retried, and the text says so."""
    tables = walk_tables(20, size=64 << 20)
    element = tables["walk_element"].to_pandas()
    first = element[element["walk_id"] == element["walk_id"].iloc[0]]
    end = int(first.index.max()) + 1  # the retry's pass follows the first one, indexes 3, 4, 5
    element = pd.concat([element.iloc[:end], first.assign(index=first["index"] + 3), element.iloc[end:]],
                        ignore_index=True)
    path = tmp_path / "c.tkcap"
    with CaptureWriter(path, manifest={"workload": {"arch": "x86_64", "guest_paging": PAGING}},
                       segment_seconds=3600) as writer:
        for family, frame in (("walk", tables["walk"].to_pandas()), ("walk_element", element)):
            writer.declare(family, SCHEMAS[family])
            writer.append(family, pa.Table.from_pandas(frame, schema=SCHEMAS[family], preserve_index=False))
    result = analyze.analyze_capture(open_capture(path))
    verdict = result.verdicts["crosscheck"]
    assert (verdict["verdict"], verdict["matched"], verdict["retried"]) == ("match", 20, 1)
    assert "1 walks were retried from the root" in analyze.render_text(result)
    assert result.tables["walk_paths"]["levels"].tolist() == ["4>3>2", "4>3>2>4>3>2"]
