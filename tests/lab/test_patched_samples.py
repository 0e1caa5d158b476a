"""Replay the lab captures of the project's own kernel patches (samples/LAB.md) against the model.

``lab-arm64-skip3-*``: Debian's linux-source-6.12 built by ``tracekit lab kernel build --patch
split-skip-level3 --patch coalesce-unmap-first`` and booted with ``tracekit lab arm64 --kernel``; their unpatched counterparts are the
``lab-arm64-*`` captures of Debian's own 6.12 kernels. ``lab-arm64-rebuild-shared*``: the coalescing order
(``coalesce-unmap-first``) against Debian's. Counts only; durations are the emulator's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tracekit.analysis.analyze import analyze_capture
from tracekit.analysis.coalescing import coalesce_summary
from tracekit.analysis.skiplevels import kernel_candidate, scenario_for, split_visits_vs_model, split_walks
from tracekit.capture import open_capture

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
#: (faults in a replacement's invalid window, replacements met) of the recorded runs: racy, fixed by the samples.
GOLDEN_WINDOW_HITS = {"vanilla": (241, 14), "patched": (199, 17)}
#: scenario -> split-walker LEAF visits per level, unpatched and with SKIP_LEVEL3 (also the model's, checked below).
VISITS = {
    "eager-enable": ({2: 128, 3: 65_536}, {2: 128}),
    "eager-clear": ({2: 128, 3: 65_536}, {2: 128}),
    "resplit": ({2: 128, 3: 131_072}, {2: 128}),
    "hugetlb-1g": ({1: 1, 2: 512, 3: 262_144}, {1: 1, 2: 512}),
}


def _capture(name: str):
    path = SAMPLES / f"{name}.tkcap"
    if not path.exists():
        pytest.fail(f"sample {path.name} is missing from samples/")
    return open_capture(path)


def _per_level(cap) -> tuple[dict[int, int], dict[int, int], dict[int, int], str]:
    """Observed split-walker LEAF visits per level, the no-skip and skip-3 models', and the walk flags."""
    walk, visit = cap.dataframe("stage2_walk"), cap.dataframe("stage2_visit")
    splits = split_walks(walk, visit)
    comparison = split_visits_vs_model(walk, visit, scenario_for(cap.manifest, splits), splits)
    sums = comparison.groupby("level")[["observed", "model_no_skip", "model_skip_3"]].sum()

    def nonzero(column: str) -> dict[int, int]:
        return {int(level): int(n) for level, n in sums[column].items() if n}

    return nonzero("observed"), nonzero("model_no_skip"), nonzero("model_skip_3"), kernel_candidate(splits)[1]


@pytest.mark.parametrize("scenario", sorted(VISITS))
def test_skip_level3_patch_drops_visits_as_the_model_predicts(scenario):
    """The patched kernel's split walks pass LEAF|SKIP_LEVEL3 and visit exactly what the skip-3 model says; the
    unpatched kernel's pass LEAF and visit what the no-skip model says; the split calls are the same."""
    unpatched, patched = VISITS[scenario]
    cap = _capture(f"lab-arm64-skip3-{scenario}")
    build = cap.manifest["lab_kernel"]["build"]
    # built with both of the project's patches: coalesce-unmap-first changes only the table-to-block path
    assert [p["name"] for p in build["patches"]] == ["split-skip-level3.patch", "coalesce-unmap-first.patch"]
    assert cap.manifest["kernel_release"] == build["release"] and build["source"].startswith("debian:linux-source-6.12")
    observed, no_skip, skip_3, flags = _per_level(cap)
    assert flags == "LEAF|SKIP_LEVEL3"
    assert observed == skip_3 == patched and no_skip == unpatched
    vanilla = _capture(f"lab-arm64-{scenario}")
    observed, no_skip, skip_3, flags = _per_level(vanilla)
    assert flags == "LEAF" and observed == no_skip == unpatched and skip_3 == patched
    assert len(vanilla.dataframe("split")) == len(cap.dataframe("split"))


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(VISITS))
def test_skip_verdict_flips_from_no_to_yes_on_the_patched_kernel(scenario):
    assert analyze_capture(_capture(f"lab-arm64-{scenario}")).verdicts["skip_levels"]["verdict"] == "no"
    verdict = analyze_capture(_capture(f"lab-arm64-skip3-{scenario}")).verdicts["skip_levels"]
    assert verdict["verdict"] == "yes" and "model_skip_3" in verdict["matches"]


def test_coalescing_order_and_the_faults_in_its_invalid_window():
    """Debian's 6.12 installs the block first (model order ``new``: 2 steps unmapped per replacement); the
    coalesce-unmap-first kernel clears the 512 pages first (order ``old``: 515). Both replace the 128 tables the
    split left; 2 vCPUs writing in the same order meet some replacements in their invalid window."""
    vanilla = _capture("lab-arm64-rebuild-shared")
    patched = _capture("lab-arm64-unmap-first-rebuild-shared")
    assert "coalesce-unmap-first.patch" in [p["name"] for p in patched.manifest["lab_kernel"]["build"]["patches"]]
    assert "build" not in vanilla.manifest["lab_kernel"]
    found = {}
    for name, cap in (("vanilla", vanilla), ("patched", patched)):
        summary = coalesce_summary(cap.dataframe("stage2_walk"), cap.dataframe("stage2_visit"))
        assert summary["rebuilds"] == 128 and len(cap.dataframe("split")) == 128
        assert summary["model"]["new"]["unmapped_steps"] == 2 * 128 and summary["model"]["old"]["unmapped_steps"] == 515 * 128
        found[name] = (summary["window_hits"], summary["rebuilds_hit"])
    assert found == GOLDEN_WINDOW_HITS
