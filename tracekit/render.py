"""Terminal output: tables, colour and the one error line.

Every table tracekit prints goes through :func:`table_text` (``rich`` tables). On a terminal it is
sized to the terminal's width (a wider table is shown as several, each repeating the row's key
column: no cell is cut, no column dropped) and coloured unless ``NO_COLOR`` is set or ``TERM`` is
``dumb``; into a pipe or a file it is plain text at the table's natural width, the same on every run,
so scripts and tests can read it. ``COLUMNS`` sets the width in both cases.
:func:`frame_table_text` renders a DataFrame with per-column formats; :func:`error_line` is the one
error style of every failure, usage errors included: ``tracekit: error: MESSAGE``.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TextIO

import numpy as np
import pandas as pd

from tracekit.errors import CaptureFormatError, error_line

__all__ = ["colour_wanted", "output_width", "prose_lines", "column_groups", "table_text", "frame_table_text", "plain_value", "error_line",
           "write_output_file", "agg_pyplot"]

#: Cell styles by name, for callers that mark rows or cells (``styles`` of :func:`table_text`).
STYLES = {"good": "green", "bad": "bold red", "warn": "yellow", "dim": "dim", "head": "bold"}


def _is_terminal(stream: TextIO | None) -> bool:
    stream = stream if stream is not None else sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def colour_wanted(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (stdout by default) is a terminal and neither ``NO_COLOR`` nor ``TERM=dumb`` asks
    for plain text."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return _is_terminal(stream)


def output_width(stream: TextIO | None = None) -> int | None:
    """The width tables must fit: ``COLUMNS`` when set, the terminal's width on a terminal, else None
    (a pipe or a file: each table at its natural width)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if _is_terminal(stream):
        return shutil.get_terminal_size((80, 24)).columns
    return None


_NUMBER = re.compile(r"[+-]?(\d[\d,]*(\.\d+)?|\.\d+)\s?[a-zA-Z%/]*")


def _number(cell: str) -> bool:
    """A cell that reads as one number, with an optional unit or %: 12, -3.5%, 1,024, 4.56ms."""
    return bool(_NUMBER.fullmatch(cell.strip()))


def _numeric_text(cells: Iterable[str]) -> bool:
    """Whether a column's cells all read as numbers (``-``, ``n/a`` and empty cells aside)."""
    kept = [cell for cell in cells if cell.strip() not in ("", "-", "n/a")]
    return bool(kept) and all(_number(cell) for cell in kept)


def column_groups(widths: Sequence[int], width: int | None) -> list[list[int]]:
    """The columns of a table ``widths`` wide (each cell's longest) shown in groups that fit ``width``:
    all in one group when they fit (or ``width`` is None), else the first column (the row's key) and as
    many following columns as fit, then the key again with the next ones, and so on."""
    indexes = list(range(len(widths)))
    if width is None or sum(widths) + 2 * (len(widths) - 1) <= width:
        return [indexes]
    groups, current, used = [], [0], widths[0]
    for i in indexes[1:]:
        if len(current) > 1 and used + 2 + widths[i] > width:
            groups.append(current)
            current, used = [0], widths[0]
        current.append(i)
        used += 2 + widths[i]
    return groups + [current]


def table_text(header: Sequence[str], rows: Sequence[Sequence[str]], *, title: str | None = None,
               footer: Sequence[str] = (), align: Sequence[str] | None = None,
               styles: Sequence[Sequence[str | None]] | None = None, width: int | None = None,
               colour: bool | None = None, stream: TextIO | None = None) -> str:
    """One table as text: ``title`` line, header, rows (strings), then ``footer`` lines.

    No cell is wrapped or cut and no column left out: a table wider than ``width`` is shown as several,
    each repeating the first column (:func:`column_groups`). ``align`` gives ``"left"``/``"right"`` per
    column (default: right for columns whose cells read as numbers, left otherwise); ``styles`` a rich
    style name or key of :data:`STYLES` per cell (None for none). ``width`` and ``colour`` default to
    :func:`output_width` and :func:`colour_wanted` of ``stream`` (stdout). Colour is returned as ANSI
    codes, which ``typer.echo`` strips again when the output is not a terminal.
    """
    width = output_width(stream) if width is None else width
    colour = colour_wanted(stream) if colour is None else colour
    columns = [[str(cell) for cell in column] for column in zip(*rows)] if rows else [[] for _ in header]
    if align is None:
        align = ["right" if _numeric_text(column) else "left" for column in columns]
    lines: list[str] = [_fold(title, width)] if title else []
    if not rows:
        lines.append("  (no rows)")
    else:
        widths = [max([len(str(name)), *(len(cell) for cell in column)]) for name, column in zip(header, columns)]
        for n, group in enumerate(column_groups(widths, width)):
            if n:
                lines.append("")
            lines.extend(_rich_lines([header[i] for i in group], [[row[i] for row in rows] for i in group],
                                     [align[i] for i in group],
                                     [[s[i] for i in group] for s in styles] if styles is not None else None, colour))
    lines.extend(_fold(line, width) for line in footer)
    return "\n".join(lines)


