"""A/B comparison: means, stdevs, the propagated stdev of the change, the noise rule, keys that survive
between runs, and the cover-letter table on the samples (golden text)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from typer.testing import CliRunner

from tracekit.analysis.compare import RunMetrics, capture_metrics, compare_runs, format_change
from tracekit.cli import app

from .conftest import SAMPLES

GOLDEN = Path(__file__).resolve().parent / "golden"
ROOT = SAMPLES.parent


def _runs(values, metric="dirty-memory#1 runtime", unit="s", group="phase"):
    return [RunMetrics({(group, metric): (v, unit)}) for v in values]


def test_means_stdevs_and_the_propagated_stdev_of_the_change():
    """A = 10, 12 (mean 11, sd 1.4142); B = 7, 7.2 (mean 7.1, sd 0.14142): change -35.4545%;
    its stdev 100 * sqrt(0.14142^2 + (7.1 * 1.4142 / 11)^2) / 11 = 8.3973%; Welch t = 3.9 / 1.0050 = 3.88,
    df = 1.02 -> critical 12.706: within noise with two runs a side."""
    row = compare_runs(_runs([10, 12]), _runs([7, 7.2])).iloc[0]
    assert (row["n_a"], row["n_b"], row["mean_a"]) == (2, 2, 11) and row["mean_b"] == pytest.approx(7.1)
    assert row["stdev_a"] == pytest.approx(math.sqrt(2)) and row["stdev_b"] == pytest.approx(math.sqrt(0.02))
    assert row["change_pct"] == pytest.approx(-35.4545, abs=1e-4)
    assert row["change_stdev_pct"] == pytest.approx(8.3973, abs=1e-4)
    assert row["noise"] == "within"
    assert row["text"] == "-35.45% dirty-memory#1 runtime (stdev 8.40%)"


def test_welch_rule_uses_the_degrees_of_freedom():
    """Three runs a side, A = 10, 11, 12, B = 7, 7.5, 8: t = 3.5 / sqrt(1/3 + 0.25/3) = 5.42, df = 2.94 ->
    critical 4.303 (df 2): beyond noise. B = 9, 10.5, 12 (t = 0.55): within."""
    assert compare_runs(_runs([10, 11, 12]), _runs([7, 7.5, 8])).iloc[0]["noise"] == "beyond"
    assert compare_runs(_runs([10, 11, 12]), _runs([9, 10.5, 12])).iloc[0]["noise"] == "within"


def test_one_run_a_side_has_no_stdev():
    row = compare_runs(_runs([10]), _runs([5, 6])).iloc[0]
    assert row["stdev_a"] is None or pd.isna(row["stdev_a"])
    assert pd.isna(row["change_stdev_pct"]) and row["noise"] == "unknown"
    assert row["text"] == "-45.00% dirty-memory#1 runtime (stdev n/a: one run of A)"
    identical = compare_runs(_runs([4.0]), _runs([4.0])).iloc[0]
    assert identical["noise"] == "identical"


def test_zero_baseline_and_format():
    table = compare_runs(_runs([0.0], "walks", "count", "work"), _runs([5.0], "walks", "count", "work"))
    assert table.iloc[0]["text"] == "n/a walks (A is 0)"
    assert format_change(-35.47, 5.63, "runtime") == "-35.47% runtime (stdev 5.63%)"


def _analysis(tables: dict, partial: dict | None = None):
    return SimpleNamespace(tables=tables, info={"partial": partial})


def test_locks_match_by_role_never_by_address():
    """The same two locks at other addresses in the second run: one row per role, operation and mode."""
    def run(other_addr: str, mmu_waits: int):
        locks = pd.DataFrame({"lock": ["mmu_lock", other_addr], "operation": ["fault", "fault"],
                              "mode": ["write", "spin"], "count": [mmu_waits, 2], "total_ns": [1000, 500]})
        return capture_metrics(_analysis({"lock_contention": locks}))

    table = compare_runs([run("0xffff888104311000", 10)], [run("0xffff8881086dee98", 5)])
    assert set(table["metric"]) == {"mmu_lock fault write wait", "mmu_lock fault write waits",
                                    "other locks fault spin wait", "other locks fault spin waits"}
    waits = table.set_index("metric").loc["mmu_lock fault write waits"]
    assert waits["change_pct"] == -50.0 and waits["group"] == "lock"


def test_a_level_never_visited_counts_as_zero_and_ioctls_are_not_repeated():
    """The patched split walker never visits level 3: 65,536 -> 0 (-100%), not a missing row. An ioctl
    called once per run has one runtime row (no identical per-call row); a per-call row appears only
    where the runs made different numbers of calls."""
    def run(l3_visits: int, clears: int):
        stage2 = pd.DataFrame({"level": [2, 3], "visitor": ["split", "split"], "kind": ["leaf:block", "leaf:page"],
                               "entries": [128, l3_visits]})
        stage2 = stage2[stage2["entries"] > 0]
        ioctl = pd.DataFrame({"cmd_name": ["KVM_CREATE_VM", "KVM_CLEAR_DIRTY_LOG"], "count": [1, clears],
                              "total_ns": [400, 100 * clears]})
        return capture_metrics(_analysis({"stage2_visits": stage2, "ioctl_latency": ioctl}))

    table = compare_runs([run(65536, 2), run(65536, 3)], [run(0, 2), run(0, 2)]).set_index("metric")
    assert table.loc["L3 split leaf:page visits", "change_pct"] == -100.0
    assert "KVM_CREATE_VM runtime per call" not in table.index and "KVM_CREATE_VM runtime" in table.index
    assert "KVM_CLEAR_DIRTY_LOG runtime per call" in table.index


#: Golden comparisons: vanilla against the project's patched kernel (split-skip-level3), one run a side,
#: in the three configurations of the SKIP_LEVEL cover letter (eager split at enable, at CLEAR, a 1 GiB
#: hugetlb block); three runs a side at CLEAR, the same minimal build with and without the patch
#: (docs/cases/skip-level-ab.md); and three runs a side of the built-in workload with 2 MiB against 4 KiB
#: guest pages.
CASES = {
    "compare-lab-arm64-eager-enable": (["lab-arm64-eager-enable.tkcap"], ["lab-arm64-skip3-eager-enable.tkcap"]),
    "compare-lab-arm64-eager-clear": (["lab-arm64-eager-clear.tkcap"], ["lab-arm64-skip3-eager-clear.tkcap"]),
    "compare-lab-arm64-hugetlb-1g": (["lab-arm64-hugetlb-1g.tkcap"], ["lab-arm64-skip3-hugetlb-1g.tkcap"]),
    "compare-lab-arm64-eager-clear-ab": ([f"compare/lab-arm64-eager-clear-vanilla-{i}.tkcap" for i in (1, 2, 3)],
                                         [f"compare/lab-arm64-eager-clear-skip3-{i}.tkcap" for i in (1, 2, 3)]),
    "compare-x86-dirty-log-2m-4k": ([f"compare/dirty-log-2m-{i}.tkcap" for i in (1, 2, 3)],
                                    [f"compare/dirty-log-4k-{i}.tkcap" for i in (1, 2, 3)]),
}


#: The ones analysing 65,000-260,000 visits a side (about 10 s each) run in the slow tier.
SLOW = {"compare-lab-arm64-eager-clear", "compare-lab-arm64-hugetlb-1g", "compare-lab-arm64-eager-clear-ab"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(CASES)])
def test_cover_letter_table_on_the_samples_equals_its_golden_copy(name, monkeypatch):
    """``tracekit compare`` into a pipe (plain text, natural width) on the samples, compared line by line
    with ``golden/NAME.txt`` (TRACEKIT_UPDATE_GOLDEN=1 rewrites it)."""
    monkeypatch.chdir(ROOT)
    a, b = ([f"samples/{p}" for p in side] for side in CASES[name])
    result = CliRunner().invoke(app, ["compare", *a, "--", *b], env={"COLUMNS": None, "NO_COLOR": None})
    assert result.exit_code == 0, result.output
    golden = GOLDEN / f"{name}.txt"
    if os.environ.get("TRACEKIT_UPDATE_GOLDEN") == "1":
        golden.write_text(result.output)
    assert golden.is_file(), f"no golden copy {golden.name}: run with TRACEKIT_UPDATE_GOLDEN=1"
    assert result.output == golden.read_text()


def test_the_patched_kernel_in_the_cover_letters_words():
    """The skip-level-3 patch on eager enable: the level-3 split visits go (65,536 -> 0) and the split
    calls' runtime falls; one run a side, so the stdev is n/a and said so."""
    out = CliRunner().invoke(app, ["compare", str(SAMPLES / "lab-arm64-eager-enable.tkcap"), "--",
                                   str(SAMPLES / "lab-arm64-skip3-eager-enable.tkcap"), "--json"])
    assert out.exit_code == 0, out.output
    import json

    rows = {m["metric"]: m for m in json.loads(out.output)["metrics"]}
    assert rows["L3 stage2_split_walker leaf:page visits"]["change_pct"] == -100.0
    split = rows["split calls runtime"]
    assert split["text"] == "-78.33% split calls runtime (stdev n/a: one run of A and B)"
    assert split["stdev_a"] is None and split["change_stdev_pct"] is None
