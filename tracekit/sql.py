"""``tracekit sql``: one SQL query over any number of captures, on an embedded DuckDB.

:func:`run_query` runs a query on a connection made by :func:`tracekit.dataset.connect` and writes its
result as a terminal table, CSV, JSON Lines or Parquet (:data:`RESULT_FORMATS`; files through DuckDB's
own writers, never row by row). A query DuckDB refuses (syntax, unknown table or column) is a
:class:`~tracekit.errors.QueryError`; a query failing on a file it reads (a damaged page) a
CaptureFormatError; both one line. A capture that cannot be opened is a warning line naming it and
the others are queried (``--strict`` refuses instead). See docs/sql.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import pyarrow as pa
import typer

from tracekit.capture.format import shown_path
from tracekit.copyout import copy_result
from tracekit.dataset import Dataset, connect
from tracekit.errors import CaptureFormatError, QueryError, UsageError, one_line
from tracekit.render import table_text

__all__ = ["RESULT_FORMATS", "query_error", "run_query", "write_result", "format_result_table", "sql", "register"]

RESULT_FORMATS = ("table", "csv", "json", "parquet")


def query_error(error: Exception) -> QueryError | CaptureFormatError:
    """DuckDB's ``error`` as one line: its message without the echoed query and caret lines; an I/O or
    invalid-input failure (a file read or written) as CaptureFormatError, the rest as QueryError."""
    lines = [line.strip() for line in str(error).splitlines()
             if line.strip() and not line.lstrip().startswith(("LINE ", "^"))]
    text = one_line(" ".join(lines)) or type(error).__name__
    text = text if len(text) <= 300 else text[:297] + "..."
    if type(error).__name__ in ("IOException", "InvalidInputException"):  # names the file
        return CaptureFormatError(f"query failed: {text}")
    return QueryError(f"query refused: {text}")


def _statement(query: str) -> str:
    """``query`` without trailing semicolons and blanks (it is wrapped in ``COPY (...)``)."""
    text = query.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    if not text:
        raise QueryError("empty query")
    _utf8(text, "the query")
    return text


def _utf8(text: str, what: str) -> None:
    """Refuse ``text`` that is not UTF-8 (an argument of undecodable bytes): DuckDB takes only UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryError(f"{what} is not valid UTF-8 text") from None


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_result_table(table: pa.Table, *, total_rows: int | None = None, width: int | None = None,
                        colour: bool | None = None) -> str:
    """``table`` as a terminal table (:func:`tracekit.render.table_text`: sized to the terminal, a wider
    table in pieces that repeat the first column, no cell cut; plain at its natural width into a pipe),
    every column, numbers right-aligned; the line under it counts the rows, ``total_rows`` (when larger
    than the rows given) saying how many were left out."""
    names = table.column_names
    columns = [[_text(v) for v in table.column(i).to_pylist()] for i in range(len(names))]
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) for t in table.schema.types]
    total = table.num_rows if total_rows is None else total_rows
    if total > table.num_rows:
        footer = f"({total:,} rows, the first {table.num_rows:,} shown; --format csv|json|parquet -o FILE for all)"
    else:
        footer = f"({total:,} row{'s' if total != 1 else ''})"
    if not table.num_rows:  # the columns, then the count
        return "\n".join(["  ".join(names), footer]) if names else footer
    rows = [list(row) for row in zip(*columns)]
    return "\n".join([table_text(names, rows, align=["right" if n else "left" for n in numeric], width=width,
                                  colour=colour), footer])


