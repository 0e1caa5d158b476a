"""One self-contained HTML page per capture: verdicts first, then figures that say where the time goes.

:func:`render_report` turns an :class:`tracekit.analysis.analyze.Analysis` and its capture into HTML
with every figure embedded as a PNG ``data:`` URI; :func:`write_report` writes it. Sections: docs/report.md.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

import pandas as pd

from tracekit.analysis.analyze import HEX_COLUMNS, TABLE_TITLES, Analysis
from tracekit.analysis.common import format_hex, format_ns, timing_note
from tracekit.analysis.crosscheck import match_text
from tracekit.analysis.partial import partial_text
from tracekit.analysis.reportdata import MIN_SAMPLES, ReportData, report_data
from tracekit.analysis.reportfigures import FIGURES, Figure, all_figures, time_unit
from tracekit.errors import CaptureFormatError

__all__ = ["FIGURES", "render_report", "write_report", "format_offset"]

_TIMESTAMPS = {"ts_ns", "start_ns", "end_ns", "t_ns"}

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1150px;color:#222;padding:0 1em}
h1{font-size:1.4em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
h3{font-size:1em;margin-bottom:.2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}th{background:#f4f4f4}td.text,th.text{text-align:left}
figure{margin:.8em 0}figure img{max-width:100%}.levels figure{display:inline-block;vertical-align:top;max-width:49%}figcaption{font-size:.85em;color:#555;max-width:60em}
.verdicts{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:.4em 1em}
.verdicts ul{margin:.3em 0;padding-left:1.2em}
.banner{background:#fff4ce;border:2px solid #d4a106;border-radius:6px;padding:.6em 1em;font-weight:bold}
.verdict{font-weight:bold}.yes{color:#b35c00}.no,.match{color:#17703a}.mismatch{color:#b00020}
.note{color:#555;font-size:.9em}
"""


def format_offset(ns: float, unit: tuple[str, float]) -> str:
    """A time since the capture start, in ``unit`` (from :func:`.reportfigures.time_unit`): ``+12.345 ms``."""
    if pd.isna(ns):
        return "-"
    name, scale = unit
    return f"{ns / scale:+,.3f} {name}"


def _figure_html(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    caption = html.escape(figure.caption)
    return (f"<figure><img class='figure' data-figure='{figure.name}' data-points='{figure.points}' "
            f"alt='{caption}' src='data:image/png;base64,{data}'><figcaption>{caption}</figcaption></figure>")


def _cell_formats(frame: pd.DataFrame, t0_ns: int, unit: tuple[str, float],
                  origin: str = "capture start") -> tuple[pd.DataFrame, list[str]]:
    """``frame`` with readable cells (durations with units, times since the capture start, percentages,
    hexadecimal addresses) and readable headers (no ``_ns``)."""
    shown = frame.copy()
    headers = []
    for column in frame.columns:
        name = str(column)
        if name in _TIMESTAMPS:
            shown[column] = [format_offset(v - t0_ns, unit) if pd.notna(v) else "-" for v in frame[column]]
            name = {"ts_ns": "time", "t_ns": "time"}.get(name, name[:-3]) + f" (since {origin})"
        elif name.endswith("_ns"):
            shown[column] = frame[column].map(format_ns)
            name = name[:-3]
        elif name in HEX_COLUMNS:
            shown[column] = frame[column].map(format_hex)
        elif name.startswith("share"):
            shown[column] = frame[column].map(lambda v: "-" if pd.isna(v) else f"{v:.2%}")
        elif pd.api.types.is_float_dtype(frame[column]):
            shown[column] = frame[column].map(lambda v: "-" if pd.isna(v) else f"{v:,.1f}")
        elif pd.api.types.is_integer_dtype(frame[column]) and name not in ("level", "vcpu", "slot", "iteration",
                                                                            "depth", "leaf_level", "cpu", "tid"):
            shown[column] = frame[column].map(lambda v: f"{v:,}")
        headers.append(name.replace("_", " "))
    shown.columns = headers
    return shown, headers


def _table_html(frame: pd.DataFrame, t0_ns: int, unit: tuple[str, float], limit: int = 50,
                origin: str = "capture start") -> str:
    shown, headers = _cell_formats(frame.head(limit), t0_ns, unit, origin)
    text_columns = {h for h, c in zip(headers, frame.columns) if not pd.api.types.is_numeric_dtype(frame[c])}
    head = "".join(f"<th class='{'text' if h in text_columns else ''}'>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td class='{'text' if h in text_columns else ''}'>{html.escape(str(v))}</td>"
                                    for h, v in zip(headers, row)) + "</tr>"
                   for row in shown.itertuples(index=False))
    text = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if len(frame) > limit:
        text += f"<p class='note'>{len(frame) - limit:,} more rows: see <code>tracekit analyze --json</code>.</p>"
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


def _emulated_banner(manifest: dict) -> str:
    """The warning a lab capture's timings need: they are the emulator's, not the hardware's."""
    text = timing_note(manifest)
    if not text:
        return ""
    host = manifest.get("host") or "an emulated machine"
    return (f"<p class='banner emulated'>Emulated timings ({html.escape(str(host))}): {html.escape(text)}. "
            "Compare its times only with captures of the same emulator.</p>")


