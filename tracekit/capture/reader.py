"""Reader of capture directories.

:func:`open_capture` validates a capture once (the manifest against its declared schema, every
segment's footer against its family's schema) and returns a :class:`Capture` giving each family as a
pyarrow Table, pandas DataFrame or record batches, reading only the columns asked for. Files are
opened without following symbolic links and must be regular files; data pages are checked against
their CRC. Every defect is one-line :class:`tracekit.errors.CaptureFormatError` naming the file. A
capture whose writer was killed (status ``recording``) is readable: its finished segments are used and
its manifest completed from the newest segment's snapshot. :meth:`Capture.threads` gives the ``threads``
family, else (older captures) the manifest's thread list.
"""

from __future__ import annotations

import errno
import os
import platform
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Callable, Collection, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from tracekit.capture.columns import SCHEMAS
from tracekit.capture.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SCHEMA_FILE,
    check_family_schema,
    is_family_name,
    is_segment_name,
    shown_path,
)
from tracekit.capture.manifest import (MAX_MANIFEST_BYTES, SNAPSHOT, check_manifest, derived_capture_id,
                                       parse_manifest)
from tracekit.errors import CaptureFormatError
from tracekit.procs import pid_alive

__all__ = ["Capture", "open_capture", "exact_pandas", "check_manifest_bytes", "read_family", "family_reads",
           "recorded_families", "arrow_reason", "FOOTERS", "TAILS", "SCHEMA"]

_SNAPSHOT_KEY = b"tracekit.manifest"
_THREAD_KEYS = ["pid", "tid", "comm", "vcpu", "vcpu_from", "first_seen_ns", "last_seen_ns", "pre_exec"]
_FAMILY_KEY = b"tracekit.family"


def _open_inside(path: Path) -> BinaryIO:
    """``path`` opened for reading; a symbolic link or anything but a regular file is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise CaptureFormatError(f"{shown_path(path)}: a symbolic link; a capture's files are read "
                                     "only from inside it") from None
        raise CaptureFormatError(f"{shown_path(path)}: cannot open ({error.strerror or error})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CaptureFormatError(f"{shown_path(path)}: not a regular file")
    return os.fdopen(fd, "rb")


def arrow_reason(error: BaseException) -> str:
    """pyarrow's message for ``error`` as one short line (its Thrift and FieldRef texts span many)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[0] if lines else type(error).__name__
    return reason if len(reason) <= 160 else reason[:157] + "..."


def _corrupt(path: Path, error: BaseException) -> CaptureFormatError:
    if "CRC checksum verification failed" in str(error):
        return CaptureFormatError(f"{shown_path(path)}: page checksum mismatch (the file is corrupt)")
    return CaptureFormatError(f"{shown_path(path)}: corrupt or truncated Parquet file ({arrow_reason(error)})")


def _read_manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST_NAME
    if not os.path.lexists(manifest_path):
        if not any(path.iterdir()):
            raise CaptureFormatError(f"{shown_path(path)}: empty directory, not a tracekit capture")
        raise CaptureFormatError(f"{shown_path(path)}: not a tracekit capture (no {MANIFEST_NAME})")
    where = shown_path(manifest_path)
    with _open_inside(manifest_path) as f:
        if os.fstat(f.fileno()).st_size > MAX_MANIFEST_BYTES:
            raise CaptureFormatError(f"{where}: manifest larger than {MAX_MANIFEST_BYTES >> 20} MiB, refused")
        try:
            data = f.read(MAX_MANIFEST_BYTES + 1)
        except OSError as error:
            raise CaptureFormatError(f"{where}: unreadable manifest ({error.strerror or error})") from None
    return check_manifest_bytes(data, path)


def check_manifest_bytes(data: bytes, path: Any) -> dict:
    """The manifest of the capture at ``path`` from its bytes ``data``, checked (format, version, fields)."""
    where = shown_path(f"{path}/{MANIFEST_NAME}")
    manifest = parse_manifest(data, where)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CaptureFormatError(f"{shown_path(path)}: not a tracekit capture "
                                 f"(manifest has no format {FORMAT_NAME!r})")
    version = manifest.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CaptureFormatError(
            f"{shown_path(path)}: capture format version {version} is newer than this tracekit reads "
            f"(up to {FORMAT_VERSION}); upgrade tracekit"
        )
    check_manifest(manifest, where)
    return manifest


