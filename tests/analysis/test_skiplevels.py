"""Skipped-levels verdicts: observed split-walker visits against the model with and without skip flags."""

from __future__ import annotations

import pandas as pd

from tracekit.analysis.skiplevels import scenario_for, skip_verdict, split_visits_vs_model, split_walks

MB2 = 2 << 20
SCENARIO = {"granule": 4096, "ipa_bits": 40, "chunk_size": MB2,
            "memslots": [{"ipa": 1 << 30, "size": 2 * MB2, "mapping_size": MB2}]}
WALKS = pd.DataFrame({"walk_id": [0, 1], "ts_ns": [1, 2], "addr": [1 << 30, (1 << 30) + MB2], "size": [MB2, MB2],
                      "initiator": ["stage2_split_walker"] * 2})


def _visits(l3_counts):
    rows = []
    for wid, l3 in enumerate(l3_counts):
        rows.append((wid, "split_walker", 2, "leaf:block", 1))
        if l3:
            rows.append((wid, "split_walker", 3, "leaf:page", l3))
    return pd.DataFrame(rows, columns=["walk_id", "visitor", "level", "kind", "count"])


def test_no_skip_golden():
    """Each 2 MiB split: 1 LEAF visit of the block at L2, then 512 of the fresh L3 table (no skipping)."""
    comparison = split_visits_vs_model(WALKS, _visits([512, 512]), SCENARIO)
    assert comparison[comparison["walk_id"] == 0][["level", "observed", "model_no_skip", "model_skip_3",
                                                   "model_skip_2_3"]].values.tolist() == [[2, 1, 1, 1, 0],
                                                                                          [3, 512, 512, 0, 0]]
    verdict = skip_verdict(comparison)
    assert verdict["verdict"] == "no" and verdict["matches"] == ["model_no_skip"]
    assert "L3: observed 1024, no-skip model 1024" in verdict["evidence"]


def test_skip_level3_golden():
    verdict = skip_verdict(split_visits_vs_model(WALKS, _visits([0, 0]), SCENARIO))
    assert verdict["verdict"] == "yes" and verdict["matches"] == ["model_skip_3"]
    assert verdict["per_walk"] == {0: "yes", 1: "yes"}
    assert "L3: observed 0, no-skip model 1024" in verdict["evidence"]


def test_not_enough_data():
    assert skip_verdict(None, "no split walks")["verdict"] == "not enough data"
    # Walks that disagree with each other decide nothing.
    mixed = skip_verdict(split_visits_vs_model(WALKS, _visits([512, 0]), SCENARIO))
    assert mixed["verdict"] == "not enough data" and mixed["per_walk"] == {0: "no", 1: "yes"}
    # A walk over unmapped space: every candidate predicts the same visits (one invalid entry each).
    empty = WALKS.assign(addr=[3 << 30, (3 << 30) + MB2])
    none = split_visits_vs_model(empty, _visits([0, 0]).iloc[0:0], SCENARIO)
    assert skip_verdict(none)["verdict"] == "not enough data"


def test_split_walk_selection_and_lab_scenario():
    walks = pd.concat([WALKS, pd.DataFrame({"walk_id": [2], "ts_ns": [3], "addr": [0], "size": [4096],
                                            "initiator": ["stage2_map_walker"]})])
    assert split_walks(walks, _visits([512, 512]))["walk_id"].tolist() == [0, 1]
    lab = {"workload": {"scenario": {"arch": "arm64", "backing": "thp", "eager_split_chunk": MB2}}}
    assert scenario_for(lab, split_walks(walks, _visits([1, 1]))) == SCENARIO
    assert scenario_for({}, WALKS) is None
