"""``tracekit workload dirty-log``: the typer front end of the built-in KVM workload.

:func:`register` adds a ``workload`` sub-command group with one command, ``dirty-log``, whose
options mirror dirty_log_perf_test (``-v -b -i -s -w -a -r -g -x``) plus ``--log-mode``,
``--no-initially-set``, ``--guest-page-size``, ``--ring-entries``, ``--eager-split-chunk SIZE``
(arm64), ``--json`` and ``--layout FILE``. All work happens
in :mod:`tracekit.workload.command`; errors are :class:`tracekit.errors.WorkloadError`, which the
root app prints as one line with exit code 1. This is the only workload module importing typer.
"""

from __future__ import annotations

from typing import Optional

import typer

from tracekit.workload.command import DESCRIPTION, EXAMPLES, OPTION_HELP, build_options, dirty_log_command

__all__ = ["register", "dirty_log"]

_H = OPTION_HELP


def dirty_log(
    vcpus: int = typer.Option(1, "--vcpus", "-v", help=_H["vcpus"]),
    bytes_per_vcpu: str = typer.Option("64M", "--bytes-per-vcpu", "-b", help=_H["bytes_per_vcpu"]),
    iterations: int = typer.Option(4, "--iterations", "-i", help=_H["iterations"]),
    backing: str = typer.Option("anonymous", "--backing", "-s", help=_H["backing"]),
    write_percent: int = typer.Option(100, "--write-percent", "-w", help=_H["write_percent"]),
    random_order: bool = typer.Option(False, "--random-order", "-a", help=_H["random_order"]),
    seed: int = typer.Option(1, "--seed", "-r", help=_H["seed"]),
    no_manual_protect: bool = typer.Option(False, "--no-manual-protect", "-g", help=_H["no_manual_protect"]),
    memslots: int = typer.Option(1, "--memslots", "-x", help=_H["memslots"]),
    log_mode: Optional[str] = typer.Option(None, "--log-mode", help=_H["log_mode"]),
    no_initially_set: bool = typer.Option(False, "--no-initially-set", help=_H["no_initially_set"]),
    guest_page_size: str = typer.Option("2m", "--guest-page-size", help=_H["guest_page_size"]),
    ring_entries: Optional[int] = typer.Option(None, "--ring-entries", help=_H["ring_entries"]),
    eager_split_chunk: Optional[str] = typer.Option(
        None, "--eager-split-chunk", metavar="SIZE", help=_H["eager_split_chunk"]
    ),
    as_json: bool = typer.Option(False, "--json", help=_H["json"]),
    layout: Optional[str] = typer.Option(None, "--layout", help=_H["layout"]),
) -> None:
    options = build_options(
        vcpus=vcpus,
        bytes_per_vcpu=bytes_per_vcpu,
        iterations=iterations,
        backing=backing,
        write_percent=write_percent,
        random_order=random_order,
        seed=seed,
        no_manual_protect=no_manual_protect,
        memslots=memslots,
        log_mode=log_mode,
        no_initially_set=no_initially_set,
        guest_page_size=guest_page_size,
        ring_entries=ring_entries,
        eager_split_chunk=eager_split_chunk,
    )
    dirty_log_command(options, as_json=as_json, layout_path=layout, out=lambda line: typer.echo(line))


dirty_log.__doc__ = DESCRIPTION + "\n\nExamples:\n\n" + "\n\n".join(f"  {example}" for example in EXAMPLES)


def register(app: typer.Typer) -> None:
    """Add the ``workload`` group and its ``dirty-log`` command to the root app."""
    group = typer.Typer(
        name="workload",
        help="The built-in KVM workload: a VM on /dev/kvm that gives every trace a known ground truth.\n\n"
        "Examples:\n\n  tracekit workload dirty-log\n\n  tracekit workload dirty-log -v 2 --json",
        no_args_is_help=True,
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    group.command("dirty-log")(dirty_log)
    app.add_typer(group, name="workload")
