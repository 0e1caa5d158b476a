"""A/B comparison of repeated runs: per metric mean, stdev and relative change, kernel-patch style.

Contract
--------
:func:`capture_metrics` reduces one :class:`tracekit.analysis.analyze.Analysis` to named scalar
metrics (``metric`` -> ``(value, unit)``): every phase's duration (``phase <label>``, seconds) and
each phase name's total over its iterations (``phase <name> total``), per ioctl kind the mean and
total latency (``ioctl <NAME> mean`` / ``total``, seconds), guest walks (``walks``, count), per lock
the summed wait and the number of waits (``lock <name> wait`` seconds / ``lock <name> waits``),
splits inside dirty-log ioctls (``splits``), split calls and events (``split calls``) and arm64
stage-2 visits per level and kind (``stage2 L<level> <kind> visits``), all counts, and for captures
with a recording window the operations it cut (``partial operations``, count: ``info.partial.total``).

:func:`compare_runs` takes the metric dicts of runs A and runs B and returns one row per metric
present in both: ``metric``, ``unit``, ``n_a``, ``n_b``, ``mean_a``, ``stdev_a``, ``mean_b``,
``stdev_b`` (sample standard deviations, ddof = 1; 0 for one run), ``change_pct`` =
``100 * (mean_b - mean_a) / mean_a`` (null when ``mean_a`` is 0), ``stdev_pct`` = the larger of the
two relative stdevs in percent, ``noise`` (``within`` when Welch's ``|t| < 2``, i.e. the difference
is within about two standard errors; ``beyond`` otherwise; ``unknown`` with fewer than two runs on a
side) and ``text``: ``"-35.47% runtime (stdev 5.63%)"``, followed by ``", within noise"`` where it is.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = ["capture_metrics", "compare_runs", "format_change", "COMPARE_COLUMNS"]

COMPARE_COLUMNS = ["metric", "unit", "n_a", "n_b", "mean_a", "stdev_a", "mean_b", "stdev_b", "change_pct",
                   "stdev_pct", "noise", "text"]


def capture_metrics(result: Any) -> dict[str, tuple[float, str]]:
    """Scalar metrics of one analysed capture (see the module docstring)."""
    metrics: dict[str, tuple[float, str]] = {}
    phases = result.tables.get("phases")
    if phases is not None and len(phases):
        for label, duration in zip(phases["phase"], phases["duration_ns"]):
            metrics[f"phase {label}"] = (duration / 1e9, "s")
        for name, total in phases.groupby("name")["duration_ns"].sum().items():
            if (phases["name"] == name).sum() > 1:
                metrics[f"phase {name} total"] = (total / 1e9, "s")
    ioctl = result.tables.get("ioctl_latency")
    if ioctl is not None:
        for name, mean, total in zip(ioctl["cmd_name"], ioctl["mean_ns"], ioctl["total_ns"]):
            metrics[f"ioctl {name} mean"] = (float(mean) / 1e9, "s")
            metrics[f"ioctl {name} total"] = (float(total) / 1e9, "s")
    walk_depth = result.tables.get("walk_depth")  # one count per walk of the cut, like the walk frame's rows
    if walk_depth is not None:
        metrics["walks"] = (float(walk_depth["walks"].sum()), "count")
    locks = result.tables.get("lock_contention")
    if locks is not None and len(locks):
        for name, group in locks.groupby("lock"):
            metrics[f"lock {name} wait"] = (float(group["total_ns"].sum()) / 1e9, "s")
            metrics[f"lock {name} waits"] = (float(group["count"].sum()), "count")
    split = result.tables.get("split_per_ioctl")
    if split is not None and len(split):
        metrics["splits"] = (float(split["splits"].sum()), "count")
    calls = result.tables.get("split_calls")
    if calls is not None and len(calls):
        metrics["split calls"] = (float(calls["count"].sum()), "count")
    stage2 = result.tables.get("stage2_visits")
    if stage2 is not None:
        for level, kind, entries in zip(stage2["level"], stage2["kind"], stage2["entries"]):
            metrics[f"stage2 L{level} {kind} visits"] = (float(entries), "count")
    partial = result.info.get("partial")
    if partial and partial.get("window"):  # operations the recording window cut: a side's partiality shows
        metrics["partial operations"] = (float(partial["total"]), "count")
    return metrics


def format_change(change_pct: float | None, stdev_pct: float, what: str, noise: str) -> str:
    """``"-35.47% runtime (stdev 5.63%)"`` (+ ``", within noise"``)."""
    if change_pct is None or math.isnan(change_pct):
        return f"n/a {what} (baseline is 0)"
    text = f"{change_pct:+.2f}% {what} (stdev {stdev_pct:.2f}%)"
    if noise == "within":
        text += ", within noise"
    elif noise == "unknown":
        text += ", noise unknown (needs 2+ runs per side)"
    return text


def _stats(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def compare_runs(runs_a: Sequence[dict[str, tuple[float, str]]], runs_b: Sequence[dict[str, tuple[float, str]]]
                 ) -> pd.DataFrame:
    """One row per metric present in every run of both sides (see the module docstring)."""
    if not runs_a or not runs_b:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    common = set.intersection(*(set(r) for r in (*runs_a, *runs_b)))
    order = [m for m in runs_a[0] if m in common]
    rows = []
    for metric in order:
        unit = runs_a[0][metric][1]
        a = [r[metric][0] for r in runs_a]
        b = [r[metric][0] for r in runs_b]
        mean_a, sd_a = _stats(a)
        mean_b, sd_b = _stats(b)
        change = 100.0 * (mean_b - mean_a) / mean_a if mean_a else None
        rel = [sd / abs(m) * 100.0 for sd, m in ((sd_a, mean_a), (sd_b, mean_b)) if m]
        stdev_pct = max(rel) if rel else 0.0
        if len(a) < 2 or len(b) < 2:
            noise = "unknown"
        else:
            se = math.sqrt(sd_a**2 / len(a) + sd_b**2 / len(b))
            noise = "within" if (se == 0 and mean_a == mean_b) or (se > 0 and abs(mean_b - mean_a) / se < 2) else "beyond"
        what = metric if unit != "s" else f"{metric} time"
        rows.append({"metric": metric, "unit": unit, "n_a": len(a), "n_b": len(b), "mean_a": mean_a, "stdev_a": sd_a,
                     "mean_b": mean_b, "stdev_b": sd_b, "change_pct": change, "stdev_pct": stdev_pct, "noise": noise,
                     "text": format_change(change, stdev_pct, what, noise)})
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)
