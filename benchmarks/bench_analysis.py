"""Benchmark of the analyses' scale targets (not a test: prints figures and ratios).

Targets (issue #6): walk reconstruction at least 20 M events/s; a 100 M-event capture analysed in under
10 s; memory that does not grow with families the analysis does not read. Each figure is printed
against a straightforward pandas groupby/apply implementation measured in the same run (on a
subset where the straightforward version would take minutes; rates are compared), with the peak
resident memory of the process that ran it (each measured case runs in its own child process).

1. ``rebuild``: :func:`tracekit.analysis.walkstream.stream_walks` (the streaming core ``analyze`` runs,
   here keeping whole per-walk columns) on in-memory tables of N recorder-shaped walks (4 events each:
   walk + 3 walk_element; per-CPU ids interleaved in time order, 0.1% concurrent pairs), served in
   batches through the capture interface (tests/analysis/walkref.py ``TableCapture``), vs a
   groupby/apply rebuild of the same rows.
2. ``analyze``: :func:`tracekit.analysis.analyze.analyze_capture` (every analysis, model cross-check
   included) on a synthetic capture of ``--events`` events written to a temporary directory, vs
   the straightforward version (whole families read with every column, walks rebuilt and
   cross-checked by groupby/apply) on a 1/200 capture; with the time of each stage and the fresh memory
   the analysis touched (its minor page faults), which on this VM decides how much the analysis depends
   on the rate at which fresh memory faults in.
3. ``memory``: the walk analysis of the same walks with and without a large unrelated family
   (5 rows per walk event): peak memory should not grow.
4. ``recording`` (issue #12): every analysis on a real recording made by ``tracekit record`` (``--recording
   PATH``, or ``--record``: ``tracekit record -- tracekit workload dirty-log -v 2 -b 256M -i 10`` is run
   first), and on ``--tiles`` back-to-back copies of it (every family, its segments, column types and
   values, each segment written as the recorder writes it; times, walk ids and phases shifted per copy),
   vs a raw scan of the columns the analysis reads (each decoded once, batch by batch, nothing computed)
   of the same capture in the same run: peak memory under 1 GB at every size, time within 2x of the raw
   scan.

Every run also prints the VM's first-touch rate of fresh memory (a fresh 2 GiB array, in a child) at its
start and end: the conditions its figures were measured under.

Usage: python benchmarks/bench_analysis.py [--events N] [--quick] [--recording PATH | --record] [--tiles 1,4]
       [--only-recording]   (--quick: 8 M events; --only-recording: section 4 alone)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from tracekit.memtune import import_numpy_without_huge_pages
except ImportError:  # a checkout from before the console script did it (its keep_freed_memory did)
    def import_numpy_without_huge_pages() -> bool:
        return False

import_numpy_without_huge_pages()  # as the tracekit console script does, before numpy's first import
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the synthetic captures of tests/synthetic.py


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


def cpu_seconds() -> float:
    """CPU time of this process so far, every thread, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
    """The walk columns and the element columns (walk_id, index, level, pte, cpu) of ``n`` synthetic walks,
    made a chunk at a time into preallocated arrays (peak memory about the arrays themselves)."""
    from tests.synthetic import walk_tables

    walk: dict[str, np.ndarray] = {}
    element: list[np.ndarray] = []
    for first in range(0, n, chunk):
        part = walk_tables(min(chunk, n - first), first_id=first)
        for name in ("walk_id", "ts_ns", "tid", "addr", "pferr"):
            values = part["walk"].column(name).to_numpy()
            walk.setdefault(name, np.empty(n, values.dtype))[first:first + len(values)] = values
        for i, name in enumerate(("walk_id", "index", "level", "pte", "cpu")):
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

    timed(analyze.walkcause, "fault_followers", "fault-path (and split) events")
    timed(walkstream.RowMap, "from_chunks", "walk id map")
    timed(walkstream._Rebuilder, "feed", "rebuild + cross-check elements")
    timed(walkgroups, "stream_walks", "stream_walks (walks read, id map, elements)")
    timed(walkgroups, "_group_counts", "group counts")
    timed(analyze.walkgroups, "walk_group_counts", "walk_group_counts (all of the above)")
    timed(analyze.walks, "depth_distribution", "depth tables")
    timed(analyze, "count_by", "path table")
    timed(analyze, "load", "other families read")
    timed(analyze.locks, "attribute_operations", "lock attribution")
    timed(analyze.locks, "contention_summary", "lock summary")
    try:
        from tracekit.analysis import spill
    except ImportError:  # a checkout from before the per-walk arrays were spilled
        return stages
    timed(spill, "trim", "spilled pages dropped")
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
    from tracekit.memtune import keep_freed_memory

    keep_freed_memory()  # what the tracekit commands do
    if case == "fault-rate":
        return fault_rate(int(arg))
    if case == "rebuild":
        from tests.analysis.walkref import TableCapture
        from tracekit.analysis.walkstream import WalkShapes, stream_walks

        n = int(arg)
        walk, element = in_memory_tables(n)
        cap = TableCapture({"walk": pa.table(walk), "walk_element": pa.table(
            dict(zip(("walk_id", "index", "level", "pte", "cpu"), element)))})
        start = time.perf_counter()
        shapes = stream_walks(cap, WalkShapes).shapes
        seconds = time.perf_counter() - start
        assert (shapes.path == 432).all()
        return {"seconds": seconds, "events": 4 * n, "peak_mb": peak_mb()}
    if case == "rebuild-baseline":
        from tests.synthetic import walk_tables

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
    if case == "raw-scan":
        start, cpu = time.perf_counter(), cpu_seconds()
        scanned = raw_scan(arg)
        return {"seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu, "peak_mb": peak_mb(),
                **scanned}
    if case == "analyze-recording":
        from tracekit.analysis import walkstream
        from tracekit.analysis.analyze import analyze_capture
        from tracekit.capture import open_capture

        stages = timed_stages()
        passes = []
        original = walkstream._Rebuilder.__init__

        def counted(self: object, *args: object, **kwargs: object) -> None:
            passes.append(1)
            original(self, *args, **kwargs)

        walkstream._Rebuilder.__init__ = counted
        start, cpu = time.perf_counter(), cpu_seconds()
        result = analyze_capture(open_capture(arg))
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        check = result.verdicts.get("crosscheck", {})
        from tracekit.analysis.analyze import analysis_json

        document = json.dumps(analysis_json(result), sort_keys=True, default=str).encode()
        return {"seconds": seconds, "cpu_seconds": cpu, "peak_mb": peak_mb(), "stages": dict(stages),
                "passes": len(passes), "digest": hashlib.sha256(document).hexdigest()[:16],
                "walk_path": result.info.get("walk_path"),
                "crosscheck": f"{check.get('matched')} of {check.get('compared')} match"
                if check.get("compared") is not None else check.get("verdict")}
    if case == "analyze-baseline":
        start = time.perf_counter()
        baseline_analyze(arg)
        return {"seconds": time.perf_counter() - start, "peak_mb": peak_mb()}
    raise SystemExit(f"unknown case {case}")


