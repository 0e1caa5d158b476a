"""The fleet summary as text tables, a JSON document and one self-contained HTML page with figures.

:func:`summary_text` gives two tables (per group, then per capture) of the headline columns, sized as
every tracekit table is (:mod:`tracekit.render`); :func:`summary_json` the ``tracekit.fleet-summary/1``
document (docs/fleet.md: every figure of every group and capture, and the captures left out);
:func:`summary_html` a page with the same tables and matplotlib figures embedded as PNG ``data:`` URIs
(``latency``: p50 and p99 of CLEAR, split and lock-wait latency per group; ``walk-depth``: guest walks
per depth and stage-2 visits per level, as shares per group; ``splits-per-op``: huge-page splits per
dirty-log enable / CLEAR).
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np
import pandas as pd

from tracekit.analysis.common import format_ns, format_table
from tracekit.fleet.summary import FleetSummary
from tracekit.render import agg_pyplot

__all__ = ["SCHEMA", "HTML_FIGURES", "summary_text", "summary_json", "summary_html", "verdicts_text"]

SCHEMA = "tracekit.fleet-summary/1"
HTML_FIGURES = ("latency", "walk-depth", "splits-per-op")

_DEPTHS = [f"walks_depth_{d}" for d in range(1, 6)]
_LEVELS = [f"stage2_visits_l{lv}" for lv in range(5)]


def _mix(row: dict, columns: list[str], total: str, label: str) -> str:
    """``"3:86% 4:14%"``: the non-zero shares of ``columns`` in ``row[total]`` ("-" when none)."""
    whole = row.get(total) or 0
    if not whole:
        return "-"
    parts = [f"{label}{c[-1]}{'+' if c == columns[-1] else ''}:{(row.get(c) or 0) / whole:.0%}"
             for c in columns if row.get(c)]
    return " ".join(parts) or "-"


_VERDICT_WORDS = (("crosscheck_match_captures", "match"), ("crosscheck_mismatch_captures", "MISMATCH"),
                  ("skip_levels_yes_captures", "skip"), ("skip_levels_no_captures", "no-skip"),
                  ("mmu_lock_found_captures", "mmu_lock"))


def _verdict_mix(row: dict) -> str:
    """``"3 analysed: 2 match, 1 no-skip"``: the captures per stored verdict ("-" when none analysed)."""
    analysed = row.get("analysed_captures") or 0
    if not analysed:
        return "-"
    parts = [f"{row[name]} {word}" for name, word in _VERDICT_WORDS if row.get(name)]
    return f"{analysed} analysed" + (": " + ", ".join(parts) if parts else "")


def verdicts_text(values: dict) -> str:
    """One capture's stored verdicts (:mod:`tracekit.fleet.verdicts`) as a line."""
    parts = [f"{name} {values[name]}" for name in ("crosscheck", "skip_levels", "mmu_lock") if values.get(name)]
    if values.get("walks_fault") is not None:
        parts.append("walks by cause " + " ".join(f"{cause} {values['walks_' + cause]:,}"
                                                  for cause in ("fault", "emulation", "unknown")))
    return ", ".join(parts) or "no verdicts (no analysed family)"


def _headline(rows: list[dict], first: list[str]) -> pd.DataFrame:
    out = []
    for row in rows:
        out.append({
            **{c: row.get(c) for c in first},
            "captures": row["captures"], "clean": row["clean_captures"], "lost": row["lost_events"],
            "clear_p99_ns": row["clear_p99_ns"], "splits/op": row["splits_per_op"], "splits": row["splits"],
            "split_p50_ns": row["split_p50_ns"], "split_p99_ns": row["split_p99_ns"],
            "lock_waits": row["lock_wait_count"], "lock_p99_ns": row["lock_wait_p99_ns"],
            "walk depth": _mix(row, _DEPTHS, "walks", "d"),
            "stage-2 visits": _mix(row, _LEVELS, "stage2_visits", "L"),
            "verdicts": _verdict_mix(row),
        })
    return pd.DataFrame(out)


def summary_text(summary: FleetSummary, width: int | None = None) -> str:
    """The per-group and per-capture headline tables, and a line per capture left out; ``width`` as
    :func:`tracekit.render.table_text` takes it (default: the terminal's, natural width in a pipe)."""
    formats = {"splits/op": lambda v: "-" if v is None or pd.isna(v) else f"{v:.1f}"}
    by = " / ".join(summary.by)
    lines = [format_table(_headline(summary.groups, ["group"]).rename(columns={"group": by}),
                          title=f"Fleet summary by {by} ({summary.engine})", width=width, formats=formats,
                          max_rows=1000)]
    captures = _headline(summary.captures, ["group", "label"]).drop(columns=["captures"])
    lines += ["", format_table(captures.rename(columns={"group": by}), title="Per capture", width=width,
                               formats=formats, max_rows=100000)]
    lines += [f"left out: {problem}" for problem in summary.problems]
    return "\n".join(lines)


