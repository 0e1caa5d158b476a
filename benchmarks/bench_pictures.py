"""Benchmark of ``tracekit export --perfetto`` and ``tracekit report`` (not a test: prints figures and ratios).

Target (issue #14): both read the capture a batch at a time, so their memory does not grow with the
capture. The capture is synthetic and shaped like a recorder's two-vCPU dirty-log run: guest walks and
their elements (tests/synthetic.py), two ``mmu`` events per walk, lock waits, dirty-log ioctls, the
workload's phases, in many segments. Each command runs in a child process (peak memory = its VmHWM) at
two sizes, and is compared with the baseline measured in the same run on the same capture: a raw
Parquet scan (pyarrow) of every column of every family the two commands read.

Usage: python benchmarks/bench_pictures.py [--walks N] [--growth 4] [--segment-rows R]
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the synthetic walks of tests/synthetic.py

from tests.synthetic import PID, guest_tables, walk_tables  # noqa: E402
from tracekit.capture import CaptureWriter, open_capture  # noqa: E402
from tracekit.capture.columns import SCHEMAS  # noqa: E402

FAMILIES = ("walk", "walk_element", "mmu", "lock", "ioctl")
PERIOD_NS = 2000
T0_NS = 10**9


def peak_mb() -> float:
    """This process's peak resident memory (MB): VmHWM (ru_maxrss carries the parent's over execve)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _table(family: str, n: int, **columns) -> pa.Table:
    """``n`` rows of ``family``'s capture schema: ``columns`` given, the others null."""
    schema = SCHEMAS[family]
    arrays = []
    for field in schema:
        kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        array = pa.array(columns[field.name], kind) if field.name in columns else pa.nulls(n, kind)
        arrays.append(array.dictionary_encode() if pa.types.is_dictionary(field.type) else array)
    return pa.Table.from_arrays(arrays, schema=schema)


