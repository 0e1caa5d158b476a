"""The compare table as terminal text and as one self-contained HTML page.

:func:`compare_text` prints one table per metric group and the cover letter's lines, :func:`compare_html`
the same with a figure of the changes, and :func:`sides_notes` the notes on the two sides.
"""

from __future__ import annotations

import html
import io
import math
from typing import Any, Sequence

import pandas as pd

from tracekit.analysis.common import format_ns, timing_note
from tracekit.analysis.compare import GROUPS
from tracekit.render import agg_pyplot, prose_lines, table_text

__all__ = ["sides_notes", "shown_rows", "compare_text", "compare_html"]

_GROUP_TITLES = {"phase": "Phases", "ioctl": "KVM ioctls", "level": "Page-table levels",
                 "lock": "Lock waits, by lock role", "work": "Walks and splits"}


def _side_line(label: str, paths: Sequence[str], manifests: Sequence[dict]) -> str:
    kernels = sorted({str(m.get("kernel_release") or "?") for m in manifests})
    hosts = sorted({str(m.get("host") or "?") for m in manifests})
    return (f"{label}: {len(paths)} run{'s' if len(paths) != 1 else ''}, kernel {', '.join(kernels)} "
            f"on {', '.join(hosts)}: {' '.join(paths)}")


def _workload(manifest: dict) -> str:
    """What a capture ran: a lab scenario's steps, else the traced command (without the recorder's options)."""
    scenario = (manifest.get("workload") or {}).get("scenario")
    if isinstance(scenario, dict) and scenario.get("steps"):
        steps = ", ".join(" ".join(str(part) for part in step) for step in scenario["steps"])
        return f"{scenario.get('name', 'lab')} steps {steps}"
    command = [str(part) for part in manifest.get("command_line") or []]
    return " ".join(command[command.index("--") + 1:]) if "--" in command else (" ".join(command) or "?")


def sides_notes(paths_a: Sequence[str], manifests_a: Sequence[dict], paths_b: Sequence[str],
                manifests_b: Sequence[dict], phase: str | None = None) -> list[str]:
    """One line per side, the phase cut (``--phase``), then the warnings that apply (emulated timings, a
    single run)."""
    lines = [_side_line("A", paths_a, manifests_a), _side_line("B", paths_b, manifests_b)]
    if phase:
        lines.append(f"cut to phase {phase}: every metric counts only what happened inside it")
    if any(timing_note(m) for m in (*manifests_a, *manifests_b)):
        lines.append("NOTE: lab captures: their timings are the emulator's (QEMU TCG), not hardware's; "
                     "counts are exact")
    ran = [sorted({_workload(m) for m in manifests}) for manifests in (manifests_a, manifests_b)]
    if ran[0] != ran[1] or len(ran[0]) > 1:
        lines.append(f"NOTE: the runs did not all run the same workload (A: {'; '.join(ran[0])}; B: "
                     f"{'; '.join(ran[1])}): a phase of one may not measure what it measures in the other")
    single = [side for side, paths in (("A", paths_a), ("B", paths_b)) if len(paths) < 2]
    if single:
        lines.append(f"NOTE: one run of {' and '.join(single)}: no stdev, no noise estimate "
                     "(repeat the capture for them)")
    return lines


