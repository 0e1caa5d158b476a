"""``tracekit analyze``, ``tracekit report`` and ``tracekit compare``.

Contract: :func:`register` adds the three commands to the root app. They only read captures (and an
optional selftest output file) and write to standard output or the named report file; every error is
a :class:`tracekit.errors.TracekitError` (one line and a non-zero exit at the root). The ``--json``
documents are described in docs/cli-json/analysis.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer
from typer.core import TyperCommand

from tracekit.analysis.analyze import analysis_json, analyze_capture, render_text
from tracekit.analysis.common import records
from tracekit.analysis.compare import compare_runs, capture_metrics
from tracekit.analysis.compare_view import compare_html, compare_text, sides_notes
from tracekit.analysis.report import write_report
from tracekit.analysis.vms import VmCapture, select_vm
from tracekit.capture import open_capture
from tracekit.errors import CaptureFormatError, UsageError
from tracekit.memtune import keep_freed_memory
from tracekit.render import write_output_file

__all__ = ["register", "analyze", "report", "compare"]

_PHASE_HELP = ("Keep only events inside this phase: a name (dirty-memory, get-dirty-log, clear-dirty-log, "
               "enable-dirty-logging, populate, ...) for every iteration, or NAME#ITERATION.")
_SELFTEST_HELP = ("Take the phases from this dirty_log_perf_test or kvm_page_table_test output file "
                  "(aligned on the capture's dirty-log ioctls) instead of the workload record. Not needed for a "
                  "selftest recorded with 'tracekit record -- ./dirty_log_perf_test ...': its output is in the capture.")


_VM_HELP = ("Keep only the rows of this recorded VM (a capture of several: --pid repeated or --all-vms): "
            "its pid, process or QEMU guest name, or a unique prefix of its process name.")


def _open(capture: Path, vm: Optional[str]) -> Any:
    """The capture, cut to one VM when ``vm`` is given."""
    cap = open_capture(capture)
    return VmCapture(cap, select_vm(cap.manifest, vm)) if vm is not None else cap


def _read_selftest(path: Optional[Path]) -> Optional[str]:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from error


def analyze(
    capture: Path = typer.Argument(..., help="A capture directory (NAME.tkcap)."),
    as_json: bool = typer.Option(False, "--json", help="Print every table and verdict as JSON (docs/cli-json/analysis.md)."),
    phase: Optional[str] = typer.Option(None, "--phase", "-P", help=_PHASE_HELP),
    selftest_output: Optional[Path] = typer.Option(None, "--selftest-output", help=_SELFTEST_HELP),
    vm: Optional[str] = typer.Option(None, "--vm", help=_VM_HELP),
) -> None:
    """Analyse a capture: walk depth, model cross-check, skipped levels, lock contention, ioctl and split latency.

    Prints 80-column tables; every table can be cut by phase. Analyses whose event families the
    capture lacks are listed as skipped, with the reason.

    Examples:

      tracekit analyze samples/x86-dirty-log-2m.tkcap

      tracekit analyze vm.tkcap --phase clear-dirty-log

      tracekit analyze vm.tkcap --phase dirty-memory#2 --json | jq .verdicts

      tracekit analyze vm.tkcap --selftest-output dirty_log_perf_test.out

      tracekit analyze host.tkcap --vm guest1  # one VM of a --all-vms recording
    """
    keep_freed_memory()
    result = analyze_capture(_open(capture, vm), phase=phase, selftest_output=_read_selftest(selftest_output))
    if as_json:
        typer.echo(json.dumps(analysis_json(result), indent=1, default=str))
    else:
        typer.echo(render_text(result))


def report(
    capture: Path = typer.Argument(..., help="A capture directory (NAME.tkcap)."),
    output: Path = typer.Option(..., "--output", "-o", help="The HTML file to write."),
    phase: Optional[str] = typer.Option(None, "--phase", "-P", help=_PHASE_HELP),
    selftest_output: Optional[Path] = typer.Option(None, "--selftest-output", help=_SELFTEST_HELP),
    vm: Optional[str] = typer.Option(None, "--vm", help=_VM_HELP),
) -> None:
    """Write one self-contained HTML page: verdicts, figures and tables of a capture.

    Verdicts first; then where the time goes, a timeline per vCPU and thread with the phases,
    walk depth and visits per level against the model (log axes), latency distributions where
    there are enough calls (else the values), and every table, times relative to the capture start.

    Examples:

      tracekit report samples/x86-dirty-log-2m.tkcap -o report.html

      tracekit report vm.tkcap -o clear.html --phase clear-dirty-log
    """
    keep_freed_memory()
    cap = _open(capture, vm)
    result = analyze_capture(cap, phase=phase, selftest_output=_read_selftest(selftest_output))
    write_report(result, cap, output)
    typer.echo(f"wrote {output}", err=True)


class _SplitAtDoubleDash(TyperCommand):
    """Keeps the runs after ``--`` apart (click would merge them into the positional list). Options may
    come anywhere, after the runs of B too (``A -- B --phase X``): an option after ``--`` is moved
    before it with its value, as captures never start with ``-``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if "--" in args:
            i = args.index("--")
            takes_value = {name for param in self.params if not getattr(param, "is_flag", True)
                           for name in (*param.opts, *param.secondary_opts)}
            options, runs_b = [], []
            after = iter(args[i + 1:])
            for token in after:
                if not token.startswith("-"):
                    runs_b.append(token)
                    continue
                options.append(token)
                value = next(after, None) if token in takes_value else None
                if value is not None:
                    options.append(value)
            ctx.meta["tracekit_runs_b"] = runs_b
            args = args[:i] + options
        return super().parse_args(ctx, args)


