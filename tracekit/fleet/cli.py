"""``tracekit fleet summary``: headline figures of many captures, grouped, on DuckDB or Spark."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from tracekit.capture.format import shown_path
from tracekit.capture.writer import CaptureWriteError
from tracekit.dataset import Dataset
from tracekit.errors import AnalysisError, CaptureFormatError, UsageError
from tracekit.fleet.render import summary_html, summary_json, summary_text, verdicts_text
from tracekit.fleet.summary import fleet_summary
from tracekit.fleet.verdicts import store_verdicts, stored_verdicts
from tracekit.render import output_width, prose_lines

__all__ = ["register", "summary", "verdicts", "FORMATS"]

FORMATS = ("table", "json", "html")


def summary(
    paths: List[str] = typer.Argument(..., help="Captures, directories holding captures, glob patterns, or URLs "
                                      "(file://, hdfs://, s3a://...; other than file:// with --engine spark)."),
    by: str = typer.Option("kernel", "--by", help="Group by kernel, host, scenario, arch, backend, source, status, "
                           "vcpus, workload, tracekit, capture or kvm.PARAM; several with commas (kernel,arch)."),
    engine: str = typer.Option("duckdb", "--engine", help="duckdb (in-process) or spark (pip install 'tracekit[spark]')."),
    master: Optional[str] = typer.Option(None, "--master", help="Spark master URL (default local[2])."),
    fmt: str = typer.Option("table", "--format", help="table, json or html."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of standard output."),
) -> None:
    """Summarise many captures: verdicts, latency percentiles, splits per ioctl, walk depth, lock waits, lost.

    One SQL query, run unchanged by DuckDB or Spark. A capture that cannot be read is named on one line
    and left out; the others are summarised, and the exit status is 1.

    Examples:

      tracekit fleet summary runs/ --by kernel

      tracekit fleet summary 'fleet/**/*.tkcap' --by host,kernel --format json -o fleet.json

      tracekit fleet summary runs/ --by kvm.eager_page_split --format html -o fleet.html

      tracekit fleet summary /shared/fleet --engine spark --master spark://head:7077   # a path every executor reads

      tracekit fleet summary hdfs://namenode:8020/fleet --engine spark --master yarn
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    result = fleet_summary(paths, by=by, engine=engine, master=master)
    for problem in result.problems:
        typer.echo(f"tracekit: warning: left out: {problem}", err=True)
    if fmt == "json":
        text = json.dumps(summary_json(result), indent=1)
    elif fmt == "html":
        text = summary_html(result)
    else:
        to_file = output is not None and str(output) != "-"  # a file: the tables at their natural width
        text = summary_text(result, width=sys.maxsize if to_file else None)
    if output is None or str(output) == "-":
        typer.echo(text)
    else:
        _write(output, text)
        typer.echo(f"wrote {output} ({len(result.captures)} captures in {len(result.groups)} groups)", err=True)
    if result.problems:
        raise typer.Exit(1)  # the others were summarised; the exit status still says some were not


def verdicts(
    paths: List[str] = typer.Argument(..., help="Captures, directories holding captures, glob patterns, or URLs "
                                      "(file://, hdfs://, s3a://...: written through the URL's file system)."),
    again: bool = typer.Option(False, "--again", help="Analyse captures whose verdicts are stored too."),
) -> None:
    """Analyse each capture once and keep its verdicts in it (verdicts.json), for the fleet summary.

    The model cross-check, skipped split levels, the mmu_lock and the walk causes, as 'tracekit
    analyze' gives them; the summary reads them instead of analysing every capture again. A capture
    whose verdicts are stored (and of its present rows) is skipped unless --again. A capture that
    cannot be read or written is named on one line and left out; the exit status is then 1.

    Examples:

      tracekit fleet verdicts runs/

      tracekit fleet verdicts 'fleet/**/*.tkcap' --again
    """
    ds = Dataset.open(paths, skip_bad=True)
    problems = list(ds.problems)
    for cap in ds.captures:
        try:
            values = None if again else stored_verdicts(cap)
        except CaptureFormatError:
            values = None  # not a verdicts record: written anew
        try:
            kept = values is not None
            values = values or store_verdicts(cap)
        except (AnalysisError, CaptureFormatError, CaptureWriteError) as error:
            where = shown_path(cap.path)
            problems.append(str(error) if where in str(error) else f"{where}: {error}")
            continue
        line, width = f"{shown_path(cap.path)}: {verdicts_text(values)}{' (kept)' if kept else ''}", output_width()
        typer.echo("\n".join(prose_lines(line, width)) if width and len(line) > width else line)  # a pipe: one line
    for problem in problems:
        typer.echo(f"tracekit: warning: left out: {problem}", err=True)
    if problems:
        raise typer.Exit(1)


def _write(output: Path, text: str) -> None:
    if output.is_symlink():
        raise CaptureFormatError(f"refusing to write through a symlink: {output}")
    try:
        output.write_text(text + "\n", encoding="utf-8")
    except OSError as error:
        raise CaptureFormatError(f"cannot write {output}: {error.strerror or error}") from error


def register(app: typer.Typer) -> None:
    fleet = typer.Typer(help="Many captures at once: the fleet summary, on DuckDB or Spark.", no_args_is_help=True)
    fleet.command("summary")(summary)
    fleet.command("verdicts")(verdicts)
    app.add_typer(fleet, name="fleet")
