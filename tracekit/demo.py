"""``tracekit demo``: the embedded default job — record the built-in KVM workload, then analyse it.

Contract: when this host can record (privileges, tracefs, a usable ``/dev/kvm``), :func:`demo` records
``tracekit workload dirty-log`` (default options) with every tracepoint family the host offers (KVM_RUN
streamed call by call) into a new capture and prints ``tracekit analyze`` of it. Otherwise, or with
``--sample``, it analyses the bundled sample capture and says why. Errors are TracekitError subclasses (one line at the CLI edge).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

import tracekit
from tracekit.analysis.analyze import analyze_capture, render_text
from tracekit.capabilities import recording_blockers as host_recording_blockers
from tracekit.capture import open_capture
from tracekit.errors import MissingCapability
from tracekit.recorder.kvm_ioctls import KVM_RUN
from tracekit.recorder.probe_family import RecordOptions
from tracekit.recorder.session import RecordConfig, record

__all__ = ["register", "demo", "bundled_sample", "recording_blockers"]

SAMPLE_NAME = "x86-dirty-log-2m.tkcap"


def bundled_sample() -> Path | None:
    """The sample capture shipped in the source tree, or None in an installation without samples."""
    candidate = Path(tracekit.__file__).resolve().parent.parent / "samples" / SAMPLE_NAME
    return candidate if (candidate / "capture.json").is_file() else None


def recording_blockers() -> list[str]:
    """Why this host cannot record the workload (each with its fix); empty when it can."""
    return host_recording_blockers(kvm=True)


def _analyse(path: Path) -> None:
    typer.echo(render_text(analyze_capture(open_capture(path))))


def demo(
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Capture directory to create (default: demo-<UTC time>.tkcap here)."),
    sample: bool = typer.Option(False, "--sample", help="Analyse the bundled sample capture instead of recording."),
) -> None:
    """Record the built-in dirty-logging workload on /dev/kvm and print its analysis.

    The workload is 'tracekit workload dirty-log' with its defaults (1 vCPU, 64 MiB, 2 MiB guest pages,
    4 iterations, manual clear); every tracepoint family this host offers is recorded, KVM_RUN call by call
    (a few calls per pass, so 'tracekit export --perfetto' shows each run on its vCPU). Without /dev/kvm
    or tracing rights the bundled sample capture is analysed instead, and the reason is printed.

    Examples:

      sudo tracekit demo

      sudo tracekit demo -o first.tkcap && tracekit report first.tkcap -o first.html

      tracekit demo --sample
    """
    blockers = [] if sample else recording_blockers()
    if sample or blockers:
        path = bundled_sample()
        if path is None:
            raise MissingCapability("cannot record here (" + "; ".join(blockers or ["--sample"]) +
                                    ") and this installation has no bundled sample")
        for reason in blockers:
            typer.echo(f"tracekit demo: cannot record here: {reason}", err=True)
        typer.echo(f"tracekit demo: analysing the bundled sample {path.name}", err=True)
        _analyse(path)
        return
    output = output or Path(time.strftime("demo-%Y%m%d-%H%M%S.tkcap", time.gmtime()))
    command = [sys.executable, "-m", "tracekit.cli", "workload", "dirty-log"]
    # KVM_RUN streamed call by call (the workload makes a few per pass), so each run is on the timeline.
    config = RecordConfig(output=output, command=command, command_line=["tracekit", "demo", *sys.argv[2:]],
                          command_stdout_to_stderr=True,
                          options=RecordOptions(stream_ioctls=(KVM_RUN,), aggregate_ioctls=(KVM_RUN,)))
    record(config, stream=sys.stderr)
    typer.echo("", err=True)
    _analyse(output)
    typer.echo(f"\ncapture: {output}   next: tracekit report {output} -o {output.stem}.html", err=True)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
