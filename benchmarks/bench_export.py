"""Benchmark of ``tracekit export`` (not a test: prints figures and ratios).

Target (issue #15): exports through DuckDB or pyarrow, not row by row. The issue measured JSON Lines
at 10.9 s for 1.57 M rows with one ``json.dumps`` per row, DuckDB writing the same in 1.1 s. This script
writes a synthetic capture shaped like the recorder's (tests/synthetic.py: ``walk_element`` rows,
ids and PTEs as uint64), then exports one family in every format with :func:`export_family` and
compares each with the baseline measured in the same run on the same capture:

- ``jsonl``: the exporter as it was (the capture read segment by segment, ``json.dumps`` of every row);
  the outputs must be byte for byte the same (checked by hash);
- ``csv``: pyarrow's CSV writer over the same batches (the exporter's former CSV path);
- ``parquet``: pyarrow's Parquet writer over the same batches.

Usage: python benchmarks/bench_export.py [--rows N] [--family walk_element]   (default 1,572,864 rows)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the synthetic captures of tests/synthetic.py

from tests.synthetic import write_synthetic_capture  # noqa: E402
from tracekit.capture import open_capture  # noqa: E402
from tracekit.capture.export import export_family  # noqa: E402


def row_by_row_jsonl(cap, family: str, out) -> int:
    """The former JSON Lines export: one ``json.dumps`` per row."""
    rows = 0
    for table in cap.iter_tables(family):
        for batch in table.to_batches(max_chunksize=65536):
            for row in batch.to_pylist():
                out.write(json.dumps(row, separators=(",", ":")).encode() + b"\n")
        rows += table.num_rows
    return rows


def pyarrow_csv(cap, family: str, out) -> int:
    """CSV through pyarrow's writer, batch by batch (dictionary text decoded)."""
    rows = 0
    writer = None
    for batch in cap.iter_batches(family):
        if writer is None:
            writer = pacsv.CSVWriter(out, batch.schema)
        writer.write_batch(batch)
        rows += batch.num_rows
    if writer is not None:
        writer.close()
    return rows


def pyarrow_parquet(cap, family: str, path: Path) -> int:
    rows = 0
    writer = None
    for batch in cap.iter_batches(family):
        if writer is None:
            writer = pq.ParquetWriter(path, batch.schema, compression="zstd")
        writer.write_batch(batch)
        rows += batch.num_rows
    if writer is not None:
        writer.close()
    return rows


def timed(fn, *args) -> tuple[float, int]:
    start = time.perf_counter()
    rows = fn(*args)
    return time.perf_counter() - start, rows


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_572_864, help="rows of the exported family")
    parser.add_argument("--family", default="walk_element", choices=("walk_element", "walk"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tk-bench-export-") as tmp:
        tmp = Path(tmp)
        walks = args.rows // 3 if args.family == "walk_element" else args.rows
        write_synthetic_capture(tmp / "c.tkcap", walks, chunk=500_000)
        cap = open_capture(tmp / "c.tkcap")
        rows = cap.rows(args.family)
        print(f"capture: {rows:,} {args.family} rows in {len(cap.segments(args.family))} segments")
        print(f"{'format':<8} {'baseline':<24} {'baseline s':>10} {'tracekit s':>10} {'rows/s':>12} {'speed-up':>9}  output")
        cases = [
            ("jsonl", "json.dumps per row", lambda out: row_by_row_jsonl(cap, args.family, out), ".jsonl"),
            ("csv", "pyarrow CSV writer", lambda out: pyarrow_csv(cap, args.family, out), ".csv"),
            ("parquet", "pyarrow Parquet writer", None, ".parquet"),
        ]
        for fmt, label, baseline, suffix in cases:
            base_path, new_path = tmp / f"base{suffix}", tmp / f"new{suffix}"
            if baseline is None:
                base_s, base_rows = timed(pyarrow_parquet, cap, args.family, base_path)
            else:
                with open(base_path, "wb") as out:
                    base_s, base_rows = timed(baseline, out)
            new_s, new_rows = timed(export_family, cap, args.family, fmt, new_path)
            assert base_rows == new_rows == rows, (base_rows, new_rows, rows)
            if fmt == "jsonl":
                same = "byte-identical" if digest(base_path) == digest(new_path) else "DIFFERENT BYTES"
            elif fmt == "parquet":
                new, base = pq.read_table(new_path), pq.read_table(base_path)
                equal = new.column_names == base.column_names and all(
                    new.column(name).equals(base.column(name)) for name in base.column_names)
                same = "the same columns and values" if equal else "DIFFERENT VALUES"
            else:
                same = f"{new_path.stat().st_size / base_path.stat().st_size:.2f}x the baseline's bytes"
            print(f"{fmt:<8} {label:<24} {base_s:>10.2f} {new_s:>10.2f} {rows / new_s:>12,.0f} {base_s / new_s:>8.1f}x  {same}")


if __name__ == "__main__":
    main()
