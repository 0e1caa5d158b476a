"""The ``tracekit`` command line.

The only place where a :class:`tracekit.errors.TracekitError`, a stop signal
(:class:`tracekit.stopsignals.StopSignal`) or a usage error (unknown option, missing argument) becomes
one line on stderr (:func:`tracekit.render.error_line`) and a non-zero exit code. Each
subsystem adds its commands through ``register(app)`` in its own ``cli`` module
(:data:`COMMAND_MODULES`), so this file stays small.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import typer
from typer.core import TyperGroup

from tracekit import __version__, demo, doctor, sql
from tracekit.analysis import cli as analysis_cli
from tracekit.capture import cli as capture_cli
from tracekit.errors import TracekitError, printable
from tracekit.fleet import cli as fleet_cli
from tracekit.lab import cli as lab_cli
from tracekit.model import cli as model_cli
from tracekit.recorder import cli as recorder_cli
from tracekit.render import error_line
from tracekit.stopsignals import StopSignal
from tracekit.top import cli as top_cli
from tracekit.workload import cli as workload_cli

__all__ = ["app", "main", "COMMAND_MODULES", "is_verbose"]

#: The modules that add commands to the app, each through ``register(app: typer.Typer) -> None``, in the
#: order ``--help`` lists their commands.
COMMAND_MODULES = (capture_cli, sql, doctor, demo, model_cli, workload_cli, recorder_cli, top_cli, analysis_cli,
                   lab_cli, fleet_cli)

_verbose = False


def is_verbose() -> bool:
    """True when ``-v/--verbose`` was given before the command."""
    return _verbose


class _TracekitGroup(TyperGroup):
    """Turns TracekitError, StopSignal and usage errors into one line and an exit code; keeps the
    commands in order."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Click's usage errors (unknown option, missing argument, bad value) in the one error style of
        :func:`tracekit.render.error_line`, not typer's boxed panels; exit code 2."""
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except Exception as error:  # click's exceptions, by duck type: typer has vendored click
            if not (hasattr(error, "format_message") and hasattr(error, "exit_code")) and \
                    type(error).__name__ != "Abort":
                raise
            code = _show_usage_error(error)
            if not standalone_mode:
                raise
            sys.exit(code)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except TracekitError as error:
            typer.echo(error_line(str(error)), err=True)
            if _verbose and error.detail:
                typer.echo(printable(error.detail), err=True)
            raise typer.Exit(error.exit_code) from None
        except StopSignal as stop:
            typer.echo(f"tracekit: {stop}", err=True)
            raise typer.Exit(stop.exit_code) from None
        except BrokenPipeError:
            raise typer.Exit(141) from None


def _show_usage_error(error: Exception) -> int:
    """Print a click exception in the one error style (help itself where no arguments ask for it); its
    exit code."""
    if type(error).__name__ == "Abort":
        typer.echo("tracekit: aborted", err=True)
        return 1
    if type(error).__name__ == "NoArgsIsHelpError":  # a group called bare: its help
        typer.echo(error.format_message(), err=True)
        return int(getattr(error, "exit_code", 2))
    message = error.format_message()
    ctx = getattr(error, "ctx", None)
    if ctx is not None:
        message = message.rstrip(".") + f" (see '{ctx.command_path} -h')"
    typer.echo(error_line(message), err=True)
    return int(getattr(error, "exit_code", 2))


app = typer.Typer(
    cls=_TracekitGroup,
    name="tracekit",
    help=(
        "See what KVM's second-stage page-table code does: record KVM tracepoints of a live VM "
        "into a Parquet capture, analyse it offline against a reference page-table model.\n\n"
        "Examples:\n\n"
        "  tracekit doctor                       # what this host can trace, and the fixes\n\n"
        "  tracekit demo                         # record the built-in KVM workload and analyse it\n\n"
        "  tracekit record --pid qemu -d 10 -o vm.tkcap\n\n"
        "  tracekit info vm.tkcap"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"tracekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show the full detail of an error (compiler or verifier log, child output)."
    ),
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    global _verbose
    _verbose = verbose


for _module in COMMAND_MODULES:
    _module.register(app)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="tracekit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