def _extras(walk: pa.Table, rng: np.random.Generator) -> dict[str, pa.Table]:
    """The other families of one chunk of walks: an SPTE request and install per walk (as on a shadow-paging
    host), a lock wait per 50 walks, a dirty-log ioctl per 2,000."""
    n = walk.num_rows
    ts = walk.column("ts_ns").to_numpy()
    tid = walk.column("tid").to_numpy()
    events = np.tile(np.array(["kvm_mmu_spte_requested", "kvm_mmu_set_spte"], object), n)
    gfn = (walk.column("addr").to_numpy() >> np.uint64(12)).astype(np.uint64)
    mmu = _table("mmu", 2 * n, ts_ns=np.repeat(ts, 2) + np.tile([5, 9], n), cpu=np.zeros(2 * n, np.int32),
                 pid=np.full(2 * n, PID, np.int32), tid=np.repeat(tid, 2), event=events,
                 gfn=np.repeat(gfn, 2), level=np.full(2 * n, 1, np.int32))
    waits = np.sort(rng.choice(n, n // 50, replace=False))
    lock = _table("lock", len(waits), ts_ns=ts[waits] + 11, cpu=np.zeros(len(waits), np.int32),
                  pid=np.full(len(waits), PID, np.int32), tid=tid[waits],
                  lock_addr=np.full(len(waits), 0xFFFF_8880_0000_1000, np.uint64),
                  flags=np.full(len(waits), 3, np.uint32), wait_ns=rng.integers(100, 50_000, len(waits)),
                  ret=np.zeros(len(waits), np.int32), stack_id=np.full(len(waits), -1, np.int32))
    calls = np.arange(0, n, 2000)
    names = np.where(np.arange(len(calls)) % 2 == 0, "KVM_GET_DIRTY_LOG", "KVM_CLEAR_DIRTY_LOG").astype(object)
    ioctl = _table("ioctl", len(calls), ts_ns=ts[calls] + 13, cpu=np.zeros(len(calls), np.int32),
                   pid=np.full(len(calls), PID, np.int32), tid=np.full(len(calls), PID, np.int32),
                   duration_ns=rng.integers(5_000, 500_000, len(calls)), fd=np.full(len(calls), 5, np.int32),
                   cmd_name=names, ret=np.zeros(len(calls), np.int64), slot=np.ones(len(calls), np.uint16))
    return {"mmu": mmu, "lock": lock, "ioctl": ioctl}


def write_capture(path: Path, walks: int, segment_rows: int) -> int:
    """The benchmark's capture (see the module docstring); returns its rows."""
    _, paging = guest_tables()
    span = walks * PERIOD_NS
    names = ["setup", "populate", "enable_dirty_logging"] + [n for i in range(1, 4) for n in
                                                               ("dirty_memory", "get_dirty_log", "clear_dirty_log")]
    edges = np.linspace(T0_NS, T0_NS + span, len(names) + 1).astype(np.int64).tolist()
    iterations = [None, None, None] + [i for i in range(1, 4) for _ in range(3)]
    phases = [{"name": n, "iteration": i, "start_ns": s, "end_ns": e}
              for n, i, s, e in zip(names, iterations, edges, edges[1:])]
    manifest = {"source": {"kind": "synthetic", "description": f"{walks} synthetic guest walks, bench_pictures"},
                "target": {"pids": [PID], "comm": "bench", "threads": [
                    {"tid": 1000 + v, "comm": f"tk-vcpu-{v}", "vcpu": v} for v in range(2)]},
                "workload": {"workload": "dirty-log", "pid": PID, "arch": "x86_64", "guest_paging": paging,
                             "vcpus": [], "phases": phases}}
    rng = np.random.default_rng(1)
    rows = 0
    chunk = max(segment_rows // 3, 1)
    with CaptureWriter(path, manifest=manifest, segment_seconds=3600, segment_rows=segment_rows) as writer:
        for family in FAMILIES:
            writer.declare(family, SCHEMAS[family])
        for first in range(0, walks, chunk):
            part = walk_tables(min(chunk, walks - first), first_id=first, period_ns=PERIOD_NS, t0_ns=T0_NS)
            part.update(_extras(part["walk"], rng))
            for family, table in part.items():
                writer.append(family, table)
                rows += table.num_rows
    return rows


def child(case: str, capture: Path, out: Path) -> dict:
    """Run one case in this process and return its figures."""
    start = time.perf_counter()
    if case == "scan":
        rows = 0
        for family in FAMILIES:
            for segment in sorted((capture / family).glob("*.parquet")):
                for batch in pq.ParquetFile(segment).iter_batches(batch_size=1 << 16):
                    rows += batch.num_rows
        detail = f"{rows:,} rows"
    elif case == "export":
        from tracekit.analysis.perfetto import write_perfetto

        written = write_perfetto(open_capture(capture), out)
        detail = f"{written.events:,} events, {out.stat().st_size / 2**20:,.0f} MB"
    else:
        from tracekit.analysis.analyze import analyze_capture
        from tracekit.analysis.report import write_report

        cap = open_capture(capture)
        write_report(analyze_capture(cap), cap, out)
        detail = f"{out.stat().st_size / 2**20:,.1f} MB page"
    return {"seconds": time.perf_counter() - start, "peak_mb": peak_mb(), "detail": detail}


def run_child(case: str, capture: Path, out: Path) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", case, str(capture), str(out)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--walks", type=int, default=250_000, help="guest walks of the smaller capture")
    parser.add_argument("--growth", type=int, default=4, help="the larger capture has this many times the walks")
    parser.add_argument("--segment-rows", type=int, default=60_000, help="rows per segment of each family")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "CAPTURE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case, capture, out = args.child
        print(json.dumps(child(case, Path(capture), Path(out))))
        return
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    results = {}
    with tempfile.TemporaryDirectory(prefix="tk-bench-pictures-") as tmp:
        tmp = Path(tmp)
        for walks in (args.walks, args.walks * args.growth):
            capture = tmp / f"c{walks}.tkcap"
            rows = write_capture(capture, walks, args.segment_rows)
            cap = open_capture(capture)
            segments = ", ".join(f"{family} {len(cap.segments(family))}" for family in FAMILIES)
            print(f"\ncapture: {walks:,} walks, {rows:,} rows in {len(FAMILIES)} families (segments: {segments}; "
                  f"{sum(f.stat().st_size for f in capture.rglob('*.parquet')) / 2**20:,.0f} MB)")
            print(f"{'case':<24} {'seconds':>8} {'x scan':>7} {'peak MB':>8} {'x scan':>7}  output")
            for case, label, suffix in (("scan", "raw Parquet scan", ".none"), ("export", "export --perfetto", ".pftrace"),
                                        ("report", "report (analyze + HTML)", ".html")):
                figures = run_child(case, capture, tmp / f"out{suffix}")
                results[(walks, case)] = figures
                base = results[(walks, "scan")]
                print(f"{label:<24} {figures['seconds']:>8.2f} {figures['seconds'] / base['seconds']:>6.1f}x "
                      f"{figures['peak_mb']:>8.0f} {figures['peak_mb'] / base['peak_mb']:>6.2f}x  {figures['detail']}")
            print(f"load average: {os.getloadavg()[0]:.2f}")
    small, large = args.walks, args.walks * args.growth
    print(f"\npeak memory with {args.growth}x the walks (same segment size):")
    for case in ("scan", "export", "report"):
        a, b = results[(small, case)], results[(large, case)]
        print(f"  {case:<7} {a['peak_mb']:,.0f} -> {b['peak_mb']:,.0f} MB ({b['peak_mb'] / a['peak_mb']:.2f}x); "
              f"time {b['seconds'] / a['seconds']:.1f}x")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
