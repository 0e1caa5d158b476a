"""``tracekit info`` and ``tracekit export``: look into a capture without any analysis."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from tracekit.capture.export import EXPORT_FORMATS, export_family
from tracekit.capture.reader import open_capture
from tracekit.analysis.perfetto import write_perfetto
from tracekit.capture.summary import capture_summary, format_summary
from tracekit.errors import CaptureFormatError, UsageError

__all__ = ["register", "info", "export"]


def info(
    capture: Path = typer.Argument(..., help="A capture directory (NAME.tkcap)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (docs/cli-json/capture.md)."),
) -> None:
    """Summarise a capture: host, target, probes, rows per family, lost events.

    Examples:

      tracekit info vm.tkcap

      tracekit info samples/dirty-log-2m.tkcap --json | jq .families
    """
    summary = capture_summary(open_capture(capture))
    if as_json:
        typer.echo(json.dumps(summary, indent=1, default=str))
    else:
        typer.echo("\n".join(format_summary(summary)))


def export(
    capture: Path = typer.Argument(..., help="A capture directory (NAME.tkcap)."),
    family: Optional[str] = typer.Option(None, "--family", "-f", help="The event family to export (see 'tracekit info')."),
    fmt: Optional[str] = typer.Option(
        None, "--format", help=f"Output format: {' or '.join(EXPORT_FORMATS)} for a family (default csv); "
        "proto or json for --perfetto (default proto)."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Write here instead of standard output ('-' is standard output)."),
    perfetto: Optional[Path] = typer.Option(
        None, "--perfetto", help="Write a Perfetto trace of the whole capture to this file instead (native "
        "protobuf; --format json for the Chrome JSON trace format). The tracks: docs/perfetto.md."
    ),
) -> None:
    """Export a family as CSV, JSON Lines or Parquet, or the whole capture as a Perfetto trace.

    Examples:

      tracekit export vm.tkcap --family ioctl --format csv -o ioctl.csv

      tracekit export vm.tkcap -f walk_element --format jsonl | head

      tracekit export vm.tkcap -f mmu --format parquet -o mmu.parquet

      tracekit export vm.tkcap --perfetto vm.pftrace    # open in ui.perfetto.dev

      tracekit export vm.tkcap --perfetto vm.json --format json
    """
    if perfetto is not None and (family is not None or output is not None):
        raise UsageError("--perfetto FILE writes the whole capture; --family and -o export one family: give one or the other")
    cap = open_capture(capture)
    if perfetto is not None:
        written = write_perfetto(cap, perfetto, fmt or "proto")
        skipped = f"; {written.skipped:,} events before the clock's zero left out" if written.skipped else ""
        typer.echo(f"wrote {perfetto}: {written.tracks:,} tracks, {written.events:,} events{skipped}", err=True)
        return
    fmt = fmt or "csv"
    if family is None:
        raise UsageError(f"--family is required; this capture has: {', '.join(cap.families()) or 'none'}")
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
    if output is None or str(output) == "-":
        sys.stdout.flush()
        export_family(cap, family, fmt, sys.stdout.buffer)
        return
    if output.is_symlink() or output.is_dir():
        raise CaptureFormatError(f"refusing to write through a symlink or over a directory: {output}")
    rows = export_family(cap, family, fmt, output)
    typer.echo(f"wrote {rows:,} rows of {family} to {output}", err=True)


def register(app: typer.Typer) -> None:
    app.command("info")(info)
    app.command("export")(export)