def _metrics(paths: List[Path], phase: Optional[str]) -> tuple[list, list[dict]]:
    runs, manifests = [], []
    for path in paths:
        cap = open_capture(path)
        runs.append(capture_metrics(analyze_capture(cap, phase=phase), cap.manifest))
        manifests.append(cap.manifest)
    return runs, manifests


def compare(
    ctx: typer.Context,
    runs_a: List[Path] = typer.Argument(..., help="Captures of side A, then --, then captures of side B."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON (docs/cli-json/analysis.md)."),
    phase: Optional[str] = typer.Option(None, "--phase", "-P", help=_PHASE_HELP),
    show_all: bool = typer.Option(False, "--all", help="Also list metrics identical in every run or within noise."),
    html_output: Optional[Path] = typer.Option(None, "--html", help="Also write the tables and a figure of the "
                                               "changes to this HTML file."),
) -> None:
    """Compare repeated runs on two kernels or settings: A... -- B...

    Per metric, grouped by phase, ioctl, page-table level, lock role (mmu_lock, never an address) and
    work (walks, splits): A mean ± stdev, B mean ± stdev, the change of B against A in percent ±
    its stdev propagated from both sides, and the runs per side, as a kernel patch's cover letter
    puts it: "-35.47% runtime (stdev 5.63%)". A side with one run has no stdev ("n/a"). A difference
    that Welch's t-test does not find significant at 95% is "within noise"; such rows, and metrics
    identical in every run, are shown only with --all. Lab captures are flagged: their timings are
    emulated. Options may come anywhere, after the runs of B too.

    Examples:

      tracekit compare base-1.tkcap base-2.tkcap base-3.tkcap -- new-1.tkcap new-2.tkcap new-3.tkcap

      tracekit compare a*.tkcap -- b*.tkcap --phase enable-dirty-logging --html compare.html

      tracekit compare a*.tkcap -- b*.tkcap --json | jq '.metrics[] | .text'
    """
    runs_b = [Path(p) for p in ctx.meta.get("tracekit_runs_b", [])]
    if not runs_b:
        raise UsageError("give the captures of side B after a '--': tracekit compare A... -- B...")
    keep_freed_memory()
    metrics_a, manifests_a = _metrics(runs_a, phase)
    metrics_b, manifests_b = _metrics(runs_b, phase)
    table = compare_runs(metrics_a, metrics_b)
    if table.empty:
        raise CaptureFormatError("the two sides have no metric in common (do the captures hold the same families?)")
    paths_a, paths_b = [str(p) for p in runs_a], [str(p) for p in runs_b]
    notes = sides_notes(paths_a, manifests_a, paths_b, manifests_b, phase)
    if html_output is not None:
        write_output_file(html_output, compare_html(table, notes, show_all))
    if as_json:
        doc = {"schema": "tracekit.compare/2", "a": paths_a, "b": paths_b, "phase": phase,
               "notes": notes, "metrics": records(table)}
        typer.echo(json.dumps(doc, indent=1))
        return
    typer.echo(compare_text(table, notes, show_all))
    if html_output is not None:
        typer.echo(f"wrote {html_output}", err=True)


def register(app: typer.Typer) -> None:
    """Add ``analyze``, ``report`` and ``compare`` to the root app."""
    app.command("analyze")(analyze)
    app.command("report")(report)
    app.command("compare", cls=_SplitAtDoubleDash)(compare)