def write_result(con: Any, query: str, fmt: str, output: Path | None, *, max_rows: int = 100,
                 echo: Callable[[str], None] = typer.echo) -> int | None:
    """Run ``query`` on ``con`` and write its result in ``fmt`` to ``output`` (None or ``-``: standard
    output; Parquet needs a file). Returns the rows written to a file, else None."""
    import duckdb  # here, not at the top: the other commands of the console script need not load it

    if fmt not in RESULT_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(RESULT_FORMATS)}, not {fmt!r}")
    statement = _statement(query)
    to_stdout = output is None or str(output) == "-"
    if not to_stdout:
        _utf8(str(output), "the output path")
    try:
        if fmt == "table":
            if not to_stdout:
                raise UsageError("--format table prints to the terminal; choose csv, json or parquet with -o")
            relation = con.sql(statement)
            if relation is None:  # a statement without a result (SET, CREATE VIEW ...)
                echo("(no result)")
                return None
            shown, total = _head(relation.to_arrow_reader(1 << 16), max_rows)
            echo(format_result_table(shown, total_rows=total))
            return None
        if to_stdout:
            if fmt == "parquet":
                raise UsageError("--format parquet needs -o FILE")
            sys.stdout.flush()
            copy_result(con, statement, fmt, sys.stdout.buffer)
            return None
        if output.is_symlink() or output.is_dir():
            raise CaptureFormatError(f"refusing to write through a symlink or over a directory: {shown_path(output)}")
        return copy_result(con, statement, fmt, output)
    except duckdb.Error as error:
        raise query_error(error) from None



def _head(reader: pa.RecordBatchReader, rows: int) -> tuple[pa.Table, int]:
    """The first ``rows`` rows of ``reader`` and how many it holds in all (the rest only counted)."""
    kept: list[pa.RecordBatch] = []
    have = total = 0
    for batch in reader:
        total += batch.num_rows
        if have < rows:
            kept.append(batch.slice(0, rows - have))
            have += kept[-1].num_rows
    return pa.Table.from_batches(kept, schema=reader.schema), total


def run_query(query: str, paths: list[str], *, fmt: str = "table", output: Path | None = None,
              strict: bool = False, verify_pages: bool = False, max_rows: int = 100,
              warn: Callable[[str], None] | None = None) -> int | None:
    """Open the captures under ``paths`` (refused ones warned about and left out unless ``strict``), run
    ``query`` and write its result (see :func:`write_result`)."""
    warn = warn or (lambda line: typer.echo(f"tracekit: warning: {line}", err=True))
    dataset = Dataset.open(paths, skip_bad=not strict, verify_pages=verify_pages)
    for problem in dataset.problems:
        warn(f"{one_line(problem)}; left out")
    con = connect(dataset)
    try:
        return write_result(con, query, fmt, output, max_rows=max_rows)
    finally:
        con.close()


def sql(
    query: str = typer.Argument(..., help="The SQL query (DuckDB dialect); tables: see docs/sql.md."),
    captures: List[str] = typer.Argument(..., help="Captures, directories holding captures, or glob patterns."),
    fmt: str = typer.Option("table", "--format", "-f", help=f"Output: {', '.join(RESULT_FORMATS)}."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the result here ('-': standard output)."),
    strict: bool = typer.Option(False, "--strict", help="Refuse to run when any capture cannot be opened."),
    verify_pages: bool = typer.Option(False, "--verify-pages", help="First read every page against its checksum "
                                      "(DuckDB does not check them); a capture with a corrupt page is left out."),
    max_rows: int = typer.Option(100, "--max-rows", min=1, help="Rows the terminal table shows."),
) -> None:
    """Query many captures as one dataset with SQL (DuckDB, in-process).

    Every event family is a table with a `capture` column; `captures`, `threads`, `phases` and
    `segments` describe the captures (docs/sql.md). A capture that cannot be opened is named in a
    warning and left out.

    Examples:

      tracekit sql "SELECT kernel_release, scenario, lost_events FROM captures" samples/

      tracekit sql "SELECT c.kernel_release, quantile_disc(s.duration_ns, 0.99) AS p99_ns
        FROM split s JOIN captures c USING (capture) WHERE s.duration_ns >= 0 GROUP BY ALL" 'runs/*.tkcap'

      tracekit sql "SELECT * FROM ioctl" vm.tkcap --format parquet -o ioctl.parquet
    """
    rows = run_query(query, captures, fmt=fmt, output=output, strict=strict, verify_pages=verify_pages,
                     max_rows=max_rows)
    if rows is not None:
        typer.echo(f"wrote {rows:,} rows to {shown_path(output)}", err=True)


def register(app: typer.Typer) -> None:
    app.command("sql")(sql)
