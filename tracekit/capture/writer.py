"""Streaming writer of a capture directory.

:class:`CaptureWriter` buffers Arrow data per family and writes numbered Parquet segments, each to a
hidden file renamed into place when complete, with the manifest rewritten atomically after each: a
writer killed at any instant loses at most the rows of its open segments, and every finished file
stays readable by plain pyarrow, DuckDB or Polars. Segments close after ``segment_seconds`` or
``segment_rows``. Room for the final manifest is kept allocated, so a full disk still ends the
capture ``aborted`` with the reason. CaptureFormatError for bad names, schemas or output paths;
:class:`CaptureWriteError` when the disk refuses a write.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tracekit import __version__
from tracekit.capture.format import (
    BULKY_MANIFEST_KEYS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SCHEMA_FILE,
    check_family_name,
    check_family_schema,
    segment_name,
)
from tracekit.capture.manifest import new_capture_id
from tracekit.errors import CaptureFormatError, TracekitError
from tracekit.host import clock_anchor, host_facts

__all__ = ["CaptureWriter", "CaptureWriteError", "conform_table", "json_bytes", "write_json_atomic", "write_segment_file"]


class CaptureWriteError(TracekitError):
    """Writing a segment or the manifest failed (disk full, I/O error)."""


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


_RESERVE_MIN_BYTES = 64 << 10


def json_bytes(data: Any) -> bytes:
    """``data`` as the JSON text of a capture's files (the manifest, the stored verdicts)."""
    return (json.dumps(data, indent=1, sort_keys=False, default=str) + "\n").encode()


def write_json_atomic(path: Path, data: Any, *, reserve_next: bool = False) -> None:
    """Write ``data`` as JSON to ``path`` through a hidden temporary file and a rename. With
    ``reserve_next`` the temporary file of the next write is made at once, with twice this text's size (at
    least 64 KiB) allocated: the next write reuses its inode and blocks, so it succeeds on a file system
    that has run out of inodes or space meanwhile (unless the text outgrew the reservation)."""
    tmp = path.with_name(f".{path.name}.tmp")
    text = json_bytes(data)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)  # no O_TRUNC: keep reserved blocks
        try:
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view):]
            os.ftruncate(fd, len(text))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise CaptureWriteError(f"cannot write {path.name}: {error.strerror or error}") from error
    if reserve_next:
        _reserve(tmp, max(2 * len(text), _RESERVE_MIN_BYTES))


