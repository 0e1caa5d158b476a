"""One self-contained HTML page per capture: figures, tables and the cross-check verdicts.

Contract
--------
:func:`render_report` turns an :class:`tracekit.analysis.analyze.Analysis` into HTML text; every
figure is a matplotlib PNG (Agg backend, never a display) embedded as a ``data:`` URI, so the page
needs no other file and no network. Figures, each an ``<img class="figure" data-figure="NAME">``
with a caption, drawn when the data exists:

- ``walk-depth``: walks per depth, one bar per vCPU (from the ``walk_depth`` table);
- ``contention-timeline``: lock wait time per 10 ms bin, per lock (mmu_lock named);
- ``latency-cdf``: empirical CDFs of ioctl latency per kind (log time axis);
- ``visits-vs-model``: visits per level, observed against the model (guest PTE reads for x86,
  split-walker LEAF visits with and without skip flags for arm64).

Above them, what the recording window cut (the text report's partial lines); below them: the verdicts (model cross-check, skipped levels, mmu_lock) and the tables of
:func:`tracekit.analysis.analyze.render_text` as HTML tables. :func:`write_report` writes the page;
it raises CaptureFormatError when the path cannot be written.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracekit.analysis.analyze import HEX_COLUMNS, Analysis
from tracekit.analysis.common import format_hex, format_ns
from tracekit.analysis.crosscheck import match_text
from tracekit.analysis.locks import contention_timeline
from tracekit.analysis.partial import partial_text
from tracekit.errors import CaptureFormatError

__all__ = ["FIGURES", "render_report", "write_report"]

FIGURES = ("walk-depth", "contention-timeline", "latency-cdf", "visits-vs-model")
_TIMESTAMPS = {"ts_ns", "start_ns", "end_ns", "t_ns"}

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}th{background:#f4f4f4}
figure{display:inline-block;margin:.5em}figcaption{font-size:.85em;color:#555}
.verdict{font-weight:bold}.yes{color:#b35c00}.no,.match{color:#17703a}.mismatch{color:#b00020}
"""


def _figure_png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _new_figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.4, 3.6))


def _frame(result: Analysis, key: str) -> pd.DataFrame | None:
    frame = result.frames.get(key)
    return None if frame is None or frame.empty else frame


def _labels(ax: Any, xlabel: str, ylabel: str, legend_size: int = 8, legend_loc: str = "best") -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=legend_size, loc=legend_loc)


def _grouped_bars(ax: Any, x: np.ndarray, bars: list[tuple[str, Any]]) -> None:
    """Side by side at each ``x``, one bar per ``(label, heights)``, together 0.8 wide."""
    width = 0.8 / len(bars)
    for i, (label, heights) in enumerate(bars):
        ax.bar(x + i * width - 0.4 + width / 2, heights, width, label=label)


def _walk_depth_figure(result: Analysis):
    table = result.tables.get("walk_depth")
    if table is None or table.empty:
        return None
    fig, ax = _new_figure()
    per = table.groupby(["vcpu", "depth"])["walks"].sum().unstack(fill_value=0)
    depths = np.arange(0, int(per.columns.max()) + 1)
    per = per.reindex(columns=depths, fill_value=0)
    _grouped_bars(ax, depths, [(f"vCPU {vcpu}" if vcpu >= 0 else "other threads", row.to_numpy())
                               for vcpu, row in per.iterrows()])
    ax.set_xticks(depths)
    _labels(ax, "walk depth (guest levels read)", "walks")
    return fig, "Guest walk depth per vCPU"


def _timeline_figure(result: Analysis):
    waits = _frame(result, "waits")
    if waits is None:
        return None
    mmu = result.verdicts.get("mmu_lock")
    if mmu is not None and mmu.get("lock_addr") is None:
        mmu = None
    timeline = contention_timeline(waits, mmu)
    t0 = int(timeline["t_ns"].min())
    fig, ax = _new_figure()
    top = timeline.groupby("lock")["wait_ns"].sum().sort_values(ascending=False).index[:5]
    for lock in top:
        part = timeline[timeline["lock"] == lock]
        ax.plot((part["t_ns"] - t0) / 1e9, part["wait_ns"] / 1e6, drawstyle="steps-post", label=lock)
    _labels(ax, "time (s from first wait)", "wait per 10 ms (ms)")
    return fig, "Lock contention timeline (top locks by total wait)"


def _cdf_figure(result: Analysis):
    ioctl = _frame(result, "ioctl")
    if ioctl is None:
        return None
    fig, ax = _new_figure()
    busiest = ioctl["cmd_name"].value_counts().index[:8]
    for name, group in ioctl[ioctl["cmd_name"].isin(busiest)].groupby("cmd_name"):
        values = np.sort(group["duration_ns"].to_numpy(np.float64))
        values = np.maximum(values, 1.0)
        ax.step(values / 1e3, np.arange(1, len(values) + 1) / len(values), where="post", label=f"{name} ({len(values)})")
    ax.set_xscale("log")
    _labels(ax, "latency (us)", "fraction of calls", 7, "lower right")
    return fig, "ioctl latency CDFs (the 8 most frequent kinds)"


