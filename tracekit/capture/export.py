"""Export one family of a capture as CSV or JSON Lines.

:func:`export_family` streams ``family`` segment by segment (bounded memory) to a binary file
object; dictionary columns are written as their string values, list columns as JSON arrays in CSV.
Raises CaptureFormatError for an unknown family or format.
"""

from __future__ import annotations

import json
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv

from tracekit.capture.reader import Capture
from tracekit.errors import CaptureFormatError

__all__ = ["EXPORT_FORMATS", "export_family"]

EXPORT_FORMATS = ("csv", "jsonl")


def _plain(table: pa.Table) -> pa.Table:
    columns = []
    for column in table.columns:
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        elif pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            column = pa.array([None if v is None else json.dumps(v) for v in column.to_pylist()], pa.string())
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def export_family(cap: Capture, family: str, fmt: str, out: BinaryIO) -> int:
    """Write ``family`` of ``cap`` to ``out`` in ``fmt``; return the number of rows written."""
    if fmt not in EXPORT_FORMATS:
        raise CaptureFormatError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if family not in cap.families():
        raise CaptureFormatError(f"{cap.path}: no family {family!r} (has: {', '.join(cap.families()) or 'none'})")
    rows = 0
    first = True
    for table in cap.iter_tables(family):
        if fmt == "csv":
            pacsv.write_csv(_plain(table), out, write_options=pacsv.WriteOptions(include_header=first))
        else:
            for batch in table.to_batches(max_chunksize=65536):
                for row in batch.to_pylist():
                    out.write(json.dumps(row, separators=(",", ":")).encode() + b"\n")
        rows += table.num_rows
        first = False
    if first and fmt == "csv":  # no segment at all: still give CSV readers the header
        pacsv.write_csv(_plain(cap.table(family)), out)
    return rows
