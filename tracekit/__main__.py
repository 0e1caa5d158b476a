"""The ``tracekit`` console script (and ``python -m tracekit``): stop signals first, then the CLI.

Importing this module notes the stop signals (:func:`tracekit.stopsignals.note_early`) and unblocks
them (the installed console script starts Python with them blocked, :mod:`tracekit.launcher`);
:func:`main` imports the command line, makes the signals raise and runs :mod:`tracekit.cli`
(docs/recorder.md).
"""

from __future__ import annotations

import sys

from tracekit.stopsignals import StopSignal, install_early, note_early

note_early()  # before anything else: a signal raised here would escape every try

__all__ = ["main", "name_process"]


def name_process() -> None:
    """Name this process ``tracekit`` (its comm, which ps, top and ``--pid NAME`` read): the installed
    console script execs Python through ``env``, which would leave it named after the interpreter."""
    from tracekit.prctl import PR_SET_NAME, libc_prctl  # late: importing this entry module loads only the stop signals

    prctl = libc_prctl()
    if prctl is not None:  # without libc's prctl the name stays the interpreter's
        prctl(PR_SET_NAME, b"tracekit", 0, 0, 0)


def main() -> int:
    """Run the ``tracekit`` command line (which ends in SystemExit); return the status of a stop."""
    name_process()
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
