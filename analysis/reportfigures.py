"""The HTML report's figures, drawn with matplotlib (Agg, never a display) as PNG bytes.

Each ``*_figure`` function returns a :class:`Figure` (name, caption, PNG, points drawn) or None when the
capture has no data for it; :data:`FIGURES` lists them in page order (docs/report.md).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from tracekit.analysis.common import format_ns
from tracekit.analysis.reportdata import LATENCY_EDGES_NS, MIN_SAMPLES, TIMELINE_BINS, ReportData
from tracekit.analysis.reportevents import KINDS
from tracekit.render import agg_pyplot

__all__ = ["FIGURES", "Figure", "time_unit", "all_figures"]

FIGURES = ("where-time-goes", "timeline", "walk-depth", "visits-vs-model", "stage2-levels", "latency")


@dataclass
class Figure:
    name: str
    caption: str
    png: bytes
    points: int


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    agg_pyplot().close(fig)
    return buffer.getvalue()


def time_unit(span_ns: float) -> tuple[str, float]:
    """The unit (``s``, ``ms`` or ``µs``) and its size in ns for an axis spanning ``span_ns``."""
    if span_ns >= 2e9:
        return "s", 1e9
    if span_ns >= 2e6:
        return "ms", 1e6
    return "µs", 1e3


def _count_text(value: float) -> str:
    return f"{int(value):,}"


def _log_bars(ax: Any, categories: list[str], bars: list[tuple[str, list[float]]], ylabel: str) -> int:
    """Grouped bars on a log axis, each labelled with its value (zeros as a "0" on the baseline);
    returns the number of nonzero bars."""
    x = np.arange(len(categories))
    width = 0.8 / max(len(bars), 1)
    top = max([max(v) for _, v in bars if len(v)] + [1])
    drawn = 0
    for i, (label, values) in enumerate(bars):
        positions = x + i * width - 0.4 + width / 2
        heights = np.asarray(values, dtype=float)
        ax.bar(positions, np.where(heights > 0, heights, np.nan), width, label=label)
        for position, value in zip(positions, heights):
            ax.text(position, value if value > 0 else 1, _count_text(value), ha="center", va="bottom",
                    fontsize=7, rotation=90 if len(categories) * len(bars) > 8 else 0)
            drawn += value > 0
    ax.set_yscale("log")
    ax.set_ylim(0.8, top * 12)
    ax.set_xlim(-0.5, len(categories) - 0.5)  # a group's zero bars (not drawn) keep their place
    ax.set_xticks(x)
    ax.set_xticklabels(categories)
    ax.set_ylabel(f"{ylabel} (log scale)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    return drawn


def _where_time_goes(data: ReportData) -> Figure | None:
    table = data.time_table()
    table = table[table["total_ns"] > 0].head(16)
    if table.empty:
        return None
    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(10, 0.8 + 0.32 * len(table)))
    y = np.arange(len(table))[::-1]
    ax.barh(y, table["total_ns"] / 1e6, color=[KINDS[k] for k in table["kind"]])
    for yi, (total, calls, per_call) in zip(y, table[["total_ns", "calls", "per_call"]].itertuples(index=False)):
        ax.text(total / 1e6 * 1.08, yi, f"{format_ns(total)} · {calls:,} call{'s' if calls != 1 else ''}"
                + ("" if per_call else " (kernel total)"), va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(table["what"], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(left=max(table["total_ns"].min() / 1e6 / 3, 1e-4), right=table["total_ns"].max() / 1e6 * 30)
    ax.set_xlabel("total time (ms, log scale)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=KINDS[k]) for k in dict.fromkeys(table["kind"])]
    ax.legend(handles, list(dict.fromkeys(table["kind"])), fontsize=8, loc="lower right")
    return Figure("where-time-goes", "Where the time goes: total time per activity (log scale). Activities nest "
                  "(faults, walks and lock waits happen inside KVM_RUN or an ioctl), so the bars do not add up.",
                  _png(fig), len(table))


def _phase_lane(top: Any, data: ReportData, scale: float, min_width: float) -> None:
    """The phases as a Gantt chart: one line per phase name, its iterations side by side."""
    plt = agg_pyplot()
    names = list(dict.fromkeys(str(p).split("#")[0] for p in data.phases["phase"]))
    for phase in data.phases.itertuples(index=False):
        name = str(phase.phase).split("#")[0]
        y = len(names) - 1 - names.index(name)
        left, right = (phase.start_ns - data.t0_ns) / scale, (phase.end_ns - data.t0_ns) / scale
        colour = plt.cm.tab10(names.index(name) % 10)
        top.broken_barh([(left, max(right - left, min_width))], (y + 0.15, 0.7), color=colour)
    top.set_ylim(0, max(len(names), 1))
    top.set_yticks(np.arange(len(names)) + 0.5)
    top.set_yticklabels(names[::-1], fontsize=7)
    top.tick_params(axis="y", length=0)
    top.grid(axis="x", alpha=0.3)


def _timeline(data: ReportData) -> Figure | None:
    aggregated = data.aggregated
    lanes = {key: value for key, value in data.lanes.items() if value[0].any() or value[1].any()}
    if not lanes:
        return None
    kinds = [k for k in data.kinds if any(kind == k for _, kind in lanes) or (k == "KVM_RUN" and aggregated)]
    rows = [r for r in data.rows if r in aggregated or any(row == r for row, _ in lanes)]  # none left empty
    plt = agg_pyplot()
    lane_h = 0.26
    phase_names = len(set(str(p).split("#")[0] for p in data.phases["phase"])) if len(data.phases) else 0
    main_h = lane_h * len(kinds) * len(rows) + 0.3 * len(rows)
    fig, (top, ax) = plt.subplots(2, 1, sharex=True, figsize=(11, 1.2 + main_h + 0.22 * phase_names),
                                  gridspec_kw={"height_ratios": [max(phase_names, 1) * 0.22, main_h]})
    span = data.view_end_ns - data.view_start_ns
    unit, scale = time_unit(data.view_end_ns - data.t0_ns)
    bin_w = span / TIMELINE_BINS / scale
    starts = (data.view_start_ns - data.t0_ns + np.arange(TIMELINE_BINS) * span / TIMELINE_BINS) / scale
    if phase_names:
        _phase_lane(top, data, scale, bin_w)
    else:
        top.set_visible(False)
    points = 0
    row_h = lane_h * len(kinds) + 0.3
    ticks, labels = [], []
    for r, row in enumerate(rows):
        base = (len(rows) - 1 - r) * row_h
        ticks.append(base + lane_h * len(kinds) / 2)
        labels.append(row)
        if r:
            ax.axhline(base + row_h - 0.15, color="#bbb", lw=0.6)
        for k, kind in enumerate(kinds):
            y = base + (len(kinds) - 1 - k) * lane_h
            counts, busy = lanes.get((row, kind), (None, None))
            if counts is None:
                if kind == "KVM_RUN" and row in aggregated:
                    ax.text(starts[0], y + lane_h / 2, " " + aggregated[row], fontsize=7, va="center",
                            color=KINDS[kind])
                continue
            occupancy = np.minimum(busy / (span / TIMELINE_BINS), 1.0)
            density = np.log1p(counts) / max(np.log1p(counts.max()), 1e-9)
            height = np.where(busy > 0, np.maximum(occupancy, 0.3), np.where(counts > 0, np.maximum(density, 0.3), 0))
            nonzero = height > 0
            ax.bar(starts[nonzero], height[nonzero] * lane_h * 0.9, bin_w, bottom=y, align="edge",
                   color=KINDS[kind], lw=0)
            points += int(nonzero.sum())
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(-0.1, len(rows) * row_h)
    ax.set_xlim(starts[0], starts[0] + span / scale)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"time since {data.origin} ({unit})")
    handles = [plt.Rectangle((0, 0), 1, 1, color=KINDS[k]) for k in kinds]
    (top if phase_names else ax).legend(handles, kinds, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                                        ncol=min(len(kinds), 9), frameon=False)
    fig.subplots_adjust(hspace=0.04)
    outside = (f" {data.outside:,} events before or after the phases are not drawn (the table above counts them)."
               if data.outside else "")
    return Figure("timeline", f"Timeline per thread: each row a vCPU or other thread, one lane per activity "
                  f"({TIMELINE_BINS} bins of {format_ns(span / TIMELINE_BINS)}; a span fills its bins, instants "
                  f"are drawn taller the more fall in a bin); the phases above.{outside}", _png(fig), points)


def _walk_depth(result: Any) -> Figure | None:
    table = result.tables.get("walk_depth")
    if table is None or table.empty:
        return None
    per = table.groupby(["vcpu", "depth"])["walks"].sum().unstack(fill_value=0)
    depths = [int(d) for d in per.columns]
    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    bars = [(f"vCPU {vcpu}" if vcpu >= 0 else "other threads", per.loc[vcpu].tolist()) for vcpu in per.index]
    points = _log_bars(ax, [f"{d} levels" for d in depths], bars, "walks")
    ax.set_xlabel("guest walk depth (levels read)")
    return Figure("walk-depth", "Guest walks per depth and vCPU (log scale: the few deeper walks stay visible)",
                  _png(fig), points)


def _visits_vs_model(result: Any) -> Figure | None:
    split = result.tables.get("split_visits_vs_model")
    walk = result.tables.get("walk_visits_vs_model")
    frame = split if split is not None and len(split) else walk
    if frame is None or frame.empty:
        return None
    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    columns = [c for c in frame.columns if c != "level"]
    bars = [(c.replace("model_", "model: ").replace("_", " "), frame[c].tolist()) for c in columns]
    points = _log_bars(ax, [f"level {int(level)}" for level in frame["level"]], bars, "visits")
    kind = "split-walker LEAF visits" if frame is split else "guest PTE reads"
    ax.set_xlabel("page-table level")
    return Figure("visits-vs-model", f"Observed against the model per level ({kind}; log scale)", _png(fig), points)


def _stage2_levels(result: Any) -> Figure | None:
    table = result.tables.get("stage2_visits")
    if table is None or table.empty:
        return None
    per = table.groupby(["initiator", "level"])["entries"].sum().unstack(fill_value=0)
    levels = [int(level) for level in per.columns]
    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    bars = [(str(initiator), per.loc[initiator].tolist()) for initiator in per.index]
    points = _log_bars(ax, [f"level {level}" for level in levels], bars, "entries visited")
    ax.set_xlabel("stage-2 level")
    return Figure("stage2-levels", "Stage-2 (TDP) entries visited per level, per walk initiator (log scale)",
                  _png(fig), points)


def _latency(data: ReportData) -> Figure | None:
    shown = data.distributions()[:8]
    if not shown:
        return None
    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for series in shown:
        counts = series.hist[1:-1]
        keep = counts > 0
        cdf = np.cumsum(counts) / max(counts.sum(), 1)
        ax.step(LATENCY_EDGES_NS[1:][keep] / 1e3, cdf[keep], where="post",
                label=f"{series.label} (n={series.count:,})")
    ax.set_xscale("log")
    ax.set_xlabel("latency (µs, log scale)")
    ax.set_ylabel("fraction of calls at or below")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return Figure("latency", f"Latency distributions of the series with at least {MIN_SAMPLES} "
                  "calls (the others are listed below)", _png(fig), sum(s.count for s in shown))


def all_figures(result: Any, data: ReportData) -> list[Figure]:
    """Every figure the capture has data for, in :data:`FIGURES` order."""
    made = [_where_time_goes(data), _timeline(data), _walk_depth(result), _visits_vs_model(result),
            _stage2_levels(result), _latency(data)]
    return [figure for figure in made if figure is not None]
