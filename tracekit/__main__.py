"""The ``tracekit`` console script (and ``python -m tracekit``): stop signals first, then the CLI.

Contract: :func:`main` installs the stop-signal handlers (:func:`tracekit.stopsignals.install_early`)
before the command line's heavy imports (pyarrow, pandas: about a second), then runs
:mod:`tracekit.cli`. A stop signal that no command has taken over ends the process with one line on
stderr and exit status 128 + the signal number, never a traceback.
"""

from __future__ import annotations

import sys

from tracekit.stopsignals import StopSignal, install_early

__all__ = ["main"]


def main() -> int:
    """Run the ``tracekit`` command line (which ends in SystemExit); return the status of a stop."""
    try:
        install_early()
        from tracekit.cli import app

        app(prog_name="tracekit")
    except StopSignal as stop:
        sys.stderr.write(f"tracekit: {stop}\n")
        return stop.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
