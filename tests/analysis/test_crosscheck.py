"""Observed x86 walks against the reference model: matches, A/D tolerance, mismatches and layout rebuild."""

from __future__ import annotations

import pandas as pd
import pytest

from tracekit.analysis.crosscheck import model_from_layout
from tests.synthetic import guest_tables
from tracekit.errors import AnalysisError
from tracekit.model.x86 import PTE_A, PTE_D

from .walkref import crosscheck_walks, rebuild_walks

GVA = 0xC000_0000


def _walk_rows(model_walk, addrs, tamper=None):
    walk = pd.DataFrame({"walk_id": range(len(addrs)), "ts_ns": range(len(addrs)), "tid": [1] * len(addrs),
                         "addr": addrs, "pferr": [6] * len(addrs)})
    rows = []
    for wid, addr in enumerate(addrs):
        for i, step in enumerate(model_walk(addr).levels):
            rows.append((wid, i, step.level, step.pte))
    element = pd.DataFrame(rows, columns=["walk_id", "index", "level", "pte"])
    if tamper:
        element = tamper(element)
    return rebuild_walks(walk, element)


def test_layout_rebuild_and_full_match():
    """Walks replayed from the model itself match it exactly: 3 of 3, levels 4, 3, 2 read 3 times each."""
    tables, paging = guest_tables(64 << 20)
    model_walk = model_from_layout({"arch": "x86_64", "guest_paging": paging})
    walks, steps = _walk_rows(model_walk, [GVA, GVA + 0x201000, GVA + (63 << 20)])
    check = crosscheck_walks(walks, steps, model_walk)
    assert check.summary == {"walks": 3, "compared": 3, "matched": 3, "match_rate": 1.0, "mismatched": 0,
                             "retried": 0, "outside_model": 0, "cut_short": 0, "verdict": "match"}
    assert check.per_level.values.tolist() == [[4, 3, 3], [3, 3, 3], [2, 3, 3]]


def test_accessed_dirty_bits_are_ignored_but_other_bits_are_not():
    _, paging = guest_tables(64 << 20)
    model_walk = model_from_layout({"guest_paging": paging})

    def set_ad(element):
        return element.assign(pte=element["pte"] | PTE_A | PTE_D)

    walks, steps = _walk_rows(model_walk, [GVA], set_ad)
    assert crosscheck_walks(walks, steps, model_walk).summary["verdict"] == "match"

    def flip_rw(element):
        element = element.copy()
        element.loc[1, "pte"] = element.loc[1, "pte"] ^ 0x2  # level 3 entry loses RW
        return element

    walks, steps = _walk_rows(model_walk, [GVA, GVA + (2 << 20)], flip_rw)
    check = crosscheck_walks(walks, steps, model_walk)
    assert check.summary["matched"] == 1 and check.summary["match_rate"] == 0.5
    first = check.mismatches.iloc[0]
    assert (first["walk_id"], first["depth"], first["observed_level"], first["model_level"]) == (0, 1, 3, 3)
    assert first["observed_pte"] ^ first["model_pte"] == 0x2 and first["reason"] == "pte differs"


def test_shorter_observed_walk_is_a_mismatch():
    _, paging = guest_tables(64 << 20)
    model_walk = model_from_layout({"guest_paging": paging})
    walks, steps = _walk_rows(model_walk, [GVA], lambda e: e[e["index"] < 2])
    check = crosscheck_walks(walks, steps, model_walk)
    assert check.summary["verdict"] == "mismatch"
    assert check.mismatches.iloc[0]["reason"] == "observed walk ends at depth 2, model at 3"


def _retried(first_pass, last_pass_flip=0):
    """A walk of levels 4, 3, 2 retried from the root (walk_addr_generic's retry_walk): the first
    ``first_pass`` elements of a pass, then a whole pass under the same walk id, indexes 0.. throughout."""

    def tamper(element):
        first = element.iloc[:first_pass]
        last = element.assign(pte=element["pte"] ^ (element["index"] == 2) * last_pass_flip)
        both = pd.concat([first, last], ignore_index=True)
        return both.assign(index=range(len(both)))

    return tamper


def test_retried_walk_is_compared_by_its_last_pass():
    """4 3 2 4 3 2 (one whole pass, then the retry) and 4 3 4 3 2 (a pass cut short): both match and count
    as retried; all 11 PTE reads per level are counted, against the model's 3 per walk. A retry whose
    last pass differs is a mismatch at that pass's depth."""
    _, paging = guest_tables(64 << 20)
    model_walk = model_from_layout({"guest_paging": paging})
    whole = _walk_rows(model_walk, [GVA], _retried(3))
    cut = _walk_rows(model_walk, [GVA], _retried(2))
    walks = pd.concat([whole[0], cut[0].assign(walk_id=1, first_step=cut[0]["first_step"] + 6)], ignore_index=True)
    steps = pd.concat([whole[1], cut[1].assign(walk_id=1)], ignore_index=True)
    assert walks["depth"].tolist() == [6, 5] and walks["level_path"].tolist() == [432432, 43432]
    check = crosscheck_walks(walks, steps, model_walk)
    assert check.summary == {"walks": 2, "compared": 2, "matched": 2, "match_rate": 1.0, "mismatched": 0,
                             "retried": 2, "outside_model": 0, "cut_short": 0, "verdict": "match"}
    assert check.per_level.values.tolist() == [[4, 4, 2], [3, 4, 2], [2, 3, 2]]  # level, observed, model
    walks, steps = _walk_rows(model_walk, [GVA], _retried(3, last_pass_flip=0x2))
    check = crosscheck_walks(walks, steps, model_walk)
    assert check.summary["mismatched"] == 1 and check.summary["retried"] == 1
    assert check.mismatches[["depth", "reason"]].values.tolist() == [[2, "pte differs"]]


def test_layout_errors_are_one_line():
    with pytest.raises(AnalysisError, match="no workload guest-paging record"):
        model_from_layout({})
    _, paging = guest_tables(64 << 20)
    with pytest.raises(AnalysisError, match="do not match the workload record"):
        model_from_layout({"guest_paging": {**paging, "root_gpa": paging["root_gpa"] + 4096}})
