"""Where a Ctrl-C during start-up prints a traceback: SIGINT sent at offsets after ``exec``.

Each trial starts a ``tracekit`` command and sends SIGINT ``offset`` ms after starting it; the outcome is
classed as ``killed`` (the signal's default action: before the interpreter installed its own handler),
``traceback`` (a ``KeyboardInterrupt`` traceback: after the interpreter's handler, before tracekit's),
``one line`` (tracekit's ``stopped by SIGINT``, exit 130), or ``finished`` (the command ended first).
Sweeps, in one run, pip's plain ``#!python`` console script (the baseline) and the venv's installed one
(:mod:`tracekit.launcher`'s, Python started with the stop signals blocked). Prints per offset the
outcomes, the window in which each was seen, with the load average (the window moves with the host's
load), and, from ``python -X importtime``, what the interpreter imports before tracekit's handlers.
Run from the project's venv: ``.venv/bin/python benchmarks/bench_startup_signals.py [--step 5] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "x86-dirty-log-2m.tkcap"


def trial(command: list[str], offset_ms: float) -> str:
    """The outcome of one start of ``command`` with SIGINT ``offset_ms`` after it."""
    trial.count += 1
    command = [part.replace("{n}", str(trial.count)) for part in command]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(offset_ms / 1000)
    try:
        process.send_signal(signal.SIGINT)
    except ProcessLookupError:
        pass
    _, err = process.communicate(timeout=120)
    text = err.decode(errors="replace")
    if "Traceback" in text or "KeyboardInterrupt" in text:
        return "traceback"
    if process.returncode == -signal.SIGINT:
        return "killed"
    if process.returncode == 128 + signal.SIGINT and text.strip().count("\n") == 0 and "stopped by SIGINT" in text:
        return "one line"
    if process.returncode in (0, 1) and "SIGINT" not in text:
        return "finished"
    return f"other (exit {process.returncode}: {text.strip()[:60]!r})"


trial.count = 0


def sweep(name: str, command: list[str], offsets: list[float], repeat: int) -> None:
    print(f"{name}: {' '.join(command[1:])}   (load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)")
    seen: dict[str, list[float]] = collections.defaultdict(list)
    for offset in offsets:
        outcomes = collections.Counter(trial(command, offset) for _ in range(repeat))
        for outcome in outcomes:
            seen[outcome].append(offset)
        print(f"  {offset:5.0f} ms: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    for outcome, where in sorted(seen.items()):
        print(f"  {outcome}: {len(where)} offsets, {min(where):.0f}-{max(where):.0f} ms")
    print(f"  (load average at end {os.getloadavg()[0]:.2f})")


def imports_before_handlers() -> None:
    """What ``python -X importtime`` says the interpreter imports before tracekit's entry module runs."""
    script = "import re, sys; from tracekit.__main__ import main"
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", script], capture_output=True, text=True).stderr
    rows = []
    for line in out.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split(":", 1)[1].split("|")
        if not name.startswith(" " * 3):  # top-level imports only
            rows.append((name.strip(), int(cumulative)))
    print("top-level imports before tracekit's handlers (cumulative, this run): "
          + ", ".join(f"{name} {us / 1000:.1f} ms" for name, us in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", type=float, default=10.0, help="ms between offsets")
    parser.add_argument("--last", type=float, default=300.0, help="last offset (ms)")
    parser.add_argument("--repeat", type=int, default=2, help="trials per offset")
    args = parser.parse_args()
    # the commands start as from a shell, SIGINT at its default (run as a background job, this process
    # would ignore it, and so would each command until its handlers are in: a lost Ctrl-C, not a window)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    script = str(Path(sys.executable).parent / "tracekit")
    offsets = [i * args.step for i in range(int(args.last / args.step) + 1)]
    imports_before_handlers()
    with tempfile.TemporaryDirectory(prefix="tk-sigint-") as tmp:
        pips = Path(tmp) / "tracekit-pip"
        pips.write_text(f"#!{sys.executable}\nimport sys\nfrom tracekit.__main__ import main\nsys.exit(main())\n")
        pips.chmod(0o755)
        sweep("analyze, pip's script", [str(pips), "analyze", str(SAMPLE)], offsets, args.repeat)
        sweep("analyze", [script, "analyze", str(SAMPLE)], offsets, args.repeat)
        if os.geteuid() == 0:
            sweep("record", [script, "record", "-o", f"{tmp}/r{{n}}.tkcap", "-d", "1", "--", "sleep", "2"], offsets,
                  args.repeat)
        else:
            print("record: skipped (not root)")


if __name__ == "__main__":
    main()