@dataclass(frozen=True)
class _Segment:
    """What a segment's footer says, read once at open."""

    path: Path
    rows: int
    snapshot: dict | None


@dataclass(frozen=True)
class _Family:
    schema: pa.Schema
    segments: tuple[_Segment, ...]
    schema_file: Any = None  # the path of its schema file, where it has one


Opener = Callable[[Any], BinaryIO]


def _read_footer(path: Any, opener: Opener = _open_inside) -> tuple[pa.Schema, int, dict]:
    """Schema (without metadata), row count and key-value metadata of the Parquet file ``path``."""
    with opener(path) as f:
        try:
            footer = pq.ParquetFile(f).metadata
            schema = footer.schema.to_arrow_schema()
        except (OSError, pa.ArrowException, ValueError) as error:
            raise _corrupt(path, error) from None
    return schema.remove_metadata(), footer.num_rows, dict(footer.metadata or {})


def _snapshot(path: Path, metadata: dict) -> dict | None:
    """The parts of the manifest snapshot a segment carries that the reader uses (checked), or None."""
    raw = metadata.get(_SNAPSHOT_KEY)
    if raw is None:
        return None
    where = f"{shown_path(path)}: snapshot"
    snapshot = parse_manifest(raw, where)
    check_manifest(snapshot, where, SNAPSHOT)
    return {key: snapshot[key] for key in SNAPSHOT.fields if key in snapshot}  # what the reader uses


def _check_tail(path: Any, opener: Opener) -> None:
    """A segment whose footer is not read: a regular file inside the capture ending as a Parquet file
    does (a footer length that fits, then the magic), so a truncated one is still refused naming it."""
    with opener(path) as f:
        try:
            size = f.seek(0, 2)
            f.seek(max(size - 8, 0))
            tail = f.read(8)
        except (OSError, pa.ArrowException, ValueError) as error:
            raise _corrupt(path, error) from None
    if size < 12 or tail[4:] != b"PAR1" or int.from_bytes(tail[:4], "little") > size - 12:
        raise CaptureFormatError(f"{shown_path(path)}: corrupt or truncated Parquet file (no footer at its end)")


def _segment_names(names: Sequence[str]) -> list[str]:
    """The segment file names among ``names``, in segment order."""
    return sorted((name for name in names if is_segment_name(name)), key=lambda name: (len(name), name))


#: How much of a family :func:`read_family` reads: every footer (checked), only each segment's tail, or
#: only the family's schema (its schema file, else its first segment's footer; no segment checked).
FOOTERS, TAILS, SCHEMA = "footers", "tails", "schema"


def read_family(directory: Any, names: Sequence[str], snapshots: bool, read: str = FOOTERS,
                opener: Opener = _open_inside) -> _Family | None:
    """The family in ``directory`` (a Path, or a path-like with ``name`` and ``/`` that ``opener`` opens: a
    capture's files on any file system) holding the files ``names``; None when it is empty. ``read``:
    :data:`FOOTERS`: every segment's footer checked against the family's schema (segment snapshots read
    only when ``snapshots``: an unfinished capture uses them); :data:`TAILS`: each segment only checked
    by :func:`_check_tail`, schema and row counts None; :data:`SCHEMA`: the schema only, no segment
    opened, row counts None."""
    family = directory.name
    segment_names = _segment_names(names)
    schema_path = directory / SCHEMA_FILE if SCHEMA_FILE in names else None
    if read == TAILS:
        for name in segment_names:
            _check_tail(directory / name, opener)
        if not segment_names and schema_path is None:
            return None
        return _Family(None, tuple(_Segment(directory / name, None, None) for name in segment_names), schema_path)
    schema = None
    if schema_path is not None:
        schema = _read_footer(schema_path, opener)[0]
        check_family_schema(family, schema)
    if read == SCHEMA:
        if schema is None and segment_names:
            schema = _read_footer(directory / segment_names[0], opener)[0]
            check_family_schema(family, schema)
        segments = tuple(_Segment(directory / name, None, None) for name in segment_names)
        return None if schema is None else _Family(schema, segments, schema_path)
    segments = []
    for name in segment_names:
        path = directory / name
        seg_schema, rows, metadata = _read_footer(path, opener)
        if schema is None:
            check_family_schema(family, seg_schema)
            schema = seg_schema
        written_for = metadata.get(_FAMILY_KEY)
        if written_for is not None and written_for != family.encode():
            raise CaptureFormatError(f"{shown_path(path)}: a segment of family "
                                     f"{shown_path(written_for.decode('utf-8', 'replace'))!r}, not {family!r}")
        if not seg_schema.equals(schema):
            raise CaptureFormatError(f"{shown_path(path)}: schema differs from family {family!r}")
        segments.append(_Segment(path, rows, _snapshot(path, metadata) if snapshots else None))
    if schema is None:
        return None
    if family == "threads":
        _check_threads(directory, schema)
    return _Family(schema, tuple(segments), schema_path)


