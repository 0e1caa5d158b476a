"""Attaching to a running VM process: the window ``tracekit record -p PID -d N`` records, what it loses.

Starts a target (the built-in workload, 2 vCPUs, by default; any command after ``--``, e.g. the kernel's
``dirty_log_perf_test -b 64M -i 200``), waits ``--settle`` seconds, then runs ``tracekit record -p PID -d
N`` on it once per ``--repeat``, and prints per run: the requested duration, the recording window the
capture's manifest holds (every family armed to disarmed, CLOCK_MONOTONIC), the recorder's own wall time
(compile included), events lost and failed ring outputs, the operations the window cut (manifest
``partial``) and, from ``tracekit analyze --json``, walks without elements and malformed walks. The
baseline is the requested duration itself: the window should exceed it by at most a poll interval
(20 ms) and nothing should be lost. Asserts nothing. Run as root from the project's venv, under
``flock`` on a shared host.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRACEKIT = str(Path(sys.executable).with_name("tracekit"))


def _record(pid: int, seconds: float, out: Path) -> dict:
    start = time.monotonic()
    done = subprocess.run([TRACEKIT, "record", "-q", "-p", str(pid), "-d", str(seconds), "-o", str(out)],
                          capture_output=True, text=True)
    wall = time.monotonic() - start
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    manifest = json.loads((out / "capture.json").read_text())
    analysis = json.loads(subprocess.run([TRACEKIT, "analyze", "--json", str(out)], capture_output=True,
                                         text=True).stdout or "{}")
    partial = (analysis.get("info") or {}).get("partial") or {}
    return {
        "requested_s": seconds,
        "window_s": (manifest.get("window") or {}).get("seconds"),
        "recorder_wall_s": round(wall, 2),
        "lost": sum(entry["count"] for entry in manifest.get("lost", [])),
        "ring_failures": manifest.get("ring_failures_total", 0),
        "rows": {name: f["rows"] for name, f in manifest.get("families", {}).items() if f["rows"]},
        "partial": manifest.get("partial"),
        "walks_without_elements": partial.get("walks_without_elements"),
        "malformed_walks": partial.get("malformed_walks"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between the target's start and attaching")
    parser.add_argument("command", nargs="*", help="the target (default: the built-in workload, 2 vCPUs, 256 MiB each)")
    args = parser.parse_args()
    command = args.command or [TRACEKIT, "workload", "dirty-log", "-v", "2", "-b", "256M", "-i", "100000"]
    target = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(args.settle)
        with tempfile.TemporaryDirectory() as tmp:
            for run in range(args.repeat):
                if target.poll() is not None:
                    print(f"the target exited ({target.returncode}) before run {run + 1}")
                    break
                result = _record(target.pid, args.duration, Path(tmp) / f"run{run}.tkcap")
                print(json.dumps({"run": run + 1, **result}, sort_keys=True))
    finally:
        target.send_signal(signal.SIGINT)
        try:
            target.wait(timeout=60)
        except subprocess.TimeoutExpired:
            target.kill()
            target.wait()


if __name__ == "__main__":
    main()