def _reserve(path: Path, size: int) -> None:
    """Make ``path`` with ``size`` bytes allocated; keep it without them when the space is refused."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError:  # taken meanwhile, or no inode left: the next write makes its own
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        pass  # the inode alone is still worth keeping
    finally:
        os.close(fd)


def write_segment_file(table: pa.Table, path: Path) -> None:
    """Write ``table`` as one segment file, as every segment is written: zstd, page checksums, and dictionary
    pages only for the text columns (on every numeric column they doubled the recorder's encoding CPU for
    no size gain: addresses and PTEs rarely repeat)."""
    dictionary_columns = [f.name for f in table.schema if pa.types.is_dictionary(f.type) or pa.types.is_string(f.type)]
    pq.write_table(table, path, compression="zstd", use_dictionary=dictionary_columns or False,
                   write_page_checksum=True)


def conform_table(data: pa.Table | pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    """Select and cast ``data``'s columns to ``schema`` (dictionary columns decoded to plain strings, strings
    dictionary-encoded where a schema of an older capture asks)."""
    table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise CaptureFormatError(f"appended data lacks column(s) {', '.join(missing)}")
    columns = []
    for field in schema:
        column = table.column(field.name)
        if column.type != field.type:
            if pa.types.is_dictionary(field.type) and not pa.types.is_dictionary(column.type):
                column = pc.dictionary_encode(column.cast(field.type.value_type))
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                raise CaptureFormatError(f"column {field.name}: cannot store {column.type} as {field.type}: {error}")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


class _Family:
    __slots__ = ("schema", "directory", "buffers", "buffered_rows", "opened_at", "segments", "rows")

    def __init__(self, schema: pa.Schema, directory: Path):
        self.schema = schema
        self.directory = directory
        self.buffers: list[pa.Table] = []
        self.buffered_rows = 0
        self.opened_at: float | None = None
        self.segments = 0
        self.rows = 0


class CaptureWriter:
    """Write a capture directory segment by segment (see the module docstring).

    Args:
        path: the capture directory to create; it must not exist, or be an empty directory.
        manifest: caller-supplied manifest keys (target, probes, backend, command_line, source, ...).
        segment_seconds: close a segment at the latest this long after its first row.
        segment_rows: close a segment when it holds this many rows.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        manifest: dict | None = None,
        *,
        segment_seconds: float = 1.0,
        segment_rows: int = 2_000_000,
    ):
        if segment_seconds <= 0 or segment_rows <= 0:
            raise CaptureFormatError("segment_seconds and segment_rows must be positive")
        self.path = Path(path)
        self.segment_seconds = segment_seconds
        self.segment_rows = segment_rows
        self._families: dict[str, _Family] = {}
        self._lost: dict[tuple[str, int], int] = {}
        self._closed = False
        self._t0_ns = time.monotonic_ns()
        self._prepare_directory()
        self.manifest: dict = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "capture_id": new_capture_id(),
            "tracekit_version": __version__,
            **host_facts(),
            "clock": {"ts_ns": "CLOCK_MONOTONIC", "anchor": clock_anchor()},
            "start": _utc_now(),
            "stop": None,
            "status": "recording",
            "writer_pid": os.getpid(),
        }
        self.manifest.update(manifest or {})
        self._write_manifest()

    def _prepare_directory(self) -> None:
        path = self.path
        if path.is_symlink():
            raise CaptureFormatError(f"refusing to write a capture through a symlink: {path}")
        if path.exists():
            if not path.is_dir():
                raise CaptureFormatError(f"output {path} exists and is not a directory")
            if any(path.iterdir()):
                raise CaptureFormatError(f"output {path} already exists and is not empty; choose another -o")
        else:
            try:
                path.mkdir(parents=True)
            except OSError as error:
                raise CaptureFormatError(f"cannot create {path}: {error.strerror or error}") from error

    # -- families -------------------------------------------------------------------------------

    def declare(self, family: str, schema: pa.Schema) -> None:
        """Declare ``family`` with ``schema`` (which starts with COMMON_FIELDS); idempotent for one schema."""
        check_family_name(family)
        check_family_schema(family, schema)
        known = self._families.get(family)
        if known is not None:
            if not known.schema.equals(schema):
                raise CaptureFormatError(f"family {family!r} declared twice with different schemas")
            return
        directory = self.path / family
        try:
            directory.mkdir(exist_ok=True)
            tmp = directory / f".{SCHEMA_FILE}.tmp"
            pq.write_table(schema.empty_table(), tmp)
            os.replace(tmp, directory / SCHEMA_FILE)
        except OSError as error:
            raise CaptureWriteError(f"cannot create family {family}: {error.strerror or error}") from error
        self._families[family] = _Family(schema, directory)
        self.manifest.setdefault("families", {})[family] = {"rows": 0, "segments": 0}

    def families(self) -> list[str]:
        return list(self._families)

    def append(self, family: str, data: pa.Table | pa.RecordBatch) -> None:
        """Buffer ``data`` (cast to the declared schema) for ``family``."""
        fam = self._families.get(family)
        if fam is None:
            raise CaptureFormatError(f"family {family!r} was not declared")
        table = conform_table(data, fam.schema)
        if table.num_rows == 0:
            return
        if fam.opened_at is None:
            fam.opened_at = time.monotonic()
        fam.buffers.append(table)
        fam.buffered_rows += table.num_rows
        if fam.buffered_rows >= self.segment_rows:
            self._close_segment(family)

    def tick(self) -> None:
        """Close every segment whose first row is older than ``segment_seconds``."""
        now = time.monotonic()
        for family, fam in self._families.items():
            if fam.opened_at is not None and now - fam.opened_at >= self.segment_seconds:
                self._close_segment(family)

    def flush(self) -> None:
        """Close every open segment now."""
        for family in self._families:
            self._close_segment(family)

    # -- manifest ----------------------------------------------------------------------------------

    def update_manifest(self, **fields: Any) -> None:
        """Merge ``fields`` into the manifest; persisted at the next segment close and at close()."""
        self.manifest.update(fields)

    def add_lost(self, probe: str, cpu: int, count: int) -> None:
        """Set the cumulative lost-event counter of ``probe`` on ``cpu`` (counters only grow)."""
        key = (probe, int(cpu))
        self._lost[key] = max(self._lost.get(key, 0), int(count))

    def lost_total(self) -> int:
        return sum(self._lost.values())

    def rows(self, family: str) -> int:
        fam = self._families[family]
        return fam.rows + fam.buffered_rows

    def _lost_list(self) -> list[dict]:
        return [{"probe": p, "cpu": c, "count": n} for (p, c), n in sorted(self._lost.items())]

    def _write_manifest(self, last: bool = False) -> None:
        self.manifest["lost"] = self._lost_list()
        write_json_atomic(self.path / MANIFEST_NAME, self.manifest, reserve_next=not last)

    def _segment_metadata(self, family: str, index: int) -> dict[bytes, bytes]:
        snapshot = {k: v for k, v in self.manifest.items() if k not in BULKY_MANIFEST_KEYS}
        snapshot["lost"] = self._lost_list()
        snapshot["progress_monotonic_ns"] = time.monotonic_ns()
        return {
            b"tracekit.format": FORMAT_NAME.encode(),
            b"tracekit.format_version": str(FORMAT_VERSION).encode(),
            b"tracekit.family": family.encode(),
            b"tracekit.segment": str(index).encode(),
            b"tracekit.manifest": json.dumps(snapshot, default=str).encode(),
        }

    def _close_segment(self, family: str) -> None:
        fam = self._families[family]
        if not fam.buffers:
            fam.opened_at = None
            return
        table = pa.concat_tables(fam.buffers)
        index = fam.segments + 1
        final = fam.directory / segment_name(index)
        tmp = fam.directory / f".{final.name}.tmp"
        self.manifest["families"][family] = {"rows": fam.rows + table.num_rows, "segments": index}
        metadata = dict(table.schema.metadata or {})
        metadata.update(self._segment_metadata(family, index))
        try:
            write_segment_file(table.replace_schema_metadata(metadata), tmp)
            os.replace(tmp, final)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            self.manifest["families"][family] = {"rows": fam.rows, "segments": fam.segments}
            raise CaptureWriteError(
                f"cannot write segment {index} of {family}: {error.strerror or error}"
            ) from error
        fam.buffers.clear()
        fam.rows += table.num_rows
        fam.buffered_rows = 0
        fam.segments = index
        fam.opened_at = None
        self._write_manifest()

    # -- closing -----------------------------------------------------------------------------------

    def close(self, status: str = "complete", reason: str | None = None) -> None:
        """Flush every segment and write the final manifest (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        except CaptureWriteError as error:
            if status == "complete":
                status, reason = "aborted", f"{type(error).__name__}: {error}"
            raise
        finally:
            self.manifest["status"] = status
            self.manifest["stop"] = _utc_now()
            self.manifest["stop_monotonic_ns"] = time.monotonic_ns()
            self.manifest["duration_s"] = round((self.manifest["stop_monotonic_ns"] - self._t0_ns) / 1e9, 3)
            if reason:
                self.manifest["status_reason"] = reason
            self._write_manifest(last=True)

    def __enter__(self) -> "CaptureWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            reason = f"{exc_type.__name__}: {exc}" if exc is not None else exc_type.__name__
            try:
                self.close(status="aborted", reason=reason)
            except TracekitError:
                pass  # the original exception is the one to report