#: The columns of each family the analyses read (what the raw scan decodes).
READ_COLUMNS = {
    "walk": ["walk_id", "ts_ns", "tid", "addr", "pferr"],
    "walk_element": ["walk_id", "index", "level", "pte", "cpu"],
    "walk_error": ["walk_id"],
    "mmu": ["ts_ns", "tid", "event", "level"],
    "lock": ["ts_ns", "tid", "lock_addr", "flags", "wait_ns", "stack_id"],
    "stack": ["stack_id", "frames"],
    "ioctl": ["ts_ns", "tid", "duration_ns", "cmd_name", "ret", "slot", "flags", "memory_size"],
    "ioctl_summary": ["cmd_name", "count", "total_ns", "max_ns", "errors"],
}


def raw_scan(path: str) -> dict:
    """Every column the analyses read, decoded once batch by batch into numpy (dictionary columns as their
    codes), nothing computed: the floor of any analysis that reads them."""
    from tracekit.capture import open_capture

    cap = open_capture(path)
    rows = 0
    for family, columns in READ_COLUMNS.items():
        if family not in cap.families():
            continue
        names = [c for c in columns if c in cap.schema(family).names]
        for batch in cap.iter_batches(family, names):
            rows += batch.num_rows
            for column in batch.columns:
                if pa.types.is_dictionary(column.type):
                    column.indices.to_numpy(zero_copy_only=False)
                elif pa.types.is_primitive(column.type):
                    column.to_numpy(zero_copy_only=False)
    return {"rows": rows}


