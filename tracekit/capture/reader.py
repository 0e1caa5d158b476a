"""Reader of capture directories.

Contract: :func:`open_capture` validates a capture and returns a :class:`Capture` giving the manifest and
each family as a pyarrow Table or pandas DataFrame (or, :meth:`Capture.iter_batches`, record batches of
at most a given number of rows), reading only the columns asked for. Every defect (no
such path, not a capture, an unparsable or foreign manifest, a newer format version, a truncated or corrupt
segment, a segment whose schema disagrees with its family) raises
:class:`tracekit.errors.CaptureFormatError` with one line naming the file. A capture whose writer was killed
(status still ``recording``) is readable: its finished segments are used and the manifest is completed from
the newest segment's embedded snapshot (lost-event counters, progress time).
"""

from __future__ import annotations

import json
import os
import platform
from functools import cached_property
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from tracekit.capture.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SCHEMA_FILE,
    SEGMENT_GLOB,
    check_family_schema,
)
from tracekit.errors import CaptureFormatError
from tracekit.procs import pid_alive

__all__ = ["Capture", "open_capture"]


def _read_manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        if path.is_dir() and not any(path.iterdir()):
            raise CaptureFormatError(f"{path}: empty directory, not a tracekit capture")
        raise CaptureFormatError(f"{path}: not a tracekit capture (no {MANIFEST_NAME})")
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CaptureFormatError(f"{manifest_path}: unreadable manifest ({error})") from error
    if not text.strip():
        raise CaptureFormatError(f"{manifest_path}: empty manifest (capture truncated)")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as error:
        raise CaptureFormatError(f"{manifest_path}: corrupt manifest ({error.msg} at line {error.lineno})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CaptureFormatError(f"{path}: not a tracekit capture (manifest has no format {FORMAT_NAME!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CaptureFormatError(f"{manifest_path}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CaptureFormatError(
            f"{path}: capture format version {version} is newer than this tracekit reads "
            f"(up to {FORMAT_VERSION}); upgrade tracekit"
        )
    return manifest


class Capture:
    """An opened capture. Use :func:`open_capture` to make one."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self._raw_manifest = manifest

    # -- manifest -------------------------------------------------------------------------------

    @cached_property
    def manifest(self) -> dict:
        """The manifest; for an unfinished capture, completed from the newest segment snapshot."""
        manifest = dict(self._raw_manifest)
        if manifest.get("status") != "recording":
            return manifest
        newest = None
        for family in self.families():
            for segment in self.segments(family):
                snap = self._segment_snapshot(segment)
                if snap and (newest is None or snap.get("progress_monotonic_ns", 0) > newest.get("progress_monotonic_ns", 0)):
                    newest = snap
        if newest:
            manifest["lost"] = newest.get("lost", manifest.get("lost", []))
        manifest["status"] = "recording" if pid_alive(manifest.get("writer_pid")) and self._writer_is_local() else "incomplete"
        return manifest

    def _writer_is_local(self) -> bool:
        return self._raw_manifest.get("host") == platform.uname().node

    @staticmethod
    def _segment_snapshot(segment: Path) -> dict | None:
        try:
            metadata = pq.read_schema(segment).metadata or {}
            return json.loads(metadata.get(b"tracekit.manifest", b"null"))
        except Exception:  # a bad segment is reported when its data is read
            return None

    @property
    def complete(self) -> bool:
        """True when the writer closed the capture normally."""
        return self.manifest.get("status") == "complete"

    # -- families -------------------------------------------------------------------------------

    def families(self) -> list[str]:
        """Family names present (a directory with a schema file or segments), sorted."""
        names = set()
        for child in self.path.iterdir():
            if child.is_dir() and not child.is_symlink() and not child.name.startswith((".", "_")):
                if (child / SCHEMA_FILE).is_file() or any(child.glob(SEGMENT_GLOB)):
                    names.add(child.name)
        return sorted(names)

    def has(self, family: str) -> bool:
        return family in self.families()

    def segments(self, family: str) -> list[Path]:
        """Finished segment files of ``family`` in order."""
        directory = self.path / family
        if not directory.is_dir():
            return []
        return sorted(p for p in directory.glob(SEGMENT_GLOB) if p.is_file() and not p.is_symlink())

    def schema(self, family: str) -> pa.Schema:
        """The family's schema (from its schema file, else its first segment)."""
        directory = self.path / family
        source = directory / SCHEMA_FILE
        if not source.is_file():
            segments = self.segments(family)
            if not segments:
                raise CaptureFormatError(f"{self.path}: no family {family!r} (has: {', '.join(self.families()) or 'none'})")
            source = segments[0]
        try:
            schema = pq.read_schema(source)
        except (OSError, pa.ArrowException) as error:
            raise CaptureFormatError(f"{source}: corrupt or truncated Parquet file ({error})") from error
        schema = schema.remove_metadata()
        check_family_schema(family, schema)
        return schema

    def _read_segment(self, segment: Path, columns: Sequence[str] | None) -> pa.Table:
        try:
            return pq.read_table(segment, columns=list(columns) if columns is not None else None)
        except (OSError, pa.ArrowException) as error:
            raise CaptureFormatError(f"{segment}: corrupt or truncated Parquet segment ({error})") from error

    def _columns_schema(self, family: str, columns: Sequence[str] | None) -> pa.Schema:
        """The family's schema cut to ``columns`` (all when None); unknown columns raise."""
        schema = self.schema(family)
        if columns is not None:
            unknown = [c for c in columns if c not in schema.names]
            if unknown:
                raise CaptureFormatError(f"family {family!r} has no column(s) {', '.join(unknown)}")
            schema = pa.schema([schema.field(c) for c in columns])
        return schema

    def iter_tables(self, family: str, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        """Yield ``family`` one segment at a time (bounded memory)."""
        schema = self._columns_schema(family, columns)
        for segment in self.segments(family):
            table = self._read_segment(segment, columns).replace_schema_metadata(None)
            if not table.schema.equals(schema):
                raise CaptureFormatError(f"{segment}: schema differs from family {family!r}")
            yield table

    def iter_batches(self, family: str, columns: Sequence[str] | None = None,
                     batch_rows: int = 1 << 20) -> Iterator[pa.RecordBatch]:
        """Yield ``family`` as record batches of at most ``batch_rows`` rows (whole Parquet row groups
        where they are that small), segment by segment: memory bounded by one batch."""
        schema = self._columns_schema(family, columns)
        for segment in self.segments(family):
            try:
                for batch in pq.ParquetFile(segment).iter_batches(batch_size=batch_rows, columns=list(schema.names)):
                    if not batch.schema.remove_metadata().equals(schema):
                        raise CaptureFormatError(f"{segment}: schema differs from family {family!r}")
                    yield batch
            except (OSError, pa.ArrowException) as error:
                raise CaptureFormatError(f"{segment}: corrupt or truncated Parquet segment ({error})") from error

    def table(self, family: str, columns: Sequence[str] | None = None) -> pa.Table:
        """All rows of ``family`` (only ``columns`` if given); an empty table with the schema if none."""
        tables = list(self.iter_tables(family, columns))
        if not tables:
            return self._columns_schema(family, columns).empty_table()
        return pa.concat_tables(tables)

    def dataframe(self, family: str, columns: Sequence[str] | None = None):
        """``table(family, columns)`` as a pandas DataFrame."""
        return self.table(family, columns).to_pandas()

    def rows(self, family: str) -> int:
        """Row count of ``family`` from segment footers (no data read)."""
        total = 0
        for segment in self.segments(family):
            try:
                total += pq.ParquetFile(segment).metadata.num_rows
            except (OSError, pa.ArrowException) as error:
                raise CaptureFormatError(f"{segment}: corrupt or truncated Parquet segment ({error})") from error
        return total

    def lost_total(self) -> int:
        return sum(int(entry.get("count", 0)) for entry in self.manifest.get("lost", []) or [])

    def __repr__(self) -> str:
        return f"Capture({str(self.path)!r})"


def open_capture(path: str | os.PathLike) -> Capture:
    """Open and validate the capture at ``path``; raise CaptureFormatError with one line if unusable."""
    p = Path(path)
    if not p.exists():
        raise CaptureFormatError(f"{p}: no such capture")
    if not p.is_dir():
        raise CaptureFormatError(f"{p}: not a tracekit capture (a capture is a NAME.tkcap directory)")
    return Capture(p, _read_manifest(p))
