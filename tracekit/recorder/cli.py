"""``tracekit record``: the live recorder's command line.

The command builds a :class:`~tracekit.recorder.session.RecordConfig` and runs the recording's steps
(:func:`~tracekit.recorder.session.record`): banner, status and summary on stderr, and with ``--json``
the summary on stdout (docs/cli-json/recorder.md). ``--print-bpf`` prints the BPF program and exits.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from tracekit.errors import UsageError, error_line
from tracekit.host import Host, tracefs_root
from tracekit.recorder.backend_bcc import BccBackend
from tracekit.recorder.kvm_ioctls import KVM_RUN, parse_ioctl
from tracekit.recorder.probe_family import RecordOptions
from tracekit.recorder.registry import make_family
from tracekit.recorder.session import RecordConfig, record

__all__ = ["register", "record_command"]

_HELP = """Record KVM MMU tracepoints of a live VM process into a capture directory.

Attaches the probe families (walk, ioctl, lock, mmu by default; the function-probe families stage2 and tdp on request) to the target processes, filtered by tgid in the kernel, and writes NAME.tkcap/ (Parquet segments per event family plus capture.json). The target is --pid PID|NAME (a process name such as qemu-system-x86_64 or a unique prefix of one such as qemu, or a QEMU -name guest name; repeatable), --all-vms (every process holding a KVM VM), or a command given after -- that is started once the probes are attached. Stops after --duration, on Ctrl-C/SIGTERM, or when the target exits (a command after -- that fails gives its exit status to tracekit's, 128 + N when signal N killed it, as time and strace do; the capture is complete all the same); a second Ctrl-C hurries the cleanup (the command is killed at once) without skipping any of it. Probes absent on this host are listed in the capture's manifest with the reason (stage2 and tdp need kprobes, stage2 an arm64 host, most of tdp the TDP MMU).

Examples:

  tracekit record --pid qemu-system-x86_64 -d 10 -o vm.tkcap

  tracekit record --pid myguest --probes walk,mmu -o walks.tkcap  # QEMU -name

  tracekit record --all-vms -d 5 -o host.tkcap  # every VM; analyze --vm cuts one out

  tracekit record -o wl.tkcap -- tracekit workload dirty-log --iterations 3

  tracekit record --backend tracefs -d 5 --pid 4242 -o tf.tkcap  # no bcc

  tracekit record --stream-ioctl KVM_RUN -d 2 --pid 4242 -o run.tkcap --json

  tracekit record --probes walk,ioctl,tdp,stage2 -o fp.tkcap -- tracekit workload dirty-log  # kprobes where the host has them
"""


def record_command(
    command: Optional[List[str]] = typer.Argument(
        None, help="Command to start and trace (after --), e.g. -- tracekit workload dirty-log.", show_default=False),
    pid: List[str] = typer.Option(
        [], "--pid", "-p", help="Process to trace: a pid, a process name (or a unique prefix of one, like pgrep), "
        "or a QEMU -name guest name. Repeatable."),
    all_vms: bool = typer.Option(
        False, "--all-vms", help="Trace every process that holds a KVM VM (each row keeps its pid)."),
    duration: Optional[float] = typer.Option(
        None, "--duration", "-d", help="Stop after this many seconds (default, or inf: until Ctrl-C or the target exits)."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Capture directory to create (default: record-<UTC time>.tkcap)."),
    probes: str = typer.Option(
        "walk,ioctl,lock,mmu", "--probes", help="Comma-separated probe families to attach (walk, ioctl, lock, mmu, "
        "stage2, tdp)."),
    backend: str = typer.Option(
        "auto", "--backend", help="bcc (BPF ring buffers), tracefs (private ftrace instance) or auto (bcc if usable)."),
    stream_ioctl: List[str] = typer.Option(
        [], "--stream-ioctl", help="Stream this ioctl (name or number) call by call instead of aggregating it "
        "(KVM_RUN is aggregated per thread unless named here). Repeatable."),
    segment_seconds: float = typer.Option(
        1.0, "--segment-seconds", help="Close a Parquet segment at the latest after this many seconds."),
    ring_mb: Optional[int] = typer.Option(
        None, "--ring-mb", help="Size of the walk and mmu BPF ring buffers in MiB (a power of two; default 16 and 8), and of the "
        "tracefs backend's buffer per CPU (default 32); raise it when events are lost."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No banner, status line or summary on stderr."),
    print_bpf: bool = typer.Option(False, "--print-bpf", hidden=True, help="Print the BPF program and exit."),
) -> None:
    families = tuple(p.strip() for p in probes.split(",") if p.strip())
    if not families:
        raise UsageError("--probes names no family")
    streamed = tuple(parse_ioctl(s) for s in stream_ioctl)
    options = RecordOptions(stream_ioctls=streamed, aggregate_ioctls=(KVM_RUN,))
    if ring_mb is not None:
        if ring_mb <= 0 or ring_mb & (ring_mb - 1):
            raise UsageError("--ring-mb must be a power of two")
        options.ring_pages = {"walk_events": ring_mb * 256, "mmu_events": ring_mb * 256}
        options.tracefs_buffer_kb = ring_mb * 1024
    if print_bpf:
        _print_bpf(families, options)
        return
    if output is None:
        output = Path(time.strftime("record-%Y%m%d-%H%M%S.tkcap", time.gmtime()))
    config = RecordConfig(output=output, pid_specs=tuple(pid), all_vms=all_vms, command=list(command or []), duration=duration,
                          families=families, backend=backend, options=options, segment_seconds=segment_seconds,
                          command_line=["tracekit", *sys.argv[1:]], command_stdout_to_stderr=json_out)
    summary = record(config, stream=None if quiet else sys.stderr)
    if json_out:
        typer.echo(json.dumps(summary.to_json(), sort_keys=True))
    failure = summary.command_failure()
    if failure is not None:  # the capture is complete; the exit status says the command failed
        status, what = failure
        typer.echo(error_line(f"the traced command {what}; the capture {summary.output} is complete"), err=True)
        raise typer.Exit(status)


def _print_bpf(families: tuple[str, ...], options) -> None:
    host = Host(tracefs_root())
    plan = [(family, family.check(host)) for family in (make_family(name, options) for name in families)]
    backend = BccBackend(plan, 0)
    typer.echo("// cflags: " + " ".join(backend.cflags()))
    for _, statuses in plan:
        for status in statuses:
            if not status.available:
                typer.echo(f"// not attached here: {status.probe}: {status.reason}")
    typer.echo(backend.program_text())


def register(app: typer.Typer) -> None:
    """Add ``tracekit record`` to the root app."""
    app.command("record", help=_HELP, context_settings={"allow_interspersed_args": False})(record_command)