def capture_shape(path: Path) -> dict:
    """Rows and segments per family, and the bytes on disk, of a capture."""
    from tracekit.capture import open_capture

    cap = open_capture(path)
    return {"families": {f: (cap.rows(f), len(cap.segments(f))) for f in cap.families()},
            "bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file())}


def tile_recording(source: Path, target: Path, copies: int) -> None:
    """``copies`` back-to-back copies of a recorded capture: each copy's segments are the recording's with
    ``ts_ns`` shifted by the recording's span, walk ids (``cpu << 48 | sequence``) by its largest sequence and
    the workload phases' iterations by their count, so the copy reads like the recording going on."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tracekit.capture import open_capture
    from tracekit.capture.format import segment_name
    from tracekit.capture.writer import write_segment_file  # the recorder's own encodings, page for page

    cap = open_capture(source)
    low = pa.scalar((1 << 48) - 1, pa.uint64())
    stamps = [cap.table(f, ["ts_ns"]).column(0) for f in cap.families() if cap.rows(f)]
    first = min(pc.min(s).as_py() for s in stamps)
    span = max(pc.max(s).as_py() for s in stamps) - first + 1
    stride = pc.max(pc.bit_wise_and(cap.table("walk", ["walk_id"]).column(0), low)).as_py() + 1 \
        if cap.rows("walk") else 0
    target.mkdir()
    for family in cap.families():
        (target / family).mkdir()
        schema_file = source / family / "_schema.parquet"
        if schema_file.exists():
            shutil.copy(schema_file, target / family / schema_file.name)
        once = family in ("stack", "ioctl_summary")  # symbol tables and whole-run totals
        index = 0
        for copy in range(1 if once else copies):
            for segment in cap.segments(family):
                table = pq.read_table(segment)
                if copy:
                    table = table.set_column(0, table.schema.field(0), pc.add(table.column("ts_ns"), copy * span))
                    if "walk_id" in table.column_names:
                        ids = table.column("walk_id")
                        shifted = pc.add(ids, pa.scalar(copy * stride, pa.uint64()))
                        i = table.column_names.index("walk_id")
                        table = table.set_column(i, table.schema.field(i), pc.if_else(pc.equal(ids, 0), ids, shifted))
                index += 1
                write_segment_file(table, target / family / segment_name(index))
    manifest = json.loads((source / "capture.json").read_text())
    workload = manifest.get("workload") or {}
    phases = workload.get("phases") or []
    iterations = max((p.get("iteration") or 0 for p in phases), default=0)
    workload["phases"] = [{**p, "start_ns": p["start_ns"] + c * span, "end_ns": p["end_ns"] + c * span,
                           "iteration": (p.get("iteration") or 0) + c * iterations if p.get("iteration") else
                           p.get("iteration")}
                          for c in range(copies) for p in phases if c == 0 or p.get("iteration")]
    manifest["families"] = {f: {"rows": 0, "segments": 0} for f in manifest.get("families", {})}
    (target / "capture.json").write_text(json.dumps(manifest))


def record_recording(path: Path) -> None:
    """A real recording of the built-in workload by ``tracekit record`` (root, KVM and bcc needed)."""
    tracekit = [sys.executable, "-m", "tracekit"]
    command = [*tracekit, "record", "-o", str(path), "--", *tracekit, "workload", "dirty-log", "-v", "2",
               "-b", "256M", "-i", "10"]
    print("recording: " + " ".join(command[len(tracekit):]))
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def recording_section(recording: Path, tiles: list[int], tmp: Path, before: Path | None = None) -> None:
    """Section 4 of the module docstring; with ``before`` (another checkout with its own ``.venv``), its
    analysis too, alternated with this one's on each capture, and the two analyses' outputs compared."""
    for copies in tiles:
        path = recording
        if copies > 1:
            path = tmp / f"tiled-{copies}.tkcap"
            tile_recording(recording, path, copies)
        shape = capture_shape(path)
        rows = sum(r for r, _ in shape["families"].values())
        segments = sum(n for _, n in shape["families"].values())
        load = os.getloadavg()[0]
        raw = run_child("raw-scan", str(path))
        fast = run_child("analyze-recording", str(path))
        old = run_child("analyze-recording", str(path), before) if before is not None else None
        ratio = fast["seconds"] / raw["seconds"]
        print(f"recording x{copies}: {rows / 1e6:.1f} M rows in {segments} segments, "
              f"{shape['bytes'] / 2**20:,.0f} MB ("
              + ", ".join(f"{f} {r / 1e6:.2f} M" for f, (r, _) in sorted(shape["families"].items()) if r > 10**5)
              + ")")
        print(f"  analyze: {fast['seconds']:.2f} s, peak {fast['peak_mb']:,.0f} MB (walks {fast['walk_path']}, "
              f"{fast['passes']} pass(es) over walk_element, cross-check {fast['crosscheck']}) "
              f"[target: peak < 1 GB: {verdict(fast['peak_mb'] < 1024)}]")
        print(f"  raw scan of the columns it reads: {raw['seconds']:.2f} s, peak {raw['peak_mb']:,.0f} MB; "
              f"analyze / raw scan {ratio:.2f}x [target <= 2x: {verdict(ratio <= 2.0)}]")
        print(f"  CPU time (every thread; what a loaded host cannot stretch): analyze {fast['cpu_seconds']:.2f} s, "
              f"raw scan {raw['cpu_seconds']:.2f} s, ratio {fast['cpu_seconds'] / raw['cpu_seconds']:.2f}x")
        print("  stages: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in fast["stages"].items()))
        if old is not None:
            print(f"  before ({before}): {old['seconds']:.2f} s ({old['cpu_seconds']:.2f} s CPU), peak "
                  f"{old['peak_mb']:,.0f} MB, {old['seconds'] / raw['seconds']:.2f}x the raw scan "
                  f"({old['cpu_seconds'] / raw['cpu_seconds']:.2f}x in CPU time); outputs "
                  + ("equal" if old["digest"] == fast["digest"] else f"DIFFER ({old['digest']} / {fast['digest']})"))
        print(f"  load average {load:.2f} before, {os.getloadavg()[0]:.2f} after these runs")
        if path != recording:
            shutil.rmtree(path, ignore_errors=True)


def run_child(case: str, arg: str, tree: Path | None = None) -> dict:
    """Run ``case`` in a child process: this checkout's, or ``tree``'s (its ``.venv`` and its copy of this
    script)."""
    command = [sys.executable, __file__] if tree is None else [str(tree / ".venv/bin/python"),
                                                                str(tree / "benchmarks/bench_analysis.py")]
    out = subprocess.run([*command, "--child", case, arg], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def add_unrelated_family(path: Path, rows: int) -> None:
    """A large ``func_call`` family (the capture's own schema) that no analysis reads."""
    import pyarrow.parquet as pq

    from tracekit.capture.columns import SCHEMAS

    schema = SCHEMAS["func_call"]
    directory = path / "func_call"
    directory.mkdir()
    pq.write_table(schema.empty_table(), directory / "_schema.parquet")
    chunk = 5_000_000
    for i, first in enumerate(range(0, rows, chunk), start=1):
        n = min(chunk, rows - first)
        ids = np.arange(first, first + n)
        name = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array(["stage2_map"]))
        table = pa.table({"ts_ns": ids.astype(np.int64), "cpu": np.zeros(n, np.int32), "pid": np.zeros(n, np.int32),
                          "tid": np.zeros(n, np.int32), "name": name, "duration_ns": (ids * 7919 % 100_000),
                          "ret": np.zeros(n, np.int64), "args": pa.nulls(n, pa.string())}, schema=schema)
        pq.write_table(table, directory / f"part-{i:06d}.parquet", compression="zstd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000_000, help="events in the large capture")
    parser.add_argument("--quick", action="store_true", help="8 M events instead of --events")
    parser.add_argument("--recording", type=Path, help="a capture recorded by tracekit record (section 4)")
    parser.add_argument("--record", action="store_true", help="record one first (root, KVM, bcc)")
    parser.add_argument("--tiles", default="1,4", help="copies of the recording analysed (comma-separated)")
    parser.add_argument("--only-recording", action="store_true", help="run section 4 alone")
    parser.add_argument("--before", type=Path, help="another checkout (with its .venv) analysed alongside (section 4)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    if args.only_recording:
        run_recording_section(args)
        return

    from tests.synthetic import write_synthetic_capture

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
    run_recording_section(args)
    print_fault_rate("at end")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


def run_recording_section(args: argparse.Namespace) -> None:
    """Section 4 on ``--recording``, or on a recording made now with ``--record``; skipped without either."""
    if args.recording is None and not args.record:
        print("recording: skipped (give --recording PATH or --record)")
        return
    tmp = Path(tempfile.mkdtemp(prefix="tk-bench-rec-"))
    try:
        recording = args.recording
        if recording is None:
            recording = tmp / "recorded.tkcap"
            record_recording(recording)
        print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        recording_section(recording, [int(t) for t in args.tiles.split(",")], tmp, args.before)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