def _time_section(data: ReportData, figures: dict[str, Figure]) -> list[str]:
    table = data.time_table()
    if table.empty:
        return []
    parts = ["<h2>Where the time goes</h2>"]
    if "where-time-goes" in figures:
        parts.append(_figure_html(figures["where-time-goes"]))
    shown = table.assign(how=["per call" if p else "kernel total" for p in table["per_call"]])
    shown = shown[["what", "kind", "calls", "total_ns", "max_ns", "share", "how"]].rename(
        columns={"share": "share of window"})
    parts.append(_table_html(shown, data.t0_ns, time_unit(data.end_ns - data.t0_ns), limit=30))
    parts.append(f"<p class='note'>Share of window: total time over the {format_ns(data.end_ns - data.t0_ns)} "
                 "shown in the timeline; nested activities overlap, so the shares do not add up.</p>")
    return parts


def _latency_section(data: ReportData, figures: dict[str, Figure]) -> list[str]:
    few = data.few_samples()
    if "latency" not in figures and not few:
        return []
    parts = ["<h2>Latency</h2>"]
    if "latency" in figures:
        parts.append(_figure_html(figures["latency"]))
    if few:
        rows = pd.DataFrame({"what": [s.label for s in few], "kind": [s.kind for s in few],
                             "calls": [s.count for s in few],
                             "values": [", ".join(format_ns(v) for v in sorted(s.values)) for s in few]})
        parts.append(f"<h3>Too few calls for a distribution (under {MIN_SAMPLES}): every value</h3>")
        parts.append(_table_html(rows, data.t0_ns, time_unit(data.end_ns - data.t0_ns), limit=100))
    return parts


def _partial_lines(partial: dict, data: ReportData, unit: tuple[str, float]) -> list[str]:
    """The text report's lines on the recording window, its edges as times since the capture start."""
    lines = [line.strip() for line in partial_text(partial)]
    window = partial.get("window") or {}
    if {"seconds", "start_ns", "stop_ns"} <= set(window):
        lines[0] = (f"recording window: {window['seconds']:.3f} s of {window.get('clock', '?')}, every family from "
                    f"{format_offset(window['start_ns'] - data.t0_ns, unit)} to "
                    f"{format_offset(window['stop_ns'] - data.t0_ns, unit)}")
    return lines


def render_report(result: Analysis, cap: Any) -> str:
    """The HTML page of ``result``, the analysis of ``cap`` (see the module docstring)."""
    info = result.info
    data = report_data(cap, result)
    figures = {figure.name: figure for figure in all_figures(result, data)}
    unit = time_unit(data.end_ns - data.t0_ns)
    manifest = cap.manifest
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>tracekit report: {html.escape(Path(info['path']).name)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>tracekit report: {html.escape(Path(info['path']).name)}</h1>",
             f"<p>kernel {html.escape(str(info.get('kernel_release')))}, {html.escape(str(info.get('arch')))}, "
             f"source {html.escape(str(info.get('source')))}, status {html.escape(str(info.get('status')))}"
             + (f", cut to phase {html.escape(info['phase'])}" if info.get("phase") else "")
             + (f", cut to VM pid {info['vm']['pid']}" if info.get("vm") else "")
             + (f". Times are relative to the {html.escape(data.origin)} (" if data.origin != "capture start" else
                f". Times are relative to the capture start ({html.escape(data.t0_from)}, ") + "CLOCK_MONOTONIC "
             f"{data.t0_ns / 1e9:,.6f} s); the window shown lasts {format_ns(data.end_ns - data.t0_ns)}.</p>",
             _emulated_banner(manifest)]
    if info.get("lost_events"):
        parts.append(f"<p class='banner'>{info['lost_events']:,} events were lost while recording: "
                     "counts are lower bounds.</p>")
    parts.append("<div class='verdicts'><h2>Verdicts</h2>" + _verdicts_html(result) + "</div>")
    for note in ("phase_note", "vm_note"):
        if info.get(note):
            parts.append(f"<p class='note'>{'Phases' if note == 'phase_note' else 'VMs'}: {html.escape(info[note])}.</p>")
    if "partial" in info:  # what the recording window cut, as the text report says it
        parts.append("<p class='note partial'>" + "<br>".join(html.escape(line) for line in
                                                              _partial_lines(info["partial"], data, unit)) + "</p>")
    parts.extend(_time_section(data, figures))
    if "timeline" in figures:
        parts.append("<h2>Timeline: which thread, which phase</h2>" + _figure_html(figures["timeline"]))
    levels = [figures[name] for name in ("walk-depth", "visits-vs-model", "stage2-levels") if name in figures]
    if levels:
        parts.append("<h2>Levels</h2><div class='levels'>" + "".join(_figure_html(figure) for figure in levels)
                     + "</div>")
    parts.extend(_latency_section(data, figures))
    if not figures:
        parts.append("<p>No figure: the capture has none of the data they need.</p>")
    parts.append("<h2>Tables</h2>")
    for key, table in result.tables.items():
        if table.empty:
            continue
        title = TABLE_TITLES.get(key, key.replace("_", " ")).replace(" (CLOCK_MONOTONIC)", "")
        parts.append(f"<h3>{html.escape(title)}</h3>" + _table_html(table, data.t0_ns, unit, origin=data.origin))
    skipped = info.get("skipped") or {}
    if skipped:
        parts.append("<h2>Not analysed</h2><ul>" + "".join(
            f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in skipped.items()) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(part for part in parts if part)


def write_report(result: Analysis, cap: Any, path: str | os.PathLike) -> None:
    """Write :func:`render_report` of ``result`` (the analysis of ``cap``) to ``path``."""
    target = Path(path)
    if target.is_symlink():
        raise CaptureFormatError(f"refusing to write through a symlink: {target}")
    try:
        target.write_text(render_report(result, cap), encoding="utf-8")
    except OSError as error:
        raise CaptureFormatError(f"cannot write {target}: {error.strerror or error}") from error
