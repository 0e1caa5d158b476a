"""Benchmark: ``tracekit fleet summary`` over 1,000 generated captures, against a plain scan of the same files.

A dataset of ``--captures`` captures is generated from the samples' shapes (:data:`SHAPES`: between them
every family a capture can hold): each shape's families are tiled (timestamps shifted, walk ids kept
distinct) to about ``--rows`` rows per capture (at most ``--max-seconds`` of trace time) and written by
the capture writer segmented as the recorder does, a segment per family per ``--segment-seconds`` of
trace time or ``--segment-rows``; the captures of one shape share its segment files through hard links
(a new manifest each: own capture id, host and start), so the dataset costs the disk of one copy per shape;
each shape is analysed once and every capture gets its stored verdicts (``tracekit fleet verdicts``). Then, each in a
child process of its own (peak memory = the child's maximum RSS):

- ``count(*)``: DuckDB's ``SELECT count(*)`` over every segment (the plain scan the target is against;
  DuckDB answers it from the footers); ``columns``: a scan that decodes every column the summary reads
  (sums over them);
- ``summary``: ``fleet_summary`` on DuckDB of all the captures as the command runs it (opening and
  checking them included, beside the query), of a quarter and of half of them (``summary_quarter``,
  ``summary_half``: peak memory against the number of captures), and of all with DuckDB's memory limit
  at 256 MB instead of 1 GB (``summary_256mb``);
- ``spark`` (``--spark``): the same summary on Spark local mode, for the record (no target).

Prints rows, rows/s, seconds, peak RSS and the ratios; asserts nothing. The dataset is written under
``--dir`` (default: a temporary directory on the same disk, removed at the end unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
#: Sample captures whose shapes are tiled (together: every family).
SHAPES = ("x86-dirty-log-2m.tkcap", "x86-dirty-log-4k.tkcap", "lab-arm64-contention.tkcap",
          "lab-arm64-skip3-eager-enable.tkcap", "lab-x86-tdp-eager.tkcap", "lab-arm64-eager-clear.tkcap",
          "matrix/arm64-mmu-lock/debian-bookworm,eager_split_chunk=0/contention@vcpus=2/1.tkcap")
_WALK_ID_FAMILIES = {"walk", "walk_element", "walk_error", "stage2_walk", "stage2_visit"}
_KERNELS = ("6.1.0-50-cloud-{arch}", "6.12.117+deb13-cloud-{arch}", "7.3.4+deb13-cloud-{arch}")


def _tiled(table: pa.Table, family: str, tiles: int, span_ns: int, walk_span: int) -> list[pa.Table]:
    """``table`` repeated ``tiles`` times, each copy later by ``span_ns`` and its walk ids by ``walk_span``."""
    import pyarrow.compute as pc

    out = []
    for tile in range(tiles):
        copy = table.set_column(table.schema.get_field_index("ts_ns"), "ts_ns",
                                pc.add(table["ts_ns"], pa.scalar(tile * span_ns, pa.int64())))
        if family in _WALK_ID_FAMILIES and "walk_id" in copy.column_names:
            ids = copy["walk_id"]
            copy = copy.set_column(copy.schema.get_field_index("walk_id"), "walk_id",
                                   pc.add(ids, pa.scalar(tile * walk_span, ids.type)))
        out.append(copy)
    return out


def make_template(sample: Path, out: Path, rows: int, segment_rows: int, segment_seconds: float = 1.0,
                  max_seconds: float = 120.0) -> int:
    """A capture shaped like ``sample`` with about ``rows`` rows, tiled over at most ``max_seconds`` of
    trace time, its segments closed as the recorder closes them: every ``segment_seconds`` of trace time
    (each family's rows of a window in a segment of their own) or at ``segment_rows``; returns its rows."""
    import numpy as np

    from tracekit.capture import CaptureWriter, open_capture

    cap = open_capture(sample)
    tables = {f: cap.table(f) for f in cap.families()}
    have = sum(t.num_rows for t in tables.values()) or 1
    stamps = [t["ts_ns"] for t in tables.values() if t.num_rows]
    first = int(min(s.to_numpy().min() for s in stamps))
    span = max(int(max(s.to_numpy().max() for s in stamps)) - first, 1) + 1
    tiles = max(1, min(math.ceil(rows / have), int(max_seconds * 1e9 // span)))
    walk_span = 1 + max([int(t["walk_id"].to_numpy().max()) for f, t in tables.items()
                         if f in _WALK_ID_FAMILIES and t.num_rows] or [0])
    keep = {k: v for k, v in cap.manifest.items() if k not in ("format", "format_version", "capture_id",
                                                                "families", "status", "stop", "writer_pid")}
    tiled = {f: pa.concat_tables(_tiled(t, f, tiles, span, walk_span)) for f, t in tables.items()}
    window = int(segment_seconds * 1e9)
    windows = {f: (t["ts_ns"].to_numpy() - first) // window for f, t in tiled.items()}
    last = max(int(w.max()) for w in windows.values() if len(w))
    total = 0
    with CaptureWriter(out, manifest=keep, segment_rows=segment_rows, segment_seconds=1e9) as writer:
        for family, table in tables.items():
            writer.declare(family, cap.schema(family))
        for w in range(last + 1):
            for family, table in tiled.items():
                where = np.flatnonzero(windows[family] == w)
                if len(where):
                    writer.append(family, table.take(where))
                    total += len(where)
            writer.flush()
    return total


def make_dataset(root: Path, captures: int, rows: int, segment_rows: int, segment_seconds: float = 1.0,
                 max_seconds: float = 120.0) -> dict:
    """``captures`` captures under ``root`` (see the module docstring); returns what was made."""
    templates = root / "templates"
    shapes = []
    for i, name in enumerate(SHAPES):
        path = templates / f"shape{i}.tkcap"
        shapes.append((path, make_template(SAMPLES / name, path, rows, segment_rows, segment_seconds, max_seconds)))
    from tracekit.capture import open_capture
    from tracekit.fleet.verdicts import VERDICTS_NAME, store_verdicts

    for path, _ in shapes:
        store_verdicts(open_capture(path))
    fleet = root / "fleet"
    total = 0
    for n in range(captures):
        shape, shape_rows = shapes[n % len(shapes)]
        target = fleet / f"host{n % 50:02d}" / f"run{n:04d}.tkcap"
        for source in shape.rglob("*"):
            dest = target / source.relative_to(shape)
            if source.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            elif source.name not in ("capture.json", VERDICTS_NAME):
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.link(source, dest)
        manifest = json.loads((shape / "capture.json").read_text())
        arch = "arm64" if manifest.get("arch") == "aarch64" else "amd64"
        manifest.update(capture_id=str(uuid.UUID(int=n + 1)), host=f"host{n % 50:02d}",
                        kernel_release=_KERNELS[(n // len(shapes)) % len(_KERNELS)].format(arch=arch))
        (target / "capture.json").write_text(json.dumps(manifest))
        verdicts = json.loads((shape / VERDICTS_NAME).read_text())
        (target / VERDICTS_NAME).write_text(json.dumps({**verdicts, "capture_id": manifest["capture_id"]}))
        total += shape_rows
    return {"captures": captures, "rows": total, "fleet": str(fleet), "shapes": len(shapes)}


# -- the measured steps, each run in a child ---------------------------------------------------------

def _files(paths: list[str]) -> list[str]:
    return sorted(str(p) for root in paths for p in Path(root).rglob("part-*.parquet"))


def step_count(paths: list[str]) -> dict:
    import duckdb

    files = _files(paths)
    t0 = time.perf_counter()
    rows = duckdb.sql(f"SELECT count(*) FROM read_parquet({files!r})").fetchall()[0][0]
    return {"rows": rows, "seconds": time.perf_counter() - t0, "files": len(files)}


def step_columns(paths: list[str]) -> dict:
    """Decode every column the summary reads, family by family (sums, so nothing is skipped)."""
    import duckdb

    from tracekit.fleet.query import INPUT_COLUMNS

    t0 = time.perf_counter()
    rows = 0
    by_family: dict[str, list[str]] = {}
    for f in _files(paths):
        by_family.setdefault(Path(f).parent.name, []).append(f)
    for family, files in by_family.items():
        columns = INPUT_COLUMNS.get(family)
        if not columns:
            continue
        present = {r[0] for r in duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet({files[:1]!r})").fetchall()}
        sums = ", ".join(f"count(\"{c}\")" for c in columns if c in present)
        rows += duckdb.sql(f"SELECT count(*), {sums} FROM read_parquet({files!r}, union_by_name = true)").fetchall()[0][0]
    return {"rows": rows, "seconds": time.perf_counter() - t0}


def step_summary(paths: list[str], engine: str, memory_limit: str | None = None) -> dict:
    """``tracekit fleet summary`` as the command runs it: the captures opened and checked beside the
    query (on DuckDB), the query run again only if the check changes its inputs."""
    from tracekit.fleet.summary import fleet_summary

    t0 = time.perf_counter()
    options = {"memory_limit": memory_limit} if memory_limit else {}
    result = fleet_summary(paths, by="kernel", engine=engine, **options)
    return {"captures": len(result.captures), "groups": len(result.groups), "seconds": time.perf_counter() - t0,
            "problems": len(result.problems), "walks": sum(g["walks"] for g in result.groups),
            "analysed": sum(g["analysed_captures"] for g in result.groups)}


def _child(step: str, paths: list[str], engine: str = "duckdb", memory_limit: str | None = None) -> dict:
    """Run ``step`` in a fresh interpreter; its result plus its peak RSS (MiB)."""
    code = (f"import json, resource, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import bench_fleet as b; "
            f"r = b.step_{step}({paths!r}{f', {engine!r}, {memory_limit!r}' if step == 'summary' else ''}); "
            "r['peak_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; print(json.dumps(r))")
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"bench_fleet: step {step} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_at_start"] = round(load, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captures", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=210_000, help="rows per capture (about)")
    parser.add_argument("--segment-rows", type=int, default=2_000_000, help="as the recorder's writer")
    parser.add_argument("--segment-seconds", type=float, default=1.0, help="of trace time, as the recorder's --segment-seconds")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="trace time of a capture at most (tiles)")
    parser.add_argument("--dir", type=Path, default=None, help="where to generate (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the generated dataset")
    parser.add_argument("--reuse", action="store_true", help="--dir holds a dataset made before: measure it")
    parser.add_argument("--spark", action="store_true", help="also run the summary on Spark local mode")
    parser.add_argument("--rounds", type=int, default=1, help="count(*) and summary alternated this many times in "
                        "all (each pair's ratio and load, then the median ratio): the host's load moves between steps")
    parser.add_argument("--steps", default="count,columns,summary,summary_quarter,summary_half,summary_256mb",
                        help="which measurements to run (comma-separated; spark is added by --spark)")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="tk-fleet-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    print(f"load average at start: {os.getloadavg()}")
    try:
        if args.reuse:
            made = json.loads((root / "made.json").read_text())
        else:
            t0 = time.perf_counter()
            made = make_dataset(root, args.captures, args.rows, args.segment_rows, args.segment_seconds, args.max_seconds)
            made["generate_seconds"] = time.perf_counter() - t0
            (root / "made.json").write_text(json.dumps(made))
        print(f"dataset: {made}")
        fleet = made["fleet"]
        hosts = sorted(str(p) for p in Path(fleet).iterdir())
        quarter, half = hosts[: max(1, len(hosts) // 4)], hosts[: max(1, len(hosts) // 2)]
        steps = {"count": lambda: _child("count", [fleet]), "columns": lambda: _child("columns", [fleet]),
                 "summary": lambda: _child("summary", [fleet]), "summary_quarter": lambda: _child("summary", quarter),
                 "summary_half": lambda: _child("summary", half),
                 "summary_256mb": lambda: _child("summary", [fleet], memory_limit="256MB"),
                 "spark": lambda: _child("summary", [fleet], "spark")}
        wanted = [n for n in args.steps.split(",") if n] + (["spark"] if args.spark else [])
        results = {}
        for name in wanted:
            results[name] = steps[name]()
            print(f"{name}: {results[name]}", flush=True)
        rows = made["rows"]
        for name, r in results.items():
            rate = f"{rows / r['seconds'] / 1e6:8.1f} M rows/s" if name not in ("summary_quarter", "summary_half") else " " * 15
            print(f"{name:16s} {r['seconds']:8.2f} s  {rate}  peak {r['peak_mib']:7.0f} MiB")
        s, c, col = results.get("summary"), results.get("count"), results.get("columns")
        if s and c:
            print(f"summary / count(*) scan: {s['seconds'] / c['seconds']:.2f}x")
        pairs = [(c, s)] if s and c else []
        for _ in range(args.rounds - 1):
            pairs.append((steps["count"](), steps["summary"]()))
            print(f"count: {pairs[-1][0]}\nsummary: {pairs[-1][1]}", flush=True)
        if len(pairs) > 1:
            ratios = sorted(b["seconds"] / a["seconds"] for a, b in pairs)
            for a, b in pairs:
                print(f"round: count(*) {a['seconds']:.2f} s (load {a['load_at_start']}), summary {b['seconds']:.2f} s "
                      f"(load {b['load_at_start']}, peak {b['peak_mib']:.0f} MiB): "
                      f"{b['seconds'] / a['seconds']:.2f}x")
            print(f"summary / count(*) over {len(pairs)} alternated rounds: median {ratios[len(ratios) // 2]:.2f}x, "
                  f"{ratios[0]:.2f}x to {ratios[-1]:.2f}x")
        if s and col:
            print(f"summary / column scan: {s['seconds'] / col['seconds']:.2f}x")
        if s:
            sizes = [results[n] for n in ("summary_quarter", "summary_half", "summary") if n in results]
            print("peak memory against the number of captures: " + ", ".join(
                f"{r['captures']} captures {r['peak_mib']:.0f} MiB (load {r['load_at_start']})" for r in sizes))
        if s and "summary_256mb" in results:
            m = results["summary_256mb"]
            print(f"with DuckDB's memory limit at 256 MB instead of 1 GB: {m['peak_mib']:.0f} MiB peak, "
                  f"{m['seconds'] / s['seconds']:.2f}x the time")
        print(f"load average at end: {os.getloadavg()}")
    finally:
        if not args.keep and not args.reuse:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
