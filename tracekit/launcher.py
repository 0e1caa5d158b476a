"""The ``tracekit`` console script, rewritten to start Python with the stop signals blocked.

A SIGINT during Python's own start-up (``site``, the venv's ``.pth`` files) would raise KeyboardInterrupt
before any tracekit code runs. The script written here execs Python through ``env --block-signal``; a
signal sent meanwhile stays pending until :func:`tracekit.stopsignals.note_early` has its handlers and
unblocks it. ``scripts/install.sh`` runs ``python -m tracekit.launcher .venv/bin/tracekit``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys

from tracekit.stopsignals import STOP_SIGNALS

__all__ = ["BLOCK", "launcher_text", "env_blocks_signals", "write_launcher", "main"]

#: The ``env`` option that blocks every stop signal: ``--block-signal=INT,TERM,HUP``.
BLOCK = "--block-signal=" + ",".join(signal.Signals(sig).name.removeprefix("SIG") for sig in STOP_SIGNALS)
_BODY = "import sys\nfrom tracekit.__main__ import main\nsys.exit(main())\n"
_SHEBANG_MAX = 255  # bytes the kernel reads of a '#!' line (BINPRM_BUF_SIZE 256 since Linux 5.1)


def launcher_text(python: str, env: str = "/usr/bin/env") -> str:
    """The console script: ``#!env -S --block-signal=... python``, or the same through ``/bin/sh`` when that
    line would be too long for the kernel or ``python`` holds a space (as pip does for long paths)."""
    shebang = f"#!{env} -S {BLOCK} {python}"
    if len(shebang.encode()) <= _SHEBANG_MAX and not any(c.isspace() for c in env + python):
        return f"{shebang}\n{_BODY}"
    # sh runs the first two lines (exec); Python reads them as a string expression and runs the rest
    command = " ".join(shlex.quote(part) for part in (env, BLOCK, python))
    return f"#!/bin/sh\n'''exec' {command} \"$0\" \"$@\"\n' '''\n{_BODY}"


def env_blocks_signals(env: str) -> bool:
    """Whether ``env`` is GNU coreutils' (8.31 or newer), which blocks signals for the command it runs."""
    try:
        return subprocess.run([env, BLOCK, "true"], capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


def write_launcher(script: str, python: str) -> str:
    """Replace ``script`` by the launcher of ``python``; a line saying what was done (or why not)."""
    env = shutil.which("env") or "/usr/bin/env"
    if not env_blocks_signals(env):
        return (f"{script} left as pip wrote it: {env} cannot {BLOCK} (GNU coreutils 8.31 or newer can); "
                "a Ctrl-C during Python's start-up prints a traceback")
    temporary = f"{script}.tracekit-new"
    with open(temporary, "w") as out:
        out.write(launcher_text(python, env))
    os.chmod(temporary, 0o755)
    os.replace(temporary, script)
    return f"{script} starts Python with SIGINT, SIGTERM and SIGHUP blocked until tracekit handles them"


def main(argv: list[str] | None = None) -> int:
    """``python -m tracekit.launcher SCRIPT``: rewrite SCRIPT for this Python."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not os.path.isfile(args[0]):
        sys.stderr.write("usage: python -m tracekit.launcher PATH-OF-THE-TRACEKIT-CONSOLE-SCRIPT\n")
        return 2
    print(write_launcher(args[0], sys.executable))
    return 0


if __name__ == "__main__":
    sys.exit(main())
