"""A/B comparison: mean, stdev, relative change in the kernel-patch form, and the noise rule."""

from __future__ import annotations

import pytest

from tracekit.analysis.compare import compare_runs, format_change


def _runs(values, metric="phase dirty-memory#1", unit="s"):
    return [{metric: (v, unit)} for v in values]


def test_golden_change_and_stdev():
    """A = 10, 12 (mean 11, stdev 1.414); B = 7, 7.2 (mean 7.1, stdev 0.1414):
    change = 100 * (7.1 - 11) / 11 = -35.45%; stdev% = max(1.414/11, 0.1414/7.1) = 12.86%;
    Welch t = 3.9 / sqrt(2/2 + 0.02/2) = 3.88 -> beyond noise."""
    row = compare_runs(_runs([10, 12]), _runs([7, 7.2])).iloc[0]
    assert row["mean_a"] == 11 and row["mean_b"] == pytest.approx(7.1)
    assert row["change_pct"] == pytest.approx(-35.4545, abs=1e-3)
    assert row["stdev_pct"] == pytest.approx(12.856, abs=1e-3)
    assert row["noise"] == "beyond"
    assert row["text"] == "-35.45% phase dirty-memory#1 time (stdev 12.86%)"


def test_within_noise_and_single_runs():
    """A = 10, 14 (mean 12), B = 11, 13.5 (mean 12.25): Welch t = 0.25 / sqrt(8/2 + 3.125/2) = 0.11 -> within
    noise; one run per side -> unknown."""
    within = compare_runs(_runs([10, 14]), _runs([11, 13.5])).iloc[0]
    assert within["noise"] == "within" and within["text"].endswith(", within noise")
    single = compare_runs(_runs([10]), _runs([5])).iloc[0]
    assert single["noise"] == "unknown" and single["change_pct"] == -50.0


def test_only_common_metrics_and_zero_baseline():
    a = [{"walks": (0.0, "count"), "only_a": (1.0, "count")}]
    b = [{"walks": (5.0, "count")}]
    table = compare_runs(a, b)
    assert table["metric"].tolist() == ["walks"]
    assert table.iloc[0]["text"] == "n/a walks (baseline is 0)"
    assert format_change(-35.47, 5.63, "runtime", "beyond") == "-35.47% runtime (stdev 5.63%)"