def _rich_lines(header: Sequence[str], columns: Sequence[Sequence[str]], align: Sequence[str],
                styles: Sequence[Sequence[str | None]] | None, colour: bool) -> list[str]:
    """The lines of one rich table at its natural width (no wrapping), trailing spaces stripped."""
    # rich loads when a table is drawn: it costs ~0.1 s of every command's start-up otherwise
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, padding=(0, 1), show_header=True, expand=False,
                  header_style="bold" if colour else "", show_edge=False)
    for name, justify in zip(header, align):
        table.add_column(str(name), justify=justify, no_wrap=True)
    for i, row in enumerate(zip(*columns)):
        marks = styles[i] if styles is not None and colour else [None] * len(row)
        table.add_row(*(Text(cell, style=STYLES.get(mark, mark) if mark else "") for cell, mark in zip(row, marks)))
    buffer = io.StringIO()
    console = Console(file=buffer, width=100_000, force_terminal=colour, no_color=not colour,
                      color_system="standard" if colour else None, highlight=False, emoji=False, markup=False,
                      legacy_windows=False, soft_wrap=False)
    console.print(table)
    return [line.rstrip() for line in buffer.getvalue().splitlines()]


def prose_lines(text: str, width: int | None = None, indent: str = "    ") -> list[str]:
    """A line of prose wrapped at words to ``width`` (default: the terminal's, 80 in a pipe), the
    continuation lines indented by ``indent``."""
    width = width or output_width() or 80
    return textwrap.wrap(text, width=width, subsequent_indent=indent, break_on_hyphens=False) or [""]


def _fold(text: str, width: int | None) -> str:
    return text if not width or len(text) <= width else "\n".join(prose_lines(text, width))


def plain_value(value: Any) -> str:
    """A cell's default text: ``-`` when missing, floats to 3 significant digits below 1000."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def frame_table_text(frame: pd.DataFrame, *, title: str | None = None,
                     formats: dict[str, Callable[[Any], str]] | None = None, max_rows: int = 40,
                     headers: dict[str, str] | None = None, default: Callable[[str], Callable[[Any], str]] | None = None,
                     width: int | None = None, colour: bool | None = None) -> str:
    """:func:`table_text` of a DataFrame: ``formats`` maps a column to a callable making one cell's text
    (else ``default(column)`` when given, else :func:`plain_value`); ``headers`` renames columns;
    at most ``max_rows`` rows, then a line saying how many more (``--json`` shows all)."""
    formats = formats or {}
    headers = headers or {}
    shown = frame.head(max_rows)
    cells = {}
    for column in shown.columns:
        fmt = formats.get(column) or (default(str(column)) if default else None) or plain_value
        cells[column] = [fmt(v) for v in shown[column].tolist()]
    rows = [[cells[c][i] for c in shown.columns] for i in range(len(shown))]
    footer = [f"  ... {len(frame) - max_rows} more rows (use --json for all)"] if len(frame) > max_rows else []
    return table_text([headers.get(c, str(c)) for c in shown.columns], rows, title=title, footer=footer,
                      width=width, colour=colour)


def write_output_file(path: str | os.PathLike, text: str) -> None:
    """Write a page or table the user asked for to ``path`` (UTF-8); never through a symlink.
    Raises CaptureFormatError with one line when it cannot be written."""
    target = Path(path)
    if target.is_symlink():
        raise CaptureFormatError(f"refusing to write through a symlink: {target}")
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as error:
        raise CaptureFormatError(f"cannot write {target}: {error.strerror or error}") from error


def agg_pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (PNG and SVG into memory, never a display)."""
    # matplotlib loads when a figure is drawn: about a second, too much for every command's start-up
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # only once the backend is chosen

    return plt
