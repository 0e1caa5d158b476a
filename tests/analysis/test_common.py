"""Nearest-rank percentiles, grouped latency summaries and 80-column tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandas.testing as pdt
from hypothesis import given
from hypothesis import strategies as st

from tracekit.analysis.common import add_vcpu, format_table, latency_summary, nearest_rank, vcpu_map


def test_nearest_rank_golden():
    """p50 of [10, 20, 30, 40] is rank ceil(0.5*4) = 2 -> 20; p90 is rank ceil(3.6) = 4 -> 40."""
    values = np.array([10, 20, 30, 40])
    assert nearest_rank(values, 50) == 20
    assert nearest_rank(values, 90) == 40
    assert nearest_rank(values, 25) == 10
    assert nearest_rank(np.array([]), 50) is None


def test_latency_summary_golden():
    """Group a: 4 values, total 100, mean 25, p50 20, p90/p99/max 40; group b: one value 5."""
    frame = pd.DataFrame({"k": ["a", "b", "a", "a", "a"], "duration_ns": [40, 5, 10, 30, 20]})
    expected = pd.DataFrame({"k": ["a", "b"], "count": [4, 1], "total_ns": [100, 5], "mean_ns": [25.0, 5.0],
                             "p50_ns": [20, 5], "p90_ns": [40, 5], "p99_ns": [40, 5], "max_ns": [40, 5]})
    got = latency_summary(frame, ["k"])
    pdt.assert_frame_equal(got, expected, check_dtype=False)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**9)), min_size=1, max_size=60))
def test_latency_summary_matches_numpy(rows):
    """Each group's percentiles equal numpy's inverted-CDF percentiles (the nearest-rank definition)."""
    frame = pd.DataFrame(rows, columns=["g", "duration_ns"])
    got = latency_summary(frame, ["g"]).set_index("g")
    for g, group in frame.groupby("g"):
        values = group["duration_ns"].to_numpy()
        for q in (50, 90, 99):
            assert got.loc[g, f"p{q}_ns"] == np.percentile(values, q, method="inverted_cdf")
        assert got.loc[g, "max_ns"] == values.max()
        assert got.loc[g, "total_ns"] == values.sum()


def test_vcpu_mapping_from_manifest():
    manifest = {"target": {"threads": [{"tid": 11, "vcpu": 0}, {"tid": 12, "vcpu": None}]},
                "workload": {"vcpus": [{"index": 1, "tid": 13}]}}
    assert vcpu_map(manifest) == {11: 0, 13: 1}
    frame = add_vcpu(pd.DataFrame({"tid": [11, 12, 13, 14]}), manifest)
    assert frame["vcpu"].tolist() == [0, -1, 1, -1]


def test_format_table_fits_80_columns_and_drops_no_column():
    frame = pd.DataFrame({f"column_{i}": [123456789] * 3 for i in range(6)})
    text = format_table(frame, title="t", width=80)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert all(f"column_{i}" in text for i in range(6)) and text.count("123456789") == 18
    wide = format_table(pd.DataFrame({f"key_{i}" if i == 0 else f"column_{i}": [123456789] * 3 for i in range(12)}),
                        width=80)
    assert all(len(line) <= 80 for line in wide.splitlines())
    pieces = [line.split() for line in wide.splitlines() if line.split()[:1] == ["key_0"]]
    assert len(pieces) == 2 and [name for piece in pieces for name in piece[1:]] == [f"column_{i}" for i in range(1, 12)]