def family_reads(families: Collection[str] | None, footers: bool = True,
                 recorded: Collection[str] = ()) -> Callable[[str], str]:
    """What :func:`read_family` reads of each family of a capture opened with ``families`` (None: all) and
    ``footers`` (see :func:`open_capture`); without ``footers``, a family whose rows the manifest does not
    record (``recorded``: those it does) has its footers read all the same."""
    def read(family: str) -> str:
        if not footers and family not in recorded:
            return FOOTERS
        return (FOOTERS if footers else SCHEMA) if families is None or family in families else TAILS
    return read


def recorded_families(manifest: dict) -> list[str]:
    """The families whose row counts ``manifest`` records (the writer records them as it closes each segment)."""
    return list(manifest.get("families") or {})


def _check_threads(directory: Any, schema: pa.Schema) -> None:
    """Refuse a ``threads`` family that lacks a declared column or holds it as another type (a string
    column may be dictionary-encoded): readers take its rows as the capture's thread facts."""
    for field in SCHEMAS["threads"]:
        if field.name not in schema.names:
            raise CaptureFormatError(f"{shown_path(directory)}: not a threads family (no column {field.name})")
        found = schema.field(field.name).type
        if (found.value_type if pa.types.is_dictionary(found) else found) != field.type:
            raise CaptureFormatError(f"{shown_path(directory)}: not a threads family (column {field.name} is "
                                     f"{found}, expected {field.type})")


def _read_families(path: Path, snapshots: bool, reads: Callable[[str], str]) -> dict[str, _Family]:
    """Every family of the capture at ``path``, each read as ``reads(family)`` says (:func:`family_reads`)."""
    families = {}
    for entry in os.scandir(path):
        if not is_family_name(entry.name):
            continue  # the manifest, hidden files, foreign or non-UTF-8 names
        if entry.is_symlink():
            raise CaptureFormatError(f"{shown_path(entry.path)}: a symbolic link; a capture's files are read "
                                     "only from inside it")
        if entry.is_dir(follow_symlinks=False):
            directory = Path(entry.path)
            family = read_family(directory, [e.name for e in os.scandir(directory)], snapshots, reads(entry.name))
            if family is not None:
                families[entry.name] = family
    return dict(sorted(families.items()))


