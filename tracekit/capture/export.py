"""Export one family of a capture as CSV, JSON Lines or Parquet.

:func:`export_family` streams ``family`` batch by batch (bounded memory, every page checked against its
checksum by the capture reader) into DuckDB, whose own writers produce the output: nothing is
formatted row by row in Python. Text columns are written as text (dictionary-typed ones of older
captures too), uint64 values exactly, list columns as JSON arrays in CSV and as arrays in JSON Lines
and Parquet. Raises CaptureFormatError for an unknown family or format, or a file that cannot be written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from tracekit.capture.format import shown_path
from tracekit.capture.reader import Capture
from tracekit.copyout import connection, copy_result
from tracekit.errors import CaptureFormatError, one_line

__all__ = ["EXPORT_FORMATS", "export_family"]

EXPORT_FORMATS = ("csv", "jsonl", "parquet")
_BATCH_ROWS = 1 << 18


def _select(schema: pa.Schema, fmt: str) -> str:
    """The SELECT over the registered stream: list columns as JSON text in CSV, the rest as they are."""
    columns = []
    for field in schema:
        name = '"' + field.name.replace('"', '""') + '"'
        is_list = pa.types.is_list(field.type) or pa.types.is_large_list(field.type)
        columns.append(f"to_json({name}) AS {name}" if fmt == "csv" and is_list else name)
    return f"SELECT {', '.join(columns)} FROM family_batches"


def _plain(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema])


def export_family(cap: Capture, family: str, fmt: str, out: BinaryIO | str | os.PathLike) -> int:
    """Write ``family`` of ``cap`` to ``out`` (a path, or a binary file object such as standard output)
    in ``fmt``; return the number of rows written."""
    import duckdb  # here, not at the top: the other commands of the console script need not load it

    if fmt not in EXPORT_FORMATS:
        raise CaptureFormatError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if family not in cap.families():
        raise CaptureFormatError(f"{cap.path}: no family {family!r} (has: {', '.join(cap.families()) or 'none'})")
    schema = _plain(cap.schema(family))
    rows = 0
    failed: list[CaptureFormatError] = []  # the reader's error: DuckDB passes on only its text and traceback

    def batches():
        nonlocal rows
        try:
            for batch in cap.iter_batches(family, batch_rows=_BATCH_ROWS):
                batch = batch.cast(schema) if not batch.schema.equals(schema) else batch
                rows += batch.num_rows
                yield batch
        except CaptureFormatError as error:
            failed.append(error)
            raise

    con = connection()
    try:
        con.execute("SET threads = 1")  # one stream, written in order
        con.register("family_batches", pa.RecordBatchReader.from_batches(schema, batches()))
        copy_result(con, _select(schema, fmt), fmt, out)
    except duckdb.Error as error:
        cause = error.__cause__ if isinstance(error.__cause__, CaptureFormatError) else None
        if cause is not None or failed:
            raise cause or failed[0] from None
        where = shown_path(out) if isinstance(out, (str, os.PathLike)) else "the output"
        raise CaptureFormatError(f"cannot export {family} to {where}: {one_line(str(error))}") from None
    finally:
        con.close()
    return rows
