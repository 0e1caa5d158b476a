"""A DuckDB query's result written as CSV, JSON Lines or Parquet by DuckDB's own writers (``COPY``).

:func:`copy_result` writes to a file path, or streams to a binary file object (standard output, which
may be a pipe, a file or a terminal) through a pipe DuckDB writes to: never row by row in Python.
Errors are DuckDB's (``duckdb.Error``); the callers turn them into one line. :func:`connection` opens
DuckDB as every command does (its progress bar only on a terminal).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["COPY_OPTIONS", "connection", "copy_result", "sql_string"]

#: Output format -> the COPY options that write it (JSON: one object per line).
COPY_OPTIONS = {
    "csv": "FORMAT csv, HEADER true",
    "json": "FORMAT json",
    "jsonl": "FORMAT json",
    "parquet": "FORMAT parquet, COMPRESSION zstd",
}


def connection(database: str = ":memory:") -> Any:
    """A DuckDB connection to ``database``, its progress bar off unless standard error is a terminal (its
    frames would fill a redirected standard error, where tracekit writes one line per problem)."""
    import duckdb  # late: only the SQL commands need it (~0.2 s to import)

    con = duckdb.connect(database)
    if not sys.stderr.isatty():
        con.execute("SET enable_progress_bar = false")
    return con


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def copy_result(con: Any, select: str, fmt: str, out: Path | BinaryIO) -> int | None:
    """``COPY (select) TO out`` in ``fmt``; returns the rows DuckDB reports written (None if it does not)."""
    options = COPY_OPTIONS[fmt]
    if isinstance(out, (str, os.PathLike)):
        con.execute(f"COPY ({select}) TO {sql_string(os.fspath(out))} ({options})")
        row = con.fetchone()
        return int(row[0]) if row and isinstance(row[0], int) else None
    read_fd, write_fd = os.pipe()
    result: list[Any] = []

    def produce() -> None:
        try:
            con.execute(f"COPY ({select}) TO '/dev/fd/{write_fd}' ({options})")
            row = con.fetchone()
            result.append(int(row[0]) if row and isinstance(row[0], int) else None)
        except BaseException as error:  # handed to the calling thread
            result.append(error)
        finally:
            os.close(write_fd)

    writer = threading.Thread(target=produce, daemon=True)
    writer.start()
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            while chunk := pipe.read(1 << 20):
                out.write(chunk)
        out.flush()
    finally:
        writer.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]