class Capture:
    """An opened capture. Use :func:`open_capture` to make one."""

    def __init__(self, path: Path, manifest: dict, families: dict[str, _Family], opener: Opener = _open_inside):
        self.path = path
        self._raw_manifest = manifest
        self._families = families
        self._open = opener  # a capture at a URL reads its files through its file system

    # -- manifest -------------------------------------------------------------------------------

    @cached_property
    def manifest(self) -> dict:
        """The manifest; for an unfinished capture, completed from the newest segment snapshot."""
        manifest = dict(self._raw_manifest)
        if manifest.get("status") != "recording":
            return manifest
        snapshots = [s.snapshot for f in self._families.values() for s in f.segments if s.snapshot]
        if snapshots:
            newest = max(snapshots, key=lambda snap: snap.get("progress_monotonic_ns") or 0)
            manifest["lost"] = newest.get("lost", manifest.get("lost", []))
        alive = pid_alive(manifest.get("writer_pid")) and self._writer_is_local()
        manifest["status"] = "recording" if alive else "incomplete"
        return manifest

    def _writer_is_local(self) -> bool:
        return self._raw_manifest.get("host") == platform.uname().node

    @cached_property
    def capture_id(self) -> str:
        """The manifest's ``capture_id``; for a capture written before ids, one derived from the manifest
        fields fixed when recording began (:func:`derived_capture_id`), so it never changes."""
        given = self._raw_manifest.get("capture_id")
        return given if isinstance(given, str) and given else derived_capture_id(self._raw_manifest)

    @property
    def complete(self) -> bool:
        """True when the writer closed the capture normally."""
        return self.manifest.get("status") == "complete"

    # -- families -------------------------------------------------------------------------------

    def families(self) -> list[str]:
        """Family names present (a directory with a schema file or segments), sorted."""
        return list(self._families)

    def has(self, family: str) -> bool:
        return family in self._families

    def _family(self, family: str) -> _Family:
        found = self._families.get(family)
        if found is None:
            raise CaptureFormatError(f"{shown_path(self.path)}: no family {family!r} "
                                     f"(has: {', '.join(self._families) or 'none'})")
        return found

    def segments(self, family: str) -> list[Path]:
        """Finished segment files of ``family`` in order."""
        found = self._families.get(family)
        return [s.path for s in found.segments] if found else []

    def segment_rows(self, family: str) -> list[int]:
        """Row counts of the finished segments of ``family``, in order (from their footers)."""
        found = self._families.get(family)
        return [s.rows for s in found.segments] if found else []

    def open_file(self, name: str) -> BinaryIO | None:
        """The capture's own file ``name`` (beside its manifest) opened for reading as its segments are, or
        None when there is none."""
        path = self.path / name
        present = path.lexists() if hasattr(path, "lexists") else os.path.lexists(path)  # a CaptureUrl's own
        return self._open(path) if present else None

    def schema_file(self, family: str) -> Any:
        """The path of ``family``'s zero-row schema file, or None (no such family, or no such file)."""
        found = self._families.get(family)
        return found.schema_file if found else None

    def schema(self, family: str) -> pa.Schema:
        """The family's schema (from its schema file, else its first segment)."""
        return self._family(family).schema

    def _parquet(self, segment: Path, f: BinaryIO) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(f, page_checksum_verification=True)
        except (OSError, pa.ArrowException, ValueError) as error:
            raise _corrupt(segment, error) from None

    def _read_segment(self, segment: Path, columns: Sequence[str] | None) -> pa.Table:
        with self._open(segment) as f:
            try:
                return self._parquet(segment, f).read(columns=list(columns) if columns is not None else None)
            except (OSError, pa.ArrowException, ValueError) as error:
                raise _corrupt(segment, error) from None

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
                raise CaptureFormatError(f"{shown_path(segment)}: schema differs from family {family!r}")
            yield table

    def iter_batches(self, family: str, columns: Sequence[str] | None = None,
                     batch_rows: int = 1 << 20) -> Iterator[pa.RecordBatch]:
        """Yield ``family`` as record batches of at most ``batch_rows`` rows (whole Parquet row groups
        where they are that small), segment by segment: memory bounded by one batch."""
        schema = self._columns_schema(family, columns)
        for segment in self.segments(family):
            with self._open(segment) as f:
                try:
                    for batch in self._parquet(segment, f).iter_batches(batch_size=batch_rows,
                                                                        columns=list(schema.names)):
                        if not batch.schema.remove_metadata().equals(schema):
                            raise CaptureFormatError(f"{shown_path(segment)}: schema differs from family {family!r}")
                        yield batch
                except (OSError, pa.ArrowException, ValueError) as error:
                    raise _corrupt(segment, error) from None

    def table(self, family: str, columns: Sequence[str] | None = None) -> pa.Table:
        """All rows of ``family`` (only ``columns`` if given); an empty table with the schema if none."""
        tables = list(self.iter_tables(family, columns))
        if not tables:
            return self._columns_schema(family, columns).empty_table()
        return pa.concat_tables(tables)

    def dataframe(self, family: str, columns: Sequence[str] | None = None):
        """``table(family, columns)`` as a pandas DataFrame, exact (see :func:`exact_pandas`)."""
        return exact_pandas(self.table(family, columns))

    def rows(self, family: str) -> int | None:
        """Row count of ``family`` from segment footers (read at open; None when they were not)."""
        found = self._families.get(family)
        if found is None:
            return 0
        counts = [s.rows for s in found.segments]
        return None if found.schema is None or None in counts else sum(counts)

    def family_rows(self) -> dict[str, int | None]:
        """``{family: rows}`` of every family present (:meth:`rows`), in family order."""
        return {family: self.rows(family) for family in self._families}

    def lost_total(self) -> int:
        return sum(entry["count"] for entry in self.manifest.get("lost") or [] if "count" in entry)

    def threads(self) -> list[dict]:
        """The threads the recorder knew, by tid, as ``{"pid", "tid", "comm", "vcpu", "vcpu_from",
        "first_seen_ns", "last_seen_ns", "pre_exec"}`` (None where unknown): the ``threads`` family's rows,
        else (written before the family, or by a recorder stopped before writing them) ``target.threads``."""
        if self.rows("threads"):
            table = self.table("threads", ["pid", "tid", "comm", "vcpu", "vcpu_from", "ts_ns", "last_seen_ns",
                                           "pre_exec"]).rename_columns(_THREAD_KEYS)
            return sorted(({**row, "pid": row["pid"] or None} for row in table.to_pylist()), key=lambda row: row["tid"])
        target = self.manifest.get("target") if isinstance(self.manifest.get("target"), dict) else {}
        return sorted(({**dict.fromkeys(_THREAD_KEYS), **{k: t.get(k) for k in ("pid", "tid", "comm", "vcpu", "vcpu_from")},
                        "pre_exec": t.get("pre_exec") if isinstance(t.get("pre_exec"), bool) else None}
                       for t in target.get("threads") or [] if isinstance(t, dict) and "tid" in t),
                      key=lambda row: row["tid"])

    def __repr__(self) -> str:
        return f"Capture({shown_path(self.path)!r})"


