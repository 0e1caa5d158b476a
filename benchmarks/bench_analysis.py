"""Benchmark of the analyses' scale targets (not a test: prints figures and ratios).

Targets (issue #6): walk reconstruction at least 20 M events/s; a 100 M-event capture analysed in under
10 s; memory that does not grow with families the analysis does not read. Each figure is printed
against a straightforward pandas groupby/apply implementation measured in the same run (on a
subset where the straightforward version would take minutes; rates are compared), with the peak
resident memory of the process that ran it (each measured case runs in its own child process).

1. ``rebuild``: :func:`tracekit.analysis.walkstream.rebuild_streamed` (the streamed rebuild ``analyze``
   runs, here keeping whole per-walk columns) on in-memory tables of N recorder-shaped walks (4 events each: walk + 3 walk_element; per-CPU
   ids interleaved in time order, 0.1% concurrent pairs), fed in 1 Mi-row batches, vs a
   groupby/apply rebuild of the same rows.
2. ``analyze``: :func:`tracekit.analysis.analyze.analyze_capture` (every analysis, model cross-check
   included) on a synthetic capture of ``--events`` events written to a temporary directory, vs
   the straightforward version (whole families read with every column, walks rebuilt and
   cross-checked by groupby/apply) on a 1/200 capture; with the time of each stage and the fresh memory
   the analysis touched (its minor page faults), which on this VM decides how much the analysis depends
   on the rate at which fresh memory faults in.
3. ``memory``: the walk analysis of the same walks with and without a large unrelated family
   (5 rows per walk event): peak memory should not grow.

Every run also prints the VM's first-touch rate of fresh memory (a fresh 2 GiB array, in a child) at its
start and end: the conditions its figures were measured under.

Usage: python benchmarks/bench_analysis.py [--events N] [--quick]   (--quick: 8 M events)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa


def peak_mb() -> float:
    """This process's peak resident memory (MB). VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    execve, so a child would report its parent's peak (the capture writer's) when that is higher."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


#: The slowest first-touch rate of fresh memory measured on the development VM (GB/s).
SLOW_FAULT_GBPS = 0.32


def verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


# -- straightforward baselines -------------------------------------------------------------------


def baseline_rebuild(walk: pd.DataFrame, element: pd.DataFrame) -> pd.DataFrame:
    """Per walk: depth, root level, leaf level, path, by sort + groupby/apply."""
    element = element.sort_values(["walk_id", "index"])

    def one(group: pd.DataFrame) -> pd.Series:
        levels = group["level"].tolist()
        last = int(group["pte"].iloc[-1])
        leaf = levels[-1] if last & 1 and (levels[-1] == 1 or (last & 0x80 and levels[-1] in (2, 3))) else -1
        return pd.Series({"depth": len(levels), "root_level": levels[0], "leaf_level": leaf,
                          "level_path": int("".join(map(str, levels)))})

    per = element.groupby("walk_id").apply(one)
    return walk.merge(per, left_on="walk_id", right_index=True, how="left")


def baseline_analyze(path: str) -> None:
    """Whole families with every column, walks rebuilt and checked against the model by groupby/apply."""
    from tracekit.analysis.crosscheck import model_from_layout
    from tracekit.capture import open_capture

    cap = open_capture(path)
    walk = cap.dataframe("walk")
    element = cap.dataframe("walk_element")
    for family in cap.families():
        if family not in ("walk", "walk_element"):
            cap.dataframe(family)
    walks = baseline_rebuild(walk, element)
    model_walk = model_from_layout(cap.manifest["workload"])
    cache: dict[int, list] = {}

    def matches(group: pd.DataFrame, addr: int) -> bool:
        page = addr & ~0xFFF
        if page not in cache:
            cache[page] = [(s.level, s.pte & ~0x60) for s in model_walk(page).levels]
        return [(int(lv), int(p) & ~0x60) for lv, p in zip(group["level"], group["pte"])] == cache[page]

    addr_of = dict(zip(walk["walk_id"], walk["addr"]))
    element.groupby("walk_id").apply(lambda g: matches(g, int(addr_of[g.name])))
    walks.groupby(["tid", "depth", "leaf_level"]).size()


# -- child-process cases -------------------------------------------------------------------------


def in_memory_tables(n: int, chunk: int = 2_000_000) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """The walk columns and the element columns (walk_id, index, level, pte) of ``n`` synthetic walks,
    made a chunk at a time into preallocated arrays (peak memory about the arrays themselves)."""
    from tracekit.analysis.synthetic import walk_tables

    walk: dict[str, np.ndarray] = {}
    element: list[np.ndarray] = []
    for first in range(0, n, chunk):
        part = walk_tables(min(chunk, n - first), first_id=first)
        for name in ("walk_id", "ts_ns", "tid", "addr", "pferr"):
            values = part["walk"].column(name).to_numpy()
            walk.setdefault(name, np.empty(n, values.dtype))[first:first + len(values)] = values
        for i, name in enumerate(("walk_id", "index", "level", "pte")):
            values = part["walk_element"].column(name).to_numpy()
            if len(element) <= i:
                element.append(np.empty(3 * n, values.dtype))
            element[i][3 * first:3 * first + len(values)] = values
    return walk, element


def timed_stages() -> dict[str, float]:
    """Wrap the analysis stages so their wall time adds up in the returned dict (this process only)."""
    from tracekit.analysis import analyze, walkgroups, walkstream

    stages: dict[str, float] = {}

    def timed(owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                stages[label] = stages.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, name, wrapper)

    timed(walkgroups, "_read_walks", "read walks")
    timed(walkgroups.RowMap, "from_chunks", "walk id map")
    timed(walkstream._Rebuilder, "feed", "rebuild + cross-check elements")
    timed(walkgroups, "_group_counts", "group counts")
    timed(analyze.walkgroups, "walk_group_counts", "walk_group_counts (all of the above)")
    timed(analyze.walks, "depth_distribution", "depth tables")
    timed(analyze, "count_by", "path table")
    timed(analyze.locks, "attribute_operations", "lock attribution")
    timed(analyze.locks, "contention_summary", "lock summary")
    return stages



def fault_rate(size: int) -> dict:
    """How fast this VM hands out fresh memory: ``size`` bytes of float64 ones written into freshly
    mapped pages, then into the same pages again (the analysis's speed depends on the first)."""
    count = size // 8
    start = time.perf_counter()
    fresh = np.ones(count)
    first = time.perf_counter() - start
    start = time.perf_counter()
    fresh.fill(2.0)
    again = time.perf_counter() - start
    del fresh
    return {"bytes": size, "fresh_gbps": size / first / 1e9, "reused_gbps": size / again / 1e9}


def print_fault_rate(when: str) -> None:
    rate = run_child("fault-rate", str(2 << 30))
    print(f"fresh memory {when}: {rate['fresh_gbps']:.2f} GB/s first touch, {rate['reused_gbps']:.1f} GB/s "
          f"rewritten (a fresh 2 GiB array; the analysis's times depend on the first)")


def child(case: str, arg: str) -> dict:
    from tracekit.analysis.common import tune_memory

    tune_memory()  # what the tracekit commands do
    if case == "fault-rate":
        return fault_rate(int(arg))
    if case == "rebuild":
        from tracekit.analysis.walkstream import BATCH_ROWS, rebuild_streamed

        n = int(arg)
        walk, element = in_memory_tables(n)
        batches = ([c[i:i + BATCH_ROWS] for c in element] for i in range(0, len(element[0]), BATCH_ROWS))
        start = time.perf_counter()
        walks, _ = rebuild_streamed(walk, batches)
        seconds = time.perf_counter() - start
        assert (walks["level_path"] == 432).all()
        return {"seconds": seconds, "events": 4 * n, "peak_mb": peak_mb()}
    if case == "rebuild-baseline":
        from tracekit.analysis.synthetic import walk_tables

        n = int(arg)
        tables = walk_tables(n)
        walk, element = tables["walk"].to_pandas(), tables["walk_element"].to_pandas()
        start = time.perf_counter()
        walks = baseline_rebuild(walk, element)
        seconds = time.perf_counter() - start
        assert (walks["level_path"] == 432).all()
        return {"seconds": seconds, "events": 4 * n, "peak_mb": peak_mb()}
    if case == "analyze":
        from tracekit.analysis.analyze import analyze_capture
        from tracekit.capture import open_capture

        stages = timed_stages()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        result = analyze_capture(open_capture(arg))
        seconds = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        assert result.verdicts["crosscheck"]["match_rate"] == 1.0
        assert result.info["walk_path"] == "streamed"
        return {"seconds": seconds, "peak_mb": peak_mb(), "stages": dict(stages),
                "touched_mb": faults * resource.getpagesize() / 1e6}
    if case == "analyze-baseline":
        start = time.perf_counter()
        baseline_analyze(arg)
        return {"seconds": time.perf_counter() - start, "peak_mb": peak_mb()}
    raise SystemExit(f"unknown case {case}")


def run_child(case: str, arg: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", case, arg], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def add_unrelated_family(path: Path, rows: int) -> None:
    """A large ``func_call`` family (int columns) that no analysis reads."""
    import pyarrow.parquet as pq

    from tracekit.capture import COMMON_FIELDS

    schema = pa.schema([*COMMON_FIELDS, pa.field("gfn", pa.uint64()), pa.field("spte", pa.uint64()),
                        pa.field("level", pa.int32())])
    directory = path / "func_call"
    directory.mkdir()
    pq.write_table(schema.empty_table(), directory / "_schema.parquet")
    chunk = 5_000_000
    for i, first in enumerate(range(0, rows, chunk), start=1):
        n = min(chunk, rows - first)
        ids = np.arange(first, first + n)
        table = pa.table({"ts_ns": ids.astype(np.int64), "cpu": np.zeros(n, np.int32), "pid": np.zeros(n, np.int32),
                          "tid": np.zeros(n, np.int32), "gfn": (ids * 7919).astype(np.uint64),
                          "spte": (ids * 104729).astype(np.uint64), "level": np.ones(n, np.int32)}, schema=schema)
        pq.write_table(table, directory / f"part-{i:06d}.parquet", compression="zstd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000_000, help="events in the large capture")
    parser.add_argument("--quick", action="store_true", help="8 M events instead of --events")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return

    from tracekit.analysis.synthetic import write_synthetic_capture

    events = 8_000_000 if args.quick else args.events
    walks = events // 4
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
          "(other work on the host slows every figure below)")
    print_fault_rate("at start")
    # 1. reconstruction
    fast = run_child("rebuild", str(walks))
    base = run_child("rebuild-baseline", str(min(walks, 20_000)))
    fast_rate, base_rate = fast["events"] / fast["seconds"], base["events"] / base["seconds"]
    print(f"walk reconstruction: {fast['events'] / 1e6:.0f} M events in {fast['seconds']:.2f} s = "
          f"{fast_rate / 1e6:.1f} M events/s, peak {fast['peak_mb']:,.0f} MB "
          f"[target >= 20 M events/s: {verdict(fast_rate >= 20e6)}]")
    print(f"  groupby/apply baseline: {base['events'] / 1e6:.1f} M events in {base['seconds']:.2f} s = "
          f"{base_rate / 1e6:.3f} M events/s, peak {base['peak_mb']:,.0f} MB; speed-up {fast_rate / base_rate:,.0f}x")

    tmp = Path(tempfile.mkdtemp(prefix="tk-bench-"))
    try:
        big, small = tmp / "big.tkcap", tmp / "small.tkcap"
        start = time.perf_counter()
        written = write_synthetic_capture(big, walks, extra_rows=max(events // 100, 10_000))
        print(f"(wrote a {written / 1e6:.0f} M-event synthetic capture in {time.perf_counter() - start:.0f} s, "
              f"{sum(f.stat().st_size for f in big.rglob('*') if f.is_file()) / 2**20:,.0f} MB)")
        write_synthetic_capture(small, walks // 200, extra_rows=max(events // 20000, 1000))
        # 2. whole analysis
        fast = run_child("analyze", str(big))
        base = run_child("analyze-baseline", str(small))
        fast_rate, base_rate = written / fast["seconds"], (written / 200) / base["seconds"]
        target = 10.0 * written / 100e6  # 10 s for 100 M events, pro rata for other sizes
        print(f"analyze (every analysis, cross-check included): {written / 1e6:.0f} M events in "
              f"{fast['seconds']:.2f} s, peak {fast['peak_mb']:,.0f} MB "
              f"[target < 10 s for 100 M{'' if written >= 100e6 else f', {target:.1f} s pro rata'}: "
              f"{verdict(fast['seconds'] < target)}]")
        print("  stages: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in fast["stages"].items()))
        print(f"  fresh memory touched (minor page faults): {fast['touched_mb']:,.0f} MB, "
              f"{fast['touched_mb'] / 1e3 / SLOW_FAULT_GBPS:.1f} s of faulting at the slowest rate seen here "
              f"({SLOW_FAULT_GBPS} GB/s)")
        print(f"  straightforward pandas on {written / 200 / 1e6:.2f} M events: {base['seconds']:.2f} s, "
              f"peak {base['peak_mb']:,.0f} MB; rate ratio {fast_rate / base_rate:,.0f}x")
        # 3. memory does not grow with an unrelated family
        alone = run_child("analyze", str(small))
        add_unrelated_family(small, walks // 200 * 4 * 5)
        mixed = run_child("analyze", str(small))
        print(f"memory: analyze without / with an unrelated {walks // 200 * 4 * 5 / 1e6:.1f} M-row family: "
              f"peak {alone['peak_mb']:,.0f} MB / {mixed['peak_mb']:,.0f} MB (ratio {mixed['peak_mb'] / alone['peak_mb']:.2f}), "
              f"time {alone['seconds']:.2f} s / {mixed['seconds']:.2f} s "
              f"[target: no growth (ratio <= 1.05): {verdict(mixed['peak_mb'] <= 1.05 * alone['peak_mb'])}]")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_fault_rate("at end")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