def _value(value: Any, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "s":
        return format_ns(value * 1e9)
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _mean_stdev(mean: float, stdev: Any, unit: str) -> str:
    return f"{_value(mean, unit)} ± {_value(stdev, unit)}"


def _change(row: pd.Series) -> str:
    change, stdev = row["change_pct"], row["change_stdev_pct"]
    if change is None or pd.isna(change):
        return "n/a"
    return f"{change:+.2f}% ± " + ("n/a" if stdev is None or pd.isna(stdev) else f"{stdev:.2f}%")


def shown_rows(table: pd.DataFrame, show_all: bool) -> pd.DataFrame:
    """The rows printed: all with ``show_all``, else those beyond noise or of unknown noise."""
    return table if show_all else table[table["noise"].isin(["beyond", "unknown"])]


def _cells(row: pd.Series) -> list[str]:
    return [row["metric"], _mean_stdev(row["mean_a"], row["stdev_a"], row["unit"]),
            _mean_stdev(row["mean_b"], row["stdev_b"], row["unit"]), _change(row), f"{row['n_a']}/{row['n_b']}",
            row["noise"]]


_HEADER = ["metric", "A mean ± stdev", "B mean ± stdev", "change ± stdev", "n A/B", "noise"]
_ALIGN = ["left", "right", "right", "right", "right", "left"]


def _style(row: pd.Series) -> list[str | None]:
    style = {"beyond": "head", "within": "dim", "identical": "dim"}.get(row["noise"])
    return [None, None, None, style, None, "dim" if row["noise"] != "beyond" else None]


def _cover_letter(shown: pd.DataFrame) -> list[str]:
    runtimes = shown[(shown["unit"] == "s") & shown["group"].isin(["phase", "ioctl", "work"])]
    return [f"  {text}" for text in runtimes["text"]]


def compare_text(table: pd.DataFrame, notes: Sequence[str], show_all: bool = False) -> str:
    """The comparison as terminal tables (see the module docstring)."""
    shown = shown_rows(table, show_all)
    out = [line for note in notes for line in prose_lines(note)]
    for group in GROUPS:
        rows = shown[shown["group"] == group]
        if rows.empty:
            continue
        out.append("")
        out.append(table_text(_HEADER, [_cells(r) for _, r in rows.iterrows()], title=_GROUP_TITLES[group],
                              align=_ALIGN, styles=[_style(r) for _, r in rows.iterrows()]))
    letter = _cover_letter(shown_rows(table, False))
    if letter:
        out += ["", "B against A, as a cover letter puts it:", *(line for text in letter for line in prose_lines(text))]
    hidden = table["noise"].value_counts().reindex(["identical", "within"], fill_value=0) if not show_all else None
    if hidden is not None and hidden.sum():
        out += ["", *prose_lines(f"{hidden['identical']} metric(s) identical in every run and {hidden['within']} "
                                 "within noise not shown (--all shows them)")]
    return "\n".join(out)


def _change_figure_svg(shown: pd.DataFrame) -> str:
    """Horizontal bars: change % per metric, the propagated stdev as an error bar (none where unknown)."""
    plt = agg_pyplot()
    rows = shown[shown["change_pct"].notna()].head(60)
    labels = [f"{g}: {m}" for g, m in zip(rows["group"], rows["metric"])]
    changes = rows["change_pct"].astype(float).tolist()
    errors = [float("nan") if e is None or pd.isna(e) else float(e) for e in rows["change_stdev_pct"]]  # none drawn
    fig, ax = plt.subplots(figsize=(8, max(1.6, 0.28 * len(rows) + 0.9)))
    positions = list(range(len(rows)))[::-1]
    colours = ["#17703a" if c < 0 else "#b00020" for c in changes]
    ax.barh(positions, changes, xerr=errors, color=colours, alpha=0.8, capsize=3)
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, fontsize=7)
    ax.axvline(0, color="#444", linewidth=0.8)
    ax.set_xlabel("change of B against A (%), error bar: propagated stdev")
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 6px}
td{text-align:right}td:first-child,td:last-child{text-align:left}th{background:#f4f4f4}
.beyond td:nth-child(4){font-weight:bold}.note{color:#8a4b00}
"""


def compare_html(table: pd.DataFrame, notes: Sequence[str], show_all: bool = False) -> str:
    """The comparison as one HTML page: notes, the change figure, one table per group, the cover letter."""
    shown = shown_rows(table, show_all)
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>tracekit compare</title>",
             f"<style>{_CSS}</style></head><body><h1>tracekit compare: B against A</h1>"]
    parts += [f"<p class='{'note' if n.startswith('NOTE') else 'side'}'>{html.escape(n)}</p>" for n in notes]
    if not shown["change_pct"].dropna().empty:
        parts.append("<figure data-figure='change'>" + _change_figure_svg(shown)
                     + "<figcaption>Change of each metric shown below, B against A</figcaption></figure>")
    for group in GROUPS:
        rows = shown[shown["group"] == group]
        if rows.empty:
            continue
        parts.append(f"<h2>{html.escape(_GROUP_TITLES[group])}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in _HEADER) + "</tr>")
        for _, row in rows.iterrows():
            parts.append(f"<tr class='{row['noise']}'>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(row))
                         + "</tr>")
        parts.append("</table>")
    letter = _cover_letter(shown_rows(table, False))
    if letter:
        parts.append("<h2>As a cover letter puts it</h2><ul>"
                     + "".join(f"<li>{html.escape(line.strip())}</li>" for line in letter) + "</ul>")
    hidden = len(table) - len(shown)
    if hidden:
        parts.append(f"<p>{hidden} metric(s) identical in every run or within noise not shown (--all shows them).</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
