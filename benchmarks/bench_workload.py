"""Benchmark: how much the Python driver of ``tracekit workload dirty-log`` adds to what it measures.

Contract
--------
Runs the workload for 1 and 2 vCPUs and, for every phase the selftest prints, sets the driver's
phase time against a baseline measured in the same run:

- ``enable``/``disable``/``get``/``clear``: the time the kernel spent in the ioctls issued inside
  the phase, from ``syscalls:sys_enter_ioctl``/``sys_exit_ioctl`` of the main thread in a
  throwaway tracefs instance (clock ``mono``, microsecond text timestamps); without tracefs access
  it falls back to the ioctl log's own timestamps taken around each call (``--no-tracefs``);
- ``dirty``: the time the slowest vCPU spent inside ``KVM_RUN`` in each pass (the guest's own work
  including its faults), from the layout's ``pass_run_ns``.

Prints one row per configuration and phase (summed over the iterations), and their total: driver
time, baseline, their ratio and the difference (the driver's overhead). Nothing is asserted; the tracefs instance is removed in ``finally``.
Usage: ``python benchmarks/bench_workload.py [-b 256M] [-i 4] [--no-tracefs]``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from tracekit.recorder.backend_tracefs import INSTANCE_PREFIX
from tracekit.workload.dirtylog import run_dirty_log
from tracekit.workload.options import DirtyLogOptions, parse_size

TRACEFS = Path("/sys/kernel/tracing")
# "python-20445 [001] ..... 904.561114: sys_ioctl(fd: 0xc, ...)" and "... sys_ioctl -> 0x0"
_EVENT = re.compile(r"^\s*.+?-(\d+)\s+\[\d+\]\s+\S+\s+(\d+)\.(\d+): sys_ioctl(\(| ->)")
_PHASES = {
    "enable": "enable_dirty_logging",
    "get": "get_dirty_log",
    "clear": "clear_dirty_log",
    "disable": "disable_dirty_logging",
}


@contextmanager
def ioctl_tracing(pid: int):
    """Trace the ioctls of thread ``pid`` in a private tracefs instance; yields a reader of (enter_ns, exit_ns)."""
    # Named like the recorder's instances, so cleanup_stale_instances removes it if this process is killed.
    instance = TRACEFS / "instances" / f"{INSTANCE_PREFIX}{pid}-{os.urandom(4).hex()}"
    instance.mkdir()
    events = [instance / "events" / "syscalls" / f"sys_{kind}_ioctl" for kind in ("enter", "exit")]
    try:
        (instance / "trace_clock").write_text("mono")
        (instance / "buffer_size_kb").write_text("4096")
        for event in events:
            (event / "filter").write_text(f"common_pid == {pid}")
            (event / "enable").write_text("1")

        def calls() -> list[tuple[int, int]]:
            (instance / "tracing_on").write_text("0")
            pairs, entered = [], None
            for line in (instance / "trace").read_text().splitlines():
                match = _EVENT.match(line)
                if not match:
                    continue
                ns = int(match.group(2)) * 1_000_000_000 + int(match.group(3).ljust(9, "0")[:9])
                if match.group(4) == "(":
                    entered = ns
                elif entered is not None:
                    pairs.append((entered, ns))
                    entered = None
            return pairs

        yield calls
    finally:
        for event in events:
            try:
                (event / "enable").write_text("0")
            except OSError:
                pass
        instance.rmdir()


def _kernel_ns_by_phase(layout: dict, calls: list[tuple[int, int]]) -> dict[str, int]:
    totals = dict.fromkeys(_PHASES, 0)
    for short, name in _PHASES.items():
        for phase in (p for p in layout["phases"] if p["name"] == name):
            totals[short] += sum(e - s for s, e in calls if phase["start_ns"] <= s and e <= phase["end_ns"])
    return totals


def _logged_ns_by_phase(layout: dict) -> dict[str, int]:
    main = layout["main_tid"]
    calls = [(r["start_ns"], r["end_ns"]) for r in layout["ioctls"] if r["tid"] == main]
    return _kernel_ns_by_phase(layout, calls)


def bench(vcpus: int, size: int, iterations: int, use_tracefs: bool) -> list[tuple[str, int, int]]:
    options = DirtyLogOptions(vcpus=vcpus, bytes_per_vcpu=size, iterations=iterations)
    if use_tracefs:
        with ioctl_tracing(os.getpid()) as calls:
            result = run_dirty_log(options)
            kernel = _kernel_ns_by_phase(result.layout, calls())
    else:
        result = run_dirty_log(options)
        kernel = _logged_ns_by_phase(result.layout)
    result.check()
    driver = {
        "enable": result.enable_ns,
        "get": sum(it.get_dirty_log_ns for it in result.iterations),
        "clear": sum(it.clear_dirty_log_ns or 0 for it in result.iterations),
        "disable": result.disable_ns,
    }
    rows = [(phase, driver[phase], kernel[phase]) for phase in _PHASES]
    guest = sum(max(v["pass_run_ns"][i] for v in result.layout["vcpus"]) for i in range(1, iterations + 1))
    rows.append(("dirty", sum(it.dirty_memory_ns for it in result.iterations), guest))
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-b", "--bytes-per-vcpu", default="256M")
    parser.add_argument("-i", "--iterations", type=int, default=4)
    parser.add_argument("--no-tracefs", action="store_true", help="use the driver's own ioctl timestamps as the baseline")
    args = parser.parse_args(argv)
    use_tracefs = not args.no_tracefs and os.geteuid() == 0 and (TRACEFS / "instances").is_dir()
    baseline = "kernel time from sys_enter/exit_ioctl" if use_tracefs else "ioctl time at the ctypes boundary"
    print(f"dirty-log driver vs baseline ({baseline}; dirty = slowest vCPU's KVM_RUN time), {args.iterations} iterations")
    print(f"{'config':<14}{'phase':<9}{'driver us':>12}{'baseline us':>13}{'ratio':>8}{'overhead us':>13}")
    for vcpus in (1, 2):
        for phase, driver_ns, base_ns in bench(vcpus, parse_size(args.bytes_per_vcpu), args.iterations, use_tracefs):
            ratio = driver_ns / base_ns if base_ns else float("nan")
            config = f"{vcpus} vCPU x {args.bytes_per_vcpu}"
            print(f"{config:<14}{phase:<9}{driver_ns / 1e3:>12.1f}{base_ns / 1e3:>13.1f}{ratio:>8.3f}{(driver_ns - base_ns) / 1e3:>13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
