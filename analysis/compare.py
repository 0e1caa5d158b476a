"""A/B comparison of repeated runs, in the form of a kernel patch's cover letter.

Each analysed capture is reduced to named metrics (:class:`RunMetrics`); :func:`compare_runs` gives, per
metric, both sides' means and stdevs, the change in percent with its propagated stdev and Welch's
verdict on noise. docs/analysis.md ("Compare") gives the metrics and the formulas.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from tracekit.analysis.phases import lab_phases, matching_phases

__all__ = ["GROUPS", "COMPARE_COLUMNS", "RunMetrics", "capture_metrics", "compare_runs", "format_change", "lock_role",
           "mean_stdev"]

#: Metric groups, in the order they are shown.
GROUPS = ("phase", "ioctl", "level", "lock", "work")

COMPARE_COLUMNS = ["group", "metric", "unit", "n_a", "n_b", "mean_a", "stdev_a", "mean_b", "stdev_b",
                   "change_pct", "change_stdev_pct", "noise", "text"]

_ADDRESS = re.compile(r"0x[0-9a-f]+")
_PER_CALL = " runtime per call"


@dataclass
class RunMetrics:
    """One run's metrics: ``values[(group, metric)] = (value, unit)``; ``measured`` the groups whose
    tables the capture had (a metric of a measured group missing from ``values`` is 0)."""

    values: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)
    measured: set[str] = field(default_factory=set)

    def put(self, group: str, metric: str, value: float, unit: str) -> None:
        self.values[(group, metric)] = (float(value), unit)

    def add(self, group: str, metric: str, value: float, unit: str) -> None:
        old = self.values.get((group, metric), (0.0, unit))[0]
        self.values[(group, metric)] = (old + float(value), unit)


def _table(result: Any, key: str) -> pd.DataFrame | None:
    return result.tables.get(key)


def _phase_metrics(out: RunMetrics, result: Any, manifest: dict) -> None:
    phases = _table(result, "phases")
    if phases is None or phases.empty:
        phases = lab_phases(manifest)
    if result.info.get("phase") and not phases.empty:  # a phase cut: that phase's runtimes, not the others'
        phases = matching_phases(phases, result.info["phase"])
    if phases.empty:
        return
    for label, duration in zip(phases["phase"], phases["duration_ns"]):
        out.put("phase", f"{label} runtime", duration / 1e9, "s")
    for name, group in phases.groupby("name", sort=False):
        if len(group) > 1:
            out.put("phase", f"{name} runtime (all {len(group)})", group["duration_ns"].sum() / 1e9, "s")


def _ioctl_metrics(out: RunMetrics, result: Any) -> None:
    ioctl = _table(result, "ioctl_latency")
    if ioctl is None:
        return
    out.measured.add("ioctl")
    for name, count, total in zip(ioctl["cmd_name"], ioctl["count"], ioctl["total_ns"]):
        out.put("ioctl", f"{name} runtime", float(total) / 1e9, "s")
        out.put("ioctl", f"{name} calls", float(count), "count")
        if count:
            out.put("ioctl", f"{name}{_PER_CALL}", float(total) / count / 1e9, "s")
    memslot = _table(result, "memslot_latency")
    if memslot is not None:
        for (name, change), group in memslot.groupby(["cmd_name", "change"], sort=False):
            if change:
                out.add("ioctl", f"{name} {change} runtime", group["total_ns"].sum() / 1e9, "s")
                out.add("ioctl", f"{name} {change} calls", group["count"].sum(), "count")


def _level_metrics(out: RunMetrics, result: Any) -> None:
    visits = _table(result, "walk_visits_vs_model")
    if visits is not None and "observed" in visits:
        out.measured.add("level")
        for level, observed in zip(visits["level"], visits["observed"]):
            out.add("level", f"L{level} guest PTE reads", observed, "count")
    stage2 = _table(result, "stage2_visits")
    if stage2 is not None:
        out.measured.add("level")
        for level, visitor, kind, entries in zip(stage2["level"], stage2["visitor"], stage2["kind"], stage2["entries"]):
            out.add("level", f"L{level} {visitor} {kind} visits", entries, "count")


def lock_role(name: str) -> str:
    """``mmu_lock`` (or another name analyze gave) stays; a bare address becomes ``other locks``."""
    return "other locks" if _ADDRESS.fullmatch(str(name)) else str(name)


def _lock_metrics(out: RunMetrics, result: Any) -> None:
    locks = _table(result, "lock_contention")
    if locks is None:
        return
    out.measured.add("lock")
    for lock, operation, mode, count, total in zip(locks["lock"], locks["operation"], locks["mode"],
                                                    locks["count"], locks["total_ns"]):
        key = f"{lock_role(lock)} {operation} {mode}"
        out.add("lock", f"{key} wait", float(total) / 1e9, "s")
        out.add("lock", f"{key} waits", count, "count")


def _work_metrics(out: RunMetrics, result: Any) -> None:
    walk_depth = _table(result, "walk_depth")  # one count per walk of the cut, like the walk frame's rows
    if walk_depth is not None:
        out.put("work", "guest walks", walk_depth["walks"].sum(), "count")
    split = _table(result, "split_per_ioctl")
    if split is not None:
        out.put("work", "splits in dirty-log ioctls", split["splits"].sum(), "count")
    calls = _table(result, "split_calls")
    if calls is not None:
        out.measured.add("work")
        for source, level, count, total in zip(calls["source"], calls["level"], calls["count"], calls["total_ns"]):
            what = "split calls" if source == "call" else f"split {source}s"
            where = "" if level is None or pd.isna(level) or level == -1 else f" L{level}"
            out.add("work", f"{what}{where}", count, "count")
            if source == "call":
                out.add("work", f"{what}{where} runtime", float(total) / 1e9, "s")
    partial = result.info.get("partial")
    if partial and partial.get("window"):  # operations the recording window cut: a side's partiality shows
        out.put("work", "partial operations", partial["total"], "count")


def capture_metrics(result: Any, manifest: dict | None = None) -> RunMetrics:
    """The metrics of one analysed capture (see the module docstring); ``manifest`` supplies a lab run's
    steps when the analysis found no phases."""
    out = RunMetrics()
    _phase_metrics(out, result, manifest or {})
    _ioctl_metrics(out, result)
    _level_metrics(out, result)
    _lock_metrics(out, result)
    _work_metrics(out, result)
    return out


def format_change(change_pct: float | None, stdev_pct: float | None, what: str, why_no_stdev: str = "") -> str:
    """``"-35.47% runtime (stdev 5.63%)"``; ``"(stdev n/a: WHY)"`` without a stdev."""
    if change_pct is None or math.isnan(change_pct):
        return f"n/a {what} (A is 0)"
    if stdev_pct is None or math.isnan(stdev_pct):
        return f"{change_pct:+.2f}% {what} (stdev n/a{': ' + why_no_stdev if why_no_stdev else ''})"
    return f"{change_pct:+.2f}% {what} (stdev {stdev_pct:.2f}%)"


def mean_stdev(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (ddof 1; None for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def _values(runs: Sequence[RunMetrics], key: tuple[str, str]) -> list[float] | None:
    """The metric in every run (0 where the run measured its group but not the metric), else None."""
    out = []
    for run in runs:
        if key in run.values:
            out.append(run.values[key][0])
        elif key[0] in run.measured and not key[1].endswith(_PER_CALL):  # no call has no runtime per call
            out.append(0.0)
        else:
            return None
    return out


def _fixed_calls(runs: Sequence[RunMetrics], key: tuple[str, str]) -> bool:
    """A per-call runtime where every run made the same number of calls: the runtime row rescaled."""
    if not key[1].endswith(_PER_CALL):
        return False
    calls = {run.values.get((key[0], key[1].removesuffix(_PER_CALL) + " calls"), (0.0,))[0] for run in runs}
    return len(calls) == 1


#: Two-sided 95% critical values of Student's t by degrees of freedom (1-30); 1.96 beyond.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def _t95(df: float) -> float:
    """The critical value for ``df`` degrees of freedom, rounded down (the stricter side)."""
    whole = int(math.floor(df))
    return _T95[max(whole, 1) - 1] if whole <= len(_T95) else 1.96


def _noise(a: list[float], b: list[float], sd_a: float | None, sd_b: float | None) -> str:
    if len(set(a) | set(b)) == 1:
        return "identical"
    if sd_a is None or sd_b is None:
        return "unknown"
    va, vb = sd_a**2 / len(a), sd_b**2 / len(b)
    difference = abs(float(np.mean(b)) - float(np.mean(a)))
    if va + vb == 0:  # each side constant, the sides differ
        return "beyond"
    df = (va + vb) ** 2 / ((va**2 / (len(a) - 1) if va else 0.0) + (vb**2 / (len(b) - 1) if vb else 0.0))
    return "beyond" if difference / math.sqrt(va + vb) >= _t95(df) else "within"


def compare_runs(runs_a: Sequence[RunMetrics], runs_b: Sequence[RunMetrics]) -> pd.DataFrame:
    """One row per metric both sides measured, by group (see the module docstring)."""
    if not runs_a or not runs_b:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    keys: dict[tuple[str, str], str] = {}
    for run in (*runs_a, *runs_b):
        for key, (_, unit) in run.values.items():
            keys.setdefault(key, unit)
    rows = []
    for (group, metric), unit in keys.items():
        a, b = _values(runs_a, (group, metric)), _values(runs_b, (group, metric))
        if a is None or b is None or _fixed_calls((*runs_a, *runs_b), (group, metric)):
            continue
        mean_a, sd_a = mean_stdev(a)
        mean_b, sd_b = mean_stdev(b)
        change = 100.0 * (mean_b - mean_a) / mean_a if mean_a else None
        change_sd = None
        if change is not None and sd_a is not None and sd_b is not None:
            change_sd = 100.0 * math.sqrt(sd_b**2 + (mean_b * sd_a / mean_a) ** 2) / abs(mean_a)
        single = " and ".join(side for side, sd in (("A", sd_a), ("B", sd_b)) if sd is None)
        rows.append({"group": group, "metric": metric, "unit": unit, "n_a": len(a), "n_b": len(b),
                     "mean_a": mean_a, "stdev_a": sd_a, "mean_b": mean_b, "stdev_b": sd_b, "change_pct": change,
                     "change_stdev_pct": change_sd, "noise": _noise(a, b, sd_a, sd_b),
                     "text": format_change(change, change_sd, metric, f"one run of {single}" if single else "")})
    table = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    order = {group: i for i, group in enumerate(GROUPS)}
    return table.sort_values("group", key=lambda g: g.map(order), kind="stable").reset_index(drop=True)
