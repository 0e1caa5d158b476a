"""The in-memory reference rebuild of x86 guest walks (walkref) against golden rows and an independent
groupby, the walk tables, and stage-2 visits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandas.testing as pdt
from hypothesis import given
from hypothesis import strategies as st

from tracekit.analysis.walks import depth_distribution, level_path_text, stage2_distribution, stage2_walk_visits

from .walkref import rebuild_walks

WALK = pd.DataFrame({"walk_id": [7, 8, 9, 10], "ts_ns": [100, 200, 300, 400], "tid": [5, 5, 6, 6],
                     "addr": [0xC0000000, 0xC0201000, 0x1000, 0x2000], "pferr": [6, 7, 4, 0]})
# Elements out of order on purpose (the rebuild sorts by walk_id, index when needed).
ELEMENT = pd.DataFrame({
    "walk_id": [8, 7, 7, 7, 8, 8, 9, 9, 9, 9, 10],
    "index": [0, 0, 1, 2, 1, 2, 0, 1, 2, 3, 0],
    "level": [4, 4, 3, 2, 3, 2, 4, 3, 2, 1, 4],
    # 0x...e7 = P|RW|US|A|D|PS (a 2 MiB leaf), 0x...27 = P|RW|US|A (a table or 4 KiB page), 0 = not present
    "pte": [0x101027, 0x101027, 0x102027, 0x1000000E7, 0x102027, 0x1002000E7, 0x101027, 0x102027, 0x103027,
            0x5027, 0],
})


def test_rebuild_golden():
    """Walk 7 and 8: levels 4>3>2 ending on a 2 MiB leaf (PS set); walk 9: 4>3>2>1 ending on a 4 KiB page;
    walk 10: one non-present level-4 entry and a walker error, so no leaf."""
    walks, steps = rebuild_walks(WALK, ELEMENT, pd.DataFrame({"walk_id": [10]}))
    expected = pd.DataFrame({
        "walk_id": np.array([7, 8, 9, 10], np.uint64), "depth": [3, 3, 4, 1], "root_level": [4, 4, 4, 4],
        "leaf_level": [2, 2, 1, -1], "level_path": [432, 432, 4321, 4], "error": [False, False, False, True],
        "first_step": [0, 3, 6, 10]})
    pdt.assert_frame_equal(walks[expected.columns], expected, check_dtype=False)
    assert steps["walk_id"].tolist() == [7, 7, 7, 8, 8, 8, 9, 9, 9, 9, 10]
    assert steps["depth"].tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 0]
    assert walks.attrs["orphan_elements"] == 0
    assert level_path_text(4321) == "4>3>2>1"


def test_walk_without_elements_and_orphans():
    walks, _ = rebuild_walks(WALK.iloc[:1], ELEMENT[ELEMENT["walk_id"] != 7])
    assert walks["depth"].tolist() == [0]
    assert walks["leaf_level"].tolist() == [-1]
    assert walks.attrs["orphan_elements"] == 3 + 4 + 1  # elements of walks 8, 9, 10: no walk row


def test_depth_distribution_shares():
    walks, _ = rebuild_walks(WALK, ELEMENT)
    dist = depth_distribution(walks, ["tid"])
    row = dist[(dist["tid"] == 5)]
    assert row["walks"].tolist() == [2] and row["share"].tolist() == [1.0]
    assert dist[dist["tid"] == 6]["share"].tolist() == [0.5, 0.5]


@given(st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=5), min_size=1, max_size=30), st.randoms())
def test_rebuild_matches_groupby_reference(level_lists, rnd):
    """Against an independent pandas groupby over shuffled elements: depth, first and last level, path."""
    rows = [(wid, i, lv, (wid << 12) | i | 1) for wid, levels in enumerate(level_lists) for i, lv in enumerate(levels)]
    rnd.shuffle(rows)
    element = pd.DataFrame(rows, columns=["walk_id", "index", "level", "pte"])
    n = len(level_lists)
    walk = pd.DataFrame({"walk_id": range(n), "ts_ns": range(n), "tid": [1] * n, "addr": [0] * n, "pferr": [0] * n})
    walks, steps = rebuild_walks(walk, element)
    for wid, levels in enumerate(level_lists):
        row = walks.iloc[wid]
        assert row["depth"] == len(levels)
        assert row["root_level"] == (levels[0] if levels else -1)
        assert row["level_path"] == (int("".join(map(str, levels))) if levels else 0)
        if levels:
            got = steps.iloc[row["first_step"]: row["first_step"] + len(levels)]["level"].tolist()
            assert got == levels


def test_stage2_visits_golden():
    """Two split walks: 1 block visit at L2 + 512 page visits at L3 each; entries per walk 1 and 512."""
    walk = pd.DataFrame({"walk_id": [0, 1], "ts_ns": [1, 2], "tid": [3, 3], "initiator": ["stage2_split_walker"] * 2,
                         "addr": [0, 2 << 20], "size": [2 << 20] * 2})
    visit = pd.DataFrame({"walk_id": [0, 0, 1, 1], "level": [2, 3, 2, 3],
                          "kind": ["leaf:block", "leaf:page"] * 2, "count": [1, 512, 1, 512]})
    dist = stage2_distribution(stage2_walk_visits(walk, visit))
    assert dist[["level", "kind", "walks", "entries", "entries_per_walk"]].values.tolist() == [
        [2, "leaf:block", 2, 2, 1.0], [3, "leaf:page", 2, 1024, 512.0]]