def _visits_figure(result: Analysis):
    split = result.tables.get("split_visits_vs_model")
    walk = result.tables.get("walk_visits_vs_model")
    frame = split if split is not None and len(split) else walk
    if frame is None or frame.empty:
        return None
    fig, ax = _new_figure()
    x = np.arange(len(frame))
    _grouped_bars(ax, x, [(column.replace("_", " "), frame[column]) for column in frame.columns if column != "level"])
    ax.set_xticks(x)
    ax.set_xticklabels([f"L{int(level)}" for level in frame["level"]])
    _labels(ax, "level", "visits")
    kind = "split-walker LEAF visits" if frame is split else "guest PTE reads"
    return fig, f"Visits per level against the model ({kind})"


def _table_html(frame: pd.DataFrame, limit: int = 50) -> str:
    shown = frame.head(limit).copy()
    for column in shown.columns:
        if str(column).endswith("_ns") and column not in _TIMESTAMPS:
            shown[column] = shown[column].map(format_ns)
        elif column in HEX_COLUMNS:
            shown[column] = shown[column].map(format_hex)
    text = shown.to_html(index=False, border=0, na_rep="-", escape=True)
    if len(frame) > limit:
        text += f"<p>{len(frame) - limit} more rows: see <code>tracekit analyze --json</code>.</p>"
    return text


def _verdicts_html(result: Analysis) -> str:
    items = []
    v = result.verdicts.get("crosscheck")
    if v:
        if v.get("compared"):
            text = match_text(v, "match the model")
            if v.get("cut_short"):
                text += f"; {v['cut_short']:,} walks cut short by lost events were not judged"
            if v.get("outside_model"):
                text += f"; {v['outside_model']:,} walks of addresses the model does not cover were not compared"
        else:
            text = v.get("evidence", "")
        items.append(f"<li>Model cross-check: <span class='verdict {html.escape(v['verdict'])}'>"
                     f"{html.escape(v['verdict'])}</span>: {html.escape(text)}</li>")
    v = result.verdicts.get("walk_causes")
    if v:
        items.append(f"<li>Walk causes: <span class='verdict'>{v['fault']:,} fault, {v['emulation']:,} emulation"
                     + (f", {v['unknown']:,} unknown" if v["unknown"] else "") + f"</span>: {html.escape(v['evidence'])}</li>")
    v = result.verdicts.get("skip_levels")
    if v:
        items.append(f"<li>This kernel's split walker skips levels: <span class='verdict {v['verdict'].split()[0]}'>"
                     f"{html.escape(v['verdict'])}</span>: {html.escape(v['evidence'])}</li>")
    v = result.verdicts.get("mmu_lock")
    if v:
        where = f"{v['lock_addr']:#x}" if v.get("lock_addr") is not None else "not identified"
        items.append(f"<li>VM mmu_lock: <span class='verdict'>{where}</span>: {html.escape(v['evidence'])}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def render_report(result: Analysis) -> str:
    """The HTML page of ``result`` (see the module docstring)."""
    info = result.info
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>tracekit report: {html.escape(Path(info['path']).name)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>tracekit report: {html.escape(info['path'])}</h1>",
             f"<p>kernel {html.escape(str(info.get('kernel_release')))}, {html.escape(str(info.get('arch')))}, "
             f"source {html.escape(str(info.get('source')))}, status {html.escape(str(info.get('status')))}"
             + (f", phase {html.escape(info['phase'])}" if info.get("phase") else "") + "</p>"]
    if info.get("lost_events"):
        parts.append(f"<p class='mismatch'>{info['lost_events']:,} events were lost while recording: "
                     "counts are lower bounds.</p>")
    if info.get("phase_note"):
        parts.append(f"<p>Phases: {html.escape(info['phase_note'])}.</p>")
    if info.get("vm_note"):
        parts.append(f"<p>VMs: {html.escape(info['vm_note'])}.</p>")
    if "partial" in info:  # what the recording window cut, as the text report says it
        parts.append("<p class='partial'>" + "<br>".join(html.escape(line.strip()) for line in partial_text(info["partial"]))
                     + "</p>")
    parts.append("<h2>Verdicts</h2>" + _verdicts_html(result))
    parts.append("<h2>Figures</h2>")
    makers = {"walk-depth": _walk_depth_figure, "contention-timeline": _timeline_figure,
              "latency-cdf": _cdf_figure, "visits-vs-model": _visits_figure}
    drawn = 0
    for name in FIGURES:
        made = makers[name](result)
        if made is None:
            continue
        fig, caption = made
        parts.append(f"<figure><img class='figure' data-figure='{name}' alt='{html.escape(caption)}' "
                     f"src='data:image/png;base64,{_figure_png(fig)}'><figcaption>{html.escape(caption)}"
                     "</figcaption></figure>")
        drawn += 1
    if not drawn:
        parts.append("<p>No figure: the capture has none of the data they need.</p>")
    parts.append("<h2>Tables</h2>")
    for key, table in result.tables.items():
        parts.append(f"<h3>{html.escape(key.replace('_', ' '))}</h3>" + _table_html(table))
    skipped = info.get("skipped") or {}
    if skipped:
        parts.append("<h2>Not analysed</h2><ul>" + "".join(
            f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in skipped.items()) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(result: Analysis, path: str | os.PathLike) -> None:
    """Write :func:`render_report` of ``result`` to ``path``."""
    target = Path(path)
    if target.is_symlink():
        raise CaptureFormatError(f"refusing to write through a symlink: {target}")
    try:
        target.write_text(render_report(result), encoding="utf-8")
    except OSError as error:
        raise CaptureFormatError(f"cannot write {target}: {error.strerror or error}") from error