def summary_json(summary: FleetSummary) -> dict:
    """The ``tracekit.fleet-summary/1`` document."""
    return {"schema": SCHEMA, "engine": summary.engine, "by": summary.by, "groups": summary.groups,
            "captures": summary.captures, "left_out": summary.problems}


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    agg_pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figures(summary: FleetSummary) -> list[tuple[str, str, str]]:
    """(name, caption, base64 PNG) of each figure the groups have data for."""
    plt = agg_pyplot()
    groups = summary.groups
    names = [g["group"] for g in groups]
    out = []
    series = [(f"{kind} p{q}", [g.get(f"{prefix}_p{q}_ns") for g in groups])
              for kind, prefix in (("CLEAR", "clear"), ("split", "split"), ("lock wait", "lock_wait")) for q in (50, 99)]
    series = [(label, [np.nan if v is None else v / 1e3 for v in values]) for label, values in series
              if any(v is not None for v in values)]
    if series:
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 3), 4))
        x = np.arange(len(names))
        step = 0.8 / len(series)
        for i, (label, values) in enumerate(series):
            ax.bar(x + i * step - 0.4 + step / 2, values, step, label=label)
        ax.set_yscale("log")
        ax.set_ylabel("latency (us)")
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.legend(fontsize=7)
        out.append(("latency", "Latency per group: p50 and p99 (log scale)", _png(fig)))
    mixes = [(cols, total, label) for cols, total, label in ((_DEPTHS, "walks", "guest walk depth"),
                                                            (_LEVELS, "stage2_visits", "stage-2 level"))
             if any(g.get(total) for g in groups)]
    if mixes:
        fig, axes = plt.subplots(1, len(mixes), figsize=(6 * len(mixes), 4), squeeze=False)
        for ax, (cols, total, label) in zip(axes[0], mixes):
            bottom = np.zeros(len(names))
            for col in cols:
                share = np.array([(g.get(col) or 0) / g[total] if g.get(total) else 0.0 for g in groups])
                if share.any():
                    ax.bar(names, share, bottom=bottom, label=f"{label} {col[-1]}{'+' if col == cols[-1] else ''}")
                    bottom += share
            ax.set_ylabel("share")
            ax.tick_params(axis="x", labelrotation=30, labelsize=8)
            ax.legend(fontsize=7)
        out.append(("walk-depth", "Guest walks per depth and stage-2 visits per level, as shares per group", _png(fig)))
    per_op = [g.get("splits_per_op") for g in groups]
    if any(v is not None for v in per_op):
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 3), 3.5))
        ax.bar(names, [np.nan if v is None else v for v in per_op])
        ax.set_ylabel("splits per dirty-log enable / CLEAR")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        out.append(("splits-per-op", "Huge-page splits per dirty-log enable / CLEAR ioctl", _png(fig)))
    return out


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c).removesuffix('_ns'))}</th>" for c in frame.columns)
    body = []
    for record in frame.to_dict("records"):
        cells = []
        for column, value in record.items():
            if str(column).endswith("_ns"):
                text = format_ns(value)
            elif isinstance(value, float):
                text = "-" if pd.isna(value) else f"{value:.1f}"
            else:
                text = "-" if value is None else str(value)
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.8em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}th{background:#f4f4f4}
figure{display:inline-block;margin:.5em}figcaption{font-size:.85em;color:#555}.left-out{color:#b00020}
"""


def summary_html(summary: FleetSummary) -> str:
    """One self-contained HTML page: figures, then the group and capture tables."""
    by = " / ".join(summary.by)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tracekit fleet summary by {html.escape(by)}"
             f"</title><style>{_CSS}</style></head><body>",
             f"<h1>Fleet summary by {html.escape(by)}: {sum(g['captures'] for g in summary.groups)} captures "
             f"({html.escape(summary.engine)})</h1>"]
    for problem in summary.problems:
        parts.append(f"<p class='left-out'>left out: {html.escape(problem)}</p>")
    for name, caption, png in _figures(summary):
        parts.append(f"<figure><img class='figure' data-figure='{name}' src='data:image/png;base64,{png}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append(f"<h2>Per {html.escape(by)}</h2>")
    parts.append(_html_table(_headline(summary.groups, ["group"])))
    parts.append("<h2>Per capture</h2>")
    parts.append(_html_table(_headline(summary.captures, ["group", "label"]).drop(columns=["captures"])))
    parts.append("</body></html>")
    return "\n".join(parts)
