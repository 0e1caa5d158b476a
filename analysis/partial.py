"""How much of a capture the recording window cut: partial operations, kept and marked or dropped.

:func:`partial_summary` is the ``partial`` section of ``tracekit analyze``: the recording window, the
recorder's counts of what it cut, the ioctls the analysis marks partial, walks without elements and
malformed walks, and their total.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from tracekit.analysis.walks import malformed_walks

__all__ = ["partial_summary", "partial_text"]


def partial_summary(manifest: dict, walk_counts: pd.DataFrame | None, ioctl: pd.DataFrame | None,
                    ioctl_summary: pd.DataFrame | None) -> dict[str, Any]:
    """The ``partial`` section of the analysis.

    Takes a capture's manifest, the walk counts of the analysis (a frame with ``depth`` and, for counted
    frames, ``walks``) and the ioctl rows and summary. Returns ``window`` (the manifest's recording window:
    clock, ``start_ns``, ``stop_ns``, ``seconds``; None for captures recorded before it existed), ``recorder``
    (the manifest's ``partial``: walk elements without their walk start or beyond the limit, lock waits begun
    before or unfinished at the window's edges (all dropped), ioctls begun before or unfinished (kept,
    marked)), ``ioctl_partial_calls`` (streamed rows plus the summary's ``partial``),
    ``walks_without_elements``, ``malformed_walks`` (more elements than one walk can have) and ``total``.
    Captures without the counters give what the rows show.
    """
    recorder = {k: int(v) for k, v in (manifest.get("partial") or {}).items() if isinstance(v, int)}
    out: dict[str, Any] = {"window": manifest.get("window"), "recorder": recorder}
    calls = 0
    if ioctl is not None and "partial" in ioctl.columns:
        calls += int((ioctl["partial"].fillna("").astype(str) != "").sum())
    if ioctl_summary is not None and "partial" in ioctl_summary.columns:
        calls += int(ioctl_summary["partial"].fillna(0).sum())
    out["ioctl_partial_calls"] = calls
    if walk_counts is not None and len(walk_counts):
        weights = walk_counts["walks"] if "walks" in walk_counts.columns else None
        empty = walk_counts["depth"] == 0
        out["walks_without_elements"] = int(weights[empty].sum()) if weights is not None else int(empty.sum())
        out["malformed_walks"] = malformed_walks(walk_counts["depth"], weights)
    else:
        out["walks_without_elements"] = out["malformed_walks"] = 0
    dropped = sum(v for k, v in recorder.items() if not k.startswith("ioctl_"))
    out["total"] = dropped + calls + out["walks_without_elements"] + out["malformed_walks"]
    return out


def partial_text(summary: dict[str, Any]) -> list[str]:
    """Lines for the text report: the window, then what was partial (or that nothing was)."""
    lines = []
    window = summary.get("window")
    if window and {"seconds", "start_ns", "stop_ns"} <= set(window):
        lines.append(f"  recording window: {window['seconds']:.3f} s of {window.get('clock', '?')}, every family "
                     f"from {window['start_ns']} to {window['stop_ns']} ns")
    else:
        lines.append("  recording window: not recorded (capture made before windows existed)")
    rec = summary.get("recorder", {})
    parts = [f"{n:,} {name.replace('_', ' ')}" for name, n in rec.items() if n]
    parts += [f"{summary[k]:,} {k.replace('_', ' ')}" for k in ("walks_without_elements", "malformed_walks")
              if summary.get(k)]
    lines.append("  partial operations: " + ("; ".join(parts) if parts else "none")
                 + f" (ioctl calls kept and marked partial: {summary.get('ioctl_partial_calls', 0):,})")
    return lines
