"""The ``tracekit`` console script (and ``python -m tracekit``): stop signals first, then the CLI.

Contract: importing this module (the console script's first import of tracekit) makes the stop signals
be noted (:func:`tracekit.stopsignals.note_early`: this module and that one import nothing but ``os``
and ``signal``); :func:`main` imports numpy and the command line (pyarrow, pandas: about a second)
with the signals still only noted, since a handler that raised inside a library's import could meet a
bare ``except`` that swallows it, then makes them raise (:func:`tracekit.stopsignals.install_early`,
which raises one noted meanwhile) and runs :mod:`tracekit.cli`. A stop signal that no command has taken
over ends the process with one line on stderr and exit status 128 + the signal number, never a
traceback. What runs before this module (the interpreter's start-up and ``site``) answers SIGINT with
Python's own KeyboardInterrupt: measured by benchmarks/bench_startup_signals.py, described in
docs/recorder.md.
"""

from __future__ import annotations

import sys

from tracekit.stopsignals import StopSignal, install_early, note_early

note_early()  # before anything else: a signal raised here would escape every try

__all__ = ["main"]


def main() -> int:
    """Run the ``tracekit`` command line (which ends in SystemExit); return the status of a stop."""
    try:
        from tracekit.memtune import import_numpy_without_huge_pages  # after the stop signals, as every import

        import_numpy_without_huge_pages()  # before tracekit.cli, whose imports load numpy
        from tracekit.cli import app  # the signals only noted during the imports (see the module docstring)

        install_early()
        app(prog_name="tracekit")
    except StopSignal as stop:
        sys.stderr.write(f"tracekit: {stop}\n")
        return stop.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
