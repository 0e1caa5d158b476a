#!/usr/bin/env python3
"""Benchmark of ``tracekit record`` against an untraced run, a count-only BPF baseline and a naive recorder.

Contract: run as root on a host with /dev/kvm, bcc and kernel headers (``python
benchmarks/bench_recorder.py [--size 256M] [--iterations 4] [--long-factor 10]``). One run measures,
on the built-in workload (``tracekit workload dirty-log``, started held before ``exec`` so every
tracer is attached before it runs):

1. ``untraced``: no probe;
2. ``count-only``: one bcc program that only counts hits of the same tracepoints in a per-CPU array
   (tgid filter in the kernel): the floor of any tracer's observer effect;
3. ``naive``: the recorder's own BPF programs, consumed through bcc's ``open_ring_buffer`` with one
   Python callback per event (``ring_buffer_consume`` every 20 ms);
4. ``tracekit``: ``tracekit record`` with all four families (a subprocess, ``--json``).

Each mode runs ``--repeat`` times, interleaved, and the median run is reported (the host may be
shared). For each: the guest's work time (populate + dirty passes, from the workload's layout record) and its
slowdown against the untraced run, events delivered, lost (in-kernel reserve failures), the
recorder's CPU seconds and delivered events per recorder CPU-second, and the ratio of that figure to
the naive recorder's. Then the consumers' capacity on a full ring (the walk family's 64 MiB ring
filled by a workload run nobody reads, then emptied once by each consumer). Then ``tracekit record``'s peak RSS while
recording, for the run above and for one ``--long-factor`` times longer (more iterations). Figures
are printed as a table and ratios against baselines measured in the same run; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tracekit.capabilities import tracefs_root  # noqa: E402
from tracekit.recorder.bccload import BccBackend, import_bcc  # noqa: E402
from tracekit.recorder.family import Host  # noqa: E402
from tracekit.recorder.session import DEFAULT_FAMILIES, _keep_freed_memory, plan_families  # noqa: E402
from tracekit.recorder.family import RecordOptions  # noqa: E402
from tracekit.recorder.target import spawn_gated  # noqa: E402

TRACEKIT = str(Path(sys.executable).with_name("tracekit"))
STREAM_TABLES = ("walk", "walk_element", "walk_error", "ioctl", "lock", "mmu")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _workload_argv(size: str, iterations: int, layout: str) -> list[str]:
    return [TRACEKIT, "workload", "dirty-log", "-b", size, "-i", str(iterations), "--layout", layout]


def _guest_seconds(layout: dict) -> float:
    return sum(p["end_ns"] - p["start_ns"] for p in layout["phases"] if p["name"] in ("populate", "dirty_memory")) / 1e9


def _run_gated(argv: list[str], attach, poll, interval: float = 0.02) -> None:
    """Start ``argv`` held, call ``attach(pid)``, release it, call ``poll()`` until it exits."""
    child = spawn_gated(argv, stdout_to_stderr=True)
    try:
        attach(child.pid)
        child.release()
        while child.poll() is None:
            poll()
            time.sleep(interval)
        poll()
        if child.returncode != 0:
            raise SystemExit(f"workload failed with status {child.returncode}")
    finally:
        child.terminate()


def _tracepoints() -> list[str]:
    plan, _, _ = plan_families(DEFAULT_FAMILIES, Host(tracefs_root()), RecordOptions())
    return [s.probe for _, statuses in plan for s in statuses if s.available]


def run_untraced(size: str, iterations: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        layout = os.path.join(tmp, "layout.json")
        _run_gated(_workload_argv(size, iterations, layout), lambda pid: None, lambda: None)
        data = json.loads(Path(layout).read_text())
    return {"mode": "untraced", "guest_s": _guest_seconds(data), "delivered": 0, "lost": 0, "cpu_s": 0.0}


def run_count_only(size: str, iterations: int) -> dict:
    bcc = import_bcc()
    tps = _tracepoints()
    state: dict = {}

    def attach(pid: int) -> None:
        text = f"typedef __u64 gpa_t;\nBPF_PERCPU_ARRAY(hits, u64, {len(tps)});\n"
        for i, tp in enumerate(tps):
            system, event = tp.split(":")
            text += (f"TRACEPOINT_PROBE({system}, {event}) {{ if ((bpf_get_current_pid_tgid() >> 32) != {pid}) return 0;"
                     f" u32 k = {i}; u64 *c = hits.lookup(&k); if (c) (*c)++; return 0; }}\n")
        state["bpf"] = bcc.BPF(text=text.encode(), cflags=["-w"])
        state["cpu0"] = _cpu()

    with tempfile.TemporaryDirectory() as tmp:
        layout = os.path.join(tmp, "layout.json")
        try:
            _run_gated(_workload_argv(size, iterations, layout), attach, lambda: None)
            hits = state["bpf"][b"hits"]
            counted = sum(int(sum(hits.getvalue(hits.Key(i)))) for i in range(len(tps)))
        finally:
            if "bpf" in state:
                state["bpf"].cleanup()
        data = json.loads(Path(layout).read_text())
    return {"mode": "count-only", "guest_s": _guest_seconds(data), "delivered": counted, "lost": 0,
            "cpu_s": _cpu() - state["cpu0"]}


def run_naive(size: str, iterations: int) -> dict:
    import_bcc()
    plan, _, _ = plan_families(DEFAULT_FAMILIES, Host(tracefs_root()), RecordOptions())
    state = {"events": 0}

    def on_event(_ctx, _data, _size) -> None:
        state["events"] += 1

    def attach(pid: int) -> None:
        backend = BccBackend(plan, pid)
        backend.start()  # loads and attaches; its mmap readers stay unused
        for family, _ in plan:
            for ring in family.rings():
                backend.bpf[ring.map_name.encode()].open_ring_buffer(on_event)
        state["backend"] = backend
        state["cpu0"] = _cpu()

    def poll() -> None:
        if "backend" in state:
            state["backend"].bpf.ring_buffer_consume()

    with tempfile.TemporaryDirectory() as tmp:
        layout = os.path.join(tmp, "layout.json")
        try:
            _run_gated(_workload_argv(size, iterations, layout), attach, poll)
            lost = sum(c for _, _, c in state["backend"].lost())
        finally:
            if "backend" in state:
                state["backend"].close()
        data = json.loads(Path(layout).read_text())
    return {"mode": "naive", "guest_s": _guest_seconds(data), "delivered": state["events"], "lost": lost,
            "cpu_s": _cpu() - state["cpu0"]}


def run_tracekit(size: str, iterations: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.tkcap")
        proc = subprocess.run([TRACEKIT, "record", "-q", "--json", "-o", out, "--", TRACEKIT, "workload", "dirty-log",
                               "-b", size, "-i", str(iterations)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"tracekit record failed: {proc.stderr.strip()[-2000:]}")
        summary = json.loads(proc.stdout)
        manifest = json.loads(Path(out, "capture.json").read_text())
    delivered = sum(summary["rows"].get(t, 0) for t in STREAM_TABLES)
    return {"mode": "tracekit", "guest_s": _guest_seconds(manifest["workload"]), "delivered": delivered,
            "lost": summary["lost"], "cpu_s": summary["recorder_cpu_s"], "rss_kb": summary["recording_rss_kb"],
            "peak_rss_kb": summary["peak_rss_kb"], "seconds": summary["seconds"]}


def run_capacity(size: str, consumer: str) -> dict:
    """Consumer capacity on a full ring: the workload runs with the walk family attached and nobody
    reading a 64 MiB ring; then the ring is emptied by ``consumer`` (``tracekit``: batch drain + numpy
    decode into Arrow; ``naive``: bcc's ``ring_buffer_consume`` with one Python callback per event)."""
    import_bcc()
    options = RecordOptions(ring_pages={"walk_events": 16384})
    plan, _, _ = plan_families(("walk",), Host(tracefs_root()), options)
    state: dict = {}

    def attach(pid: int) -> None:
        state["backend"] = BccBackend(plan, pid)
        state["backend"].start()
        for family, _ in plan:  # warm up the decoder (lazy imports, first conversions)
            for ring in family.rings():
                family.decode(ring.map_name, np.zeros(64, ring.dtype))
        for _, _, reader in state["backend"].readers:
            int(reader._data.sum())  # map the ring's pages now: a long-running consumer has them mapped

    with tempfile.TemporaryDirectory() as tmp:
        try:
            _run_gated(_workload_argv(size, 2, os.path.join(tmp, "layout.json")), attach, lambda: None)
            backend = state["backend"]
            lost = sum(c for _, _, c in backend.lost())
            t0 = time.perf_counter()
            if consumer == "tracekit":
                events = sum(t.num_rows for _, tables in backend.poll() for t in tables.values())
            else:
                count = [0]

                def on_event(_ctx, _data, _size) -> None:
                    count[0] += 1

                backend.bpf[b"walk_events"].open_ring_buffer(on_event)
                backend.bpf.ring_buffer_consume()
                events = count[0]
            seconds = time.perf_counter() - t0
        finally:
            if "backend" in state:
                state["backend"].close()
    return {"consumer": consumer, "events": events, "seconds": seconds, "lost": lost}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256M", help="guest memory the vCPU dirties (workload -b)")
    parser.add_argument("--iterations", type=int, default=4, help="dirty-log iterations (workload -i)")
    parser.add_argument("--long-factor", type=int, default=10, help="iterations factor of the long recording")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each mode, interleaved round-robin; the median run (by guest time) is shown")
    args = parser.parse_args(argv)
    _keep_freed_memory()  # as tracekit record does; the in-process consumers below share the setting
    runners = (run_untraced, run_count_only, run_naive, run_tracekit)
    runs: list[list[dict]] = [[] for _ in runners]
    for _ in range(args.repeat):  # interleaved, so a change in background load hits every mode alike
        for i, runner in enumerate(runners):
            runs[i].append(runner(args.size, args.iterations))
    results = [sorted(r, key=lambda x: x["guest_s"])[len(r) // 2] for r in runs]
    for r in runs:
        print(f"{r[0]['mode']:<11} guest s of each run: " + ", ".join(f"{x['guest_s']:.3f}" for x in r))
    base = results[0]["guest_s"]
    naive_capacity = None
    print(f"workload: dirty-log -b {args.size} -i {args.iterations}; {os.cpu_count()} CPUs")
    print(f"{'mode':<11} {'guest s':>8} {'slowdown':>9} {'delivered':>10} {'ev/s':>10} {'lost':>8} "
          f"{'rec CPU s':>9} {'ev/CPU-s':>10} {'vs naive':>8}")
    for r in results:
        rate = r["delivered"] / r["guest_s"] if r["guest_s"] else 0.0
        capacity = r["delivered"] / r["cpu_s"] if r["cpu_s"] > 0 else float("nan")
        if r["mode"] == "naive":
            naive_capacity = capacity
        ratio = capacity / naive_capacity if naive_capacity and r["mode"] in ("naive", "tracekit") else float("nan")
        print(f"{r['mode']:<11} {r['guest_s']:8.3f} {r['guest_s'] / base:8.2f}x {r['delivered']:10,d} {rate:10,.0f} "
              f"{r['lost']:8,d} {r['cpu_s']:9.2f} {capacity:10,.0f} {ratio:7.1f}x")
    count_only = results[1]["guest_s"]
    print(f"tracekit slowdown over count-only: {results[3]['guest_s'] / count_only:.3f}x; "
          f"delivered vs count-only hits: {results[3]['delivered']:,} / {results[1]['delivered']:,} "
          "(hits include ioctl entries, lock begins and KVM_RUN, which are paired or aggregated)")
    capacity = [run_capacity(args.size, c) for c in ("naive", "tracekit")]
    for c in capacity:
        print(f"consumer capacity, {c['consumer']:<8}: {c['events']:,} queued walk events emptied in "
              f"{c['seconds']:.3f} s = {c['events'] / c['seconds']:,.0f} events/s (lost while queued {c['lost']})")
    print(f"tracekit / naive consumer capacity: {capacity[1]['events'] / capacity[1]['seconds'] / (capacity[0]['events'] / capacity[0]['seconds']):.1f}x "
          "(decoding into Arrow included, Parquet writing not)")
    long = run_tracekit(args.size, args.iterations * args.long_factor)
    print(f"tracekit recording RSS: {results[3]['rss_kb'] / 1024:.0f} MiB for {results[3]['seconds']:.1f} s, "
          f"{long['rss_kb'] / 1024:.0f} MiB for {long['seconds']:.1f} s ({args.long_factor}x the iterations; "
          f"ratio {long['rss_kb'] / results[3]['rss_kb']:.2f}); process peak incl. BPF compile "
          f"{results[3]['peak_rss_kb'] / 1024:.0f} / {long['peak_rss_kb'] / 1024:.0f} MiB; long run lost {long['lost']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