def _masked_integer_dtype(type_: pa.DataType):
    """pyarrow ``types_mapper``: an integer type to pandas' masked nullable dtype (``UInt64``, ``Int32``...)."""
    if not pa.types.is_integer(type_):
        return None
    import pandas as pd  # here: opening and reading a capture need no pandas

    return pd.api.types.pandas_dtype(("UInt" if pa.types.is_unsigned_integer(type_) else "Int") + str(type_.bit_width))


def exact_pandas(data: pa.Table | pa.ChunkedArray | pa.Array):
    """``data`` as pandas with every integer column in pandas' nullable dtypes (``UInt64``, ``Int64``...):
    every value exact, nulls ``<NA>``. Plain ``to_pandas`` turns a nullable uint64 into float64, exact only
    below 2^53; Arrow-backed dtypes (``uint64[pyarrow]``) are exact too but pandas cannot compare them with a
    Python int above 2^63 (``isin``, ``==`` raise OverflowError), so the masked ones are used. Dictionary
    text becomes plain strings."""
    if isinstance(data, pa.Table):
        data = data.cast(pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
                                    for f in data.schema], metadata=data.schema.metadata))
    elif pa.types.is_dictionary(data.type):
        data = data.cast(data.type.value_type)
    return data.to_pandas(types_mapper=_masked_integer_dtype)


def open_capture(path: str | os.PathLike, families: Collection[str] | None = None, *, footers: bool = True) -> Capture:
    """Open and validate the capture at ``path`` (at a URL: :func:`.remote.open_url_capture`); raise
    CaptureFormatError with one line if unusable. With ``families``, only those families' segment footers
    are read and checked; the others' segments are checked to be regular files that end as Parquet files,
    and their schema and rows are None. Without ``footers``, ``families`` (all when None) have only their
    schema read (their schema file, else their first segment's footer) and row counts None: a reader of
    their segments that checks them itself (the fleet summary's DuckDB); a family whose rows the manifest
    does not record has its footers read all the same. An unfinished capture is checked
    whole either way: its lost counters come from every segment's snapshot."""
    p = Path(path)
    if not p.exists():
        raise CaptureFormatError(f"{shown_path(p)}: no such capture")
    if not p.is_dir():
        raise CaptureFormatError(f"{shown_path(p)}: not a tracekit capture (a capture is a NAME.tkcap directory)")
    try:
        manifest = _read_manifest(p)
        recording = manifest.get("status") == "recording"
        reads = family_reads(None) if recording else family_reads(families, footers, recorded_families(manifest))
        return Capture(p, manifest, _read_families(p, recording, reads))
    except OSError as error:  # a directory that cannot be listed
        raise CaptureFormatError(f"{shown_path(p)}: cannot read ({error.strerror or error})") from None
