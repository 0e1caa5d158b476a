"""Walks cut short by lost events (issue #17): on a CPU whose walk elements the capture reports lost, a walk
that is its model walk with elements missing is counted apart, never as a model mismatch; a wrong PTE or
level still is one, and so is a short walk on a CPU that lost nothing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tracekit.analysis.analyze import analysis_json, analyze_capture, render_text
from tracekit.capture import CaptureWriter, open_capture
from tests.synthetic import SCHEMAS, guest_tables, walk_tables

_, PAGING = guest_tables(64 << 20)
N = 40  # walks; walk i runs on CPU i % 2, its elements are rows 3i (level 4), 3i+1 (3), 3i+2 (2)


def _write(path, walk, element, lost):
    """A capture of the built-in workload's guest with these walk and element frames and lost counters."""
    with CaptureWriter(path, manifest={"workload": {"arch": "x86_64", "guest_paging": PAGING}},
                       segment_seconds=3600) as writer:
        for family, frame in (("walk", walk), ("walk_element", element)):
            writer.declare(family, SCHEMAS[family])
            writer.append(family, pa.Table.from_pandas(frame, schema=SCHEMAS[family], preserve_index=False))
        for probe, cpu, count in lost:
            writer.add_lost(probe, cpu, count)
    return open_capture(path)


def _capture(path, *, lost=(), last_dropped=(), middle_dropped=(), flipped=()):
    tables = walk_tables(N, cpus=2, size=64 << 20, interleaved=0.0)
    element = tables["walk_element"].to_pandas()
    element.loc[[3 * i + 1 for i in flipped], "pte"] ^= 0x2
    element = element.drop(index=[3 * i + 2 for i in last_dropped] + [3 * i + 1 for i in middle_dropped])
    return _write(path, tables["walk"].to_pandas(), element, lost)


def _walk_ids(cap, walks):
    ids = cap.table("walk", ["walk_id"]).column(0).to_numpy()
    return sorted(int(ids[i]) for i in walks)


def test_short_walks_on_a_lossy_cpu_are_cut_short_not_mismatches(tmp_path):
    """CPU 1 lost 3 element events: walk 1 (last element missing) and walk 3 (middle one missing) are cut
    short; walk 2 (CPU 0, which lost nothing) and walk 5 (a flipped PTE bit) stay mismatches."""
    cap = _capture(tmp_path / "c.tkcap", lost=[("kvmmmu:kvm_mmu_paging_element", 1, 3)],
                   last_dropped=(1, 2), middle_dropped=(3,), flipped=(5,))
    result = analyze_capture(cap)
    verdict = result.verdicts["crosscheck"]
    assert {k: verdict[k] for k in ("compared", "matched", "cut_short", "mismatched", "verdict")} == {
        "compared": N, "matched": N - 4, "cut_short": 2, "mismatched": 2, "verdict": "mismatch"}
    assert verdict["match_rate"] == (N - 4) / (N - 2)
    assert sorted(result.tables["crosscheck_mismatches"]["walk_id"].tolist()) == _walk_ids(cap, (2, 5))
    text = render_text(result)
    assert f"{N - 4} of {N - 2} complete walks match" in text
    assert "2 walks cut short by lost events" in text
    doc = json.loads(json.dumps(analysis_json(result), default=str))
    assert doc["verdicts"]["crosscheck"]["cut_short"] == 2


@pytest.mark.parametrize("probe,cpu", [("kvmmmu:kvm_mmu_paging_element", 0), ("tracefs:ring_buffer", 0),
                                       ("tracefs", 0)])
def test_losses_alone_never_make_the_model_disagree(tmp_path, probe, cpu):
    """Only walks cut short where elements were lost: the verdict is a match over the complete walks,
    and the text says nothing of a mismatch."""
    cap = _capture(tmp_path / "c.tkcap", lost=[(probe, cpu, 5)], last_dropped=(0, 2, 4), middle_dropped=(6,))
    result = analyze_capture(cap)
    verdict = result.verdicts["crosscheck"]
    assert (verdict["verdict"], verdict["cut_short"], verdict["mismatched"], verdict["matched"]) == (
        "match", 4, 0, N - 4)
    assert result.tables["crosscheck_mismatches"].empty
    text = render_text(result)
    assert "model cross-check: match:" in text and "mismatch" not in text


def test_every_walk_cut_short_is_no_disagreement(tmp_path):
    cap = _capture(tmp_path / "c.tkcap", lost=[("kvmmmu:kvm_mmu_paging_element", cpu, 1) for cpu in (0, 1)],
                   last_dropped=range(N))
    verdict = analyze_capture(cap).verdicts["crosscheck"]
    assert (verdict["verdict"], verdict["cut_short"], verdict["match_rate"]) == ("cut short", N, None)


@pytest.mark.parametrize("lost", [[], [("kvmmmu:kvm_mmu_pagetable_walk", 0, 4), ("lock:contention_begin", 1, 9)]])
def test_without_element_losses_short_walks_are_mismatches(tmp_path, lost):
    """No lost events, or lost events of other probes (a lost walk start makes orphans, not short walks):
    short walks are mismatches as before."""
    cap = _capture(tmp_path / "c.tkcap", lost=lost, last_dropped=(0, 1), middle_dropped=(3,))
    verdict = analyze_capture(cap).verdicts["crosscheck"]
    assert (verdict["verdict"], verdict["cut_short"], verdict["mismatched"]) == ("mismatch", 0, 3)


def test_a_longer_or_reordered_walk_is_never_cut_short(tmp_path):
    """On a lossy CPU, a walk with a wrong level order (4 2 3) or an extra element is a mismatch."""
    tables = walk_tables(4, cpus=1, size=64 << 20, interleaved=0.0)
    element = tables["walk_element"].to_pandas()
    element.loc[[1, 2], "level"] = np.array([2, 3], np.int8)  # walk 0: levels 4 2 3, ptes as for 4 3 2
    element.loc[[4, 5], ["level", "pte"]] = element.loc[[5, 4], ["level", "pte"]].to_numpy()  # walk 1: 4 2 3
    extra = element.iloc[[8]].assign(index=3)  # walk 2: 4 3 2 2
    element = pd.concat([element.iloc[:9], extra, element.iloc[9:]], ignore_index=True)
    cap = _write(tmp_path / "c.tkcap", tables["walk"].to_pandas(), element, [("kvmmmu:kvm_mmu_paging_element", 0, 10)])
    verdict = analyze_capture(cap).verdicts["crosscheck"]
    assert (verdict["mismatched"], verdict["cut_short"], verdict["matched"]) == (3, 0, 1)


def test_lost_cpus_from_the_manifest():
    """Element and tracefs losses count on their CPU (-1: every CPU); other probes' losses and zero
    counts do not."""
    from tracekit.analysis.crosscheck import LostCpus

    lost = LostCpus({"lost": [{"probe": "kvmmmu:kvm_mmu_paging_element", "cpu": 3, "count": 2},
                              {"probe": "tracefs:ring_buffer", "cpu": 1, "count": 1},
                              {"probe": "kvmmmu:kvm_mmu_paging_element", "cpu": 0, "count": 0},
                              {"probe": "lock:contention_begin", "cpu": 2, "count": 7}]})
    assert lost and lost.on(np.array([0, 1, 2, 3])).tolist() == [False, True, False, True]
    assert LostCpus({"lost": [{"probe": "tracefs:missed_pages", "cpu": -1, "count": 4}]}).on(np.array([5])).all()
    assert not LostCpus({}) and not LostCpus({"lost": [{"probe": "x:y", "cpu": 0, "count": 1}]})
