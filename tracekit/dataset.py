"""Many captures as one dataset: DuckDB views, and the same tables for any other engine.

:func:`connect` gives an in-memory DuckDB connection with a view per event family over every capture's
segments plus ``captures``, ``threads``, ``phases`` and ``segments``; :class:`Dataset` and the
``*_table`` functions give the same as pyarrow tables for other engines (Spark). Tables, ids and the
refusal rules: docs/sql.md.
"""

from __future__ import annotations

import glob as globmod
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Collection, Iterable, Sequence, Union

import pyarrow as pa

from tracekit.analysis.locks import known_mmu_locks
from tracekit.analysis.phases import capture_phases
from tracekit.capture.columns import SCHEMAS
from tracekit.capture.format import MANIFEST_NAME, shown_path
from tracekit.capture.reader import Capture, open_capture
from tracekit.capture.remote import find_url_captures, is_url, open_url_capture
from tracekit.copyout import connection
from tracekit.errors import AnalysisError, CaptureFormatError, TracekitError

__all__ = [
    "CAPTURES_SCHEMA", "THREADS_SCHEMA", "PHASES_SCHEMA", "SEGMENTS_SCHEMA", "Dataset", "find_captures",
    "capture_facts", "threads_table", "phases_table", "segments_table", "family_files", "connect",
    "plain_schema",
]

#: The ``captures`` table, one row per capture.
CAPTURES_SCHEMA = pa.schema([
    pa.field("capture", pa.string(), nullable=False),  # the capture id
    pa.field("name", pa.string()),  # the directory's name without .tkcap
    pa.field("path", pa.string()),
    pa.field("format_version", pa.int32()),
    pa.field("tracekit_version", pa.string()),
    pa.field("status", pa.string()),  # complete, aborted, incomplete, recording
    pa.field("host", pa.string()),
    pa.field("kernel_release", pa.string()),
    pa.field("arch", pa.string()),
    pa.field("page_size", pa.int64()),
    pa.field("backend", pa.string()),
    pa.field("source_kind", pa.string()),  # live, lab, model-generated, selftest
    pa.field("source_description", pa.string()),
    pa.field("scenario", pa.string()),  # the lab scenario, else the built-in workload's name
    pa.field("workload", pa.string()),  # what ran: the scenario's description, workload options, command
    pa.field("vcpus", pa.int32()),
    pa.field("memory_bytes", pa.int64()),  # guest memory the workload touched, where known
    pa.field("kvm_params", pa.map_(pa.string(), pa.string())),  # "module.param" -> value
    pa.field("phases", pa.list_(pa.string())),  # phase labels in time order
    pa.field("mmu_lock_addrs", pa.list_(pa.uint64())),  # kvm->mmu_lock addresses the manifest records
    pa.field("lost_events", pa.int64()),
    pa.field("start_time", pa.timestamp("us", tz="UTC")),
    pa.field("stop_time", pa.timestamp("us", tz="UTC")),
    pa.field("duration_s", pa.float64()),
    pa.field("window_start_ns", pa.int64()),  # CLOCK_MONOTONIC recording window, where recorded
    pa.field("window_stop_ns", pa.int64()),
    pa.field("family_rows", pa.map_(pa.string(), pa.int64())),
])  # fmt: skip

#: The ``threads`` table: every thread a capture knows, with its vCPU index and VM (the ``threads`` family's
#: columns, else the manifest's, whose first and last seen are null).
THREADS_SCHEMA = pa.schema([
    pa.field("capture", pa.string(), nullable=False), pa.field("pid", pa.int32()), pa.field("tid", pa.int32()),
    pa.field("comm", pa.string()), pa.field("vcpu", pa.int32()), pa.field("vm", pa.string()),
    pa.field("vcpu_from", pa.string()), pa.field("first_seen_ns", pa.int64()), pa.field("last_seen_ns", pa.int64()),
    pa.field("pre_exec", pa.bool_()),
])  # fmt: skip

#: The ``phases`` table (analysis/phases.py's phase table, plus lab steps, per capture).
PHASES_SCHEMA = pa.schema([
    pa.field("capture", pa.string(), nullable=False), pa.field("phase", pa.string()), pa.field("name", pa.string()),
    pa.field("iteration", pa.int64()), pa.field("start_ns", pa.int64()), pa.field("end_ns", pa.int64()),
    pa.field("duration_ns", pa.int64()), pa.field("source", pa.string()),
])  # fmt: skip

#: The ``segments`` table: every Parquet file of every family (schema files of empty families included).
SEGMENTS_SCHEMA = pa.schema([
    pa.field("capture", pa.string(), nullable=False), pa.field("family", pa.string()), pa.field("file", pa.string()),
    pa.field("rows", pa.int64()),
])  # fmt: skip


# -- finding and opening captures -------------------------------------------------------------------

_GLOB_CHARS = set("*?[")


def _captures_below(directory: Path) -> list[Path]:
    """Capture directories at or below ``directory`` (a capture's own sub-directories are not searched)."""
    if (directory / MANIFEST_NAME).exists():
        return [directory]
    found = []
    for root, dirs, files in os.walk(directory):
        if MANIFEST_NAME in files:
            found.append(Path(root))
            dirs.clear()
        else:
            dirs.sort()
    return sorted(found)


def find_captures(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The capture directories named by ``paths``: a capture, a directory searched for captures, or a
    glob pattern (``**`` allowed), or the same as a file system URL (no pattern; :mod:`.capture.remote`).
    A path that names nothing is returned as is (opening it says why); a pattern matching nothing raises
    CaptureFormatError. Duplicates are kept once, in order."""
    out: list[Path] = []
    for raw in paths:
        text = os.fspath(raw)
        if is_url(text):
            try:
                out.extend(find_url_captures(text))
            except CaptureFormatError as error:  # unsupported, out of reach: opening it says why, no second try
                out.append(_Unlisted(text, error))
            continue
        if any(c in _GLOB_CHARS for c in text) and not os.path.exists(text):
            matches = sorted(globmod.glob(text, recursive=True))
            if not matches:
                raise CaptureFormatError(f"{shown_path(text)}: no capture matches this pattern")
            candidates = [Path(m) for m in matches if os.path.isdir(m)]
        else:
            candidates = [Path(text)]
        for candidate in candidates:
            if candidate.is_dir() and not candidate.is_symlink():
                below = _captures_below(candidate)
                out.extend(below if below else [candidate])  # an empty directory: opening it says so
            else:
                out.append(candidate)
    seen: set[str] = set()
    unique = []
    for path in out:
        key = path if is_url(path) else os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


class _Unlisted(str):
    """A URL whose captures could not be listed, and why."""

    def __new__(cls, url: str, error: CaptureFormatError) -> "_Unlisted":
        made = super().__new__(cls, url)
        made.error = error
        return made


@dataclass
class Dataset:
    """Opened captures (in the order found) and the lines saying which were refused and why."""

    captures: list[Capture]
    problems: list[str] = field(default_factory=list)
    _phases: dict[str, list[dict]] = field(default_factory=dict, repr=False)

    def phase_rows(self, cap: Capture) -> list[dict]:
        """``cap``'s phases (see :func:`phases_table`), worked out once."""
        if cap.capture_id not in self._phases:
            self._phases[cap.capture_id] = _phase_rows(cap)
        return self._phases[cap.capture_id]

    @classmethod
    def open(cls, paths: Iterable[str | os.PathLike] | str | os.PathLike, *, skip_bad: bool = False,
             verify_pages: bool = False, families: Collection[str] | None = None, footers: bool = True) -> "Dataset":
        """Open every capture under ``paths`` (see :func:`find_captures`). A capture that cannot be opened
        raises CaptureFormatError, or with ``skip_bad`` is listed in ``problems``; no capture at all raises.
        Opening checks manifests and segment footers; ``verify_pages`` also reads every data page against
        its CRC (a whole read: SQL engines do not check page checksums themselves). With ``families``
        only those families' footers are read, without ``footers`` none (only the families' schemas:
        :func:`tracekit.capture.reader.open_capture`)."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        captures: list[Capture] = []
        problems: list[str] = []
        by_id: dict[str, Capture] = {}
        for path in find_captures(paths):
            try:
                if isinstance(path, _Unlisted):
                    raise path.error
                _check_utf8(path)
                opener = open_url_capture if is_url(path) else open_capture
                cap = opener(path, families, footers=footers)
                if verify_pages:
                    _verify_pages(cap)
            except CaptureFormatError as error:
                if not skip_bad:
                    raise
                problems.append(str(error))
                continue
            first = by_id.get(cap.capture_id)
            if first is not None:
                message = (f"{shown_path(path)}: the same capture as {shown_path(first.path)} "
                           f"(capture id {cap.capture_id}); left out")
                if not skip_bad:
                    raise CaptureFormatError(message)
                problems.append(message)
                continue
            by_id[cap.capture_id] = cap
            captures.append(cap)
        if not captures:
            raise CaptureFormatError(problems[-1] if len(problems) == 1 else
                                     "no readable capture" + (f" ({len(problems)} refused)" if problems else ""))
        return cls(captures, problems)


def _check_utf8(path: Path) -> None:
    """Refuse a capture path that is not UTF-8 text: SQL engines take file names as UTF-8 strings."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        raise CaptureFormatError(f"{shown_path(path)}: a path that is not UTF-8 text; rename it to query it") from None


def _verify_pages(cap: Capture) -> None:
    """Read every page of every family of ``cap`` (batch by batch), checking page CRCs where written."""
    for family in cap.families():
        for _ in cap.iter_batches(family):
            pass


Source = Union[Dataset, str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def _dataset(source: Source) -> Dataset:
    return source if isinstance(source, Dataset) else Dataset.open(source)


# -- per-capture facts ------------------------------------------------------------------------------

def _flat_params(params: Any) -> dict[str, str]:
    """``kvm_params`` as ``{"module.param": value}`` (recorders write ``{module: {param: value}}``,
    labs ``{"module.param": value}``)."""
    out: dict[str, str] = {}
    for key, value in (params or {}).items() if isinstance(params, dict) else ():
        if isinstance(value, dict):
            for param, inner in value.items():
                out[f"{key}.{param}"] = None if inner is None else str(inner)
        else:
            out[str(key)] = None if value is None else str(value)
    return dict(sorted(out.items()))


def _timestamp(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _scenario(workload: dict) -> dict:
    scenario = workload.get("scenario")
    return scenario if isinstance(scenario, dict) else {}


def _workload_text(manifest: dict, workload: dict) -> str | None:
    """What ran: a lab scenario's description, the built-in workload and its options, else the command."""
    scenario = _scenario(workload)
    if isinstance(scenario.get("description"), str):
        return scenario["description"]
    if isinstance(workload.get("workload"), str):
        options = workload.get("options")
        return workload["workload"] + (" " + json.dumps(options, sort_keys=True) if isinstance(options, dict) else "")
    command = manifest.get("command_line")
    return " ".join(command) if isinstance(command, list) else command if isinstance(command, str) else None


def _vcpus(manifest: dict, workload: dict) -> int | None:
    """The VM's vCPU count: the scenario's, the workload's options, its vCPU list, the VMs' fds."""
    for value in (_scenario(workload).get("vcpus"), (workload.get("options") or {}).get("vcpus")):
        if _int(value) is not None:
            return value
    if isinstance(workload.get("vcpus"), list) and workload["vcpus"]:
        return len(workload["vcpus"])
    vms = (manifest.get("target") or {}).get("vms") or []
    counts = [vm.get("vcpus") for vm in vms if isinstance(vm, dict) and _int(vm.get("vcpus")) is not None]
    return sum(counts) if counts else None


def _memory_bytes(manifest: dict, workload: dict) -> int | None:
    mib = _scenario(workload).get("memory_mib")
    if _int(mib) is not None:
        return mib << 20
    options = workload.get("options") or {}
    per_vcpu, vcpus = _int(options.get("bytes_per_vcpu")), _int(options.get("vcpus"))
    if per_vcpu is not None and vcpus is not None:
        return per_vcpu * vcpus
    vms = (manifest.get("target") or {}).get("vms") or []
    memory = [vm.get("memory") for vm in vms if isinstance(vm, dict) and _int(vm.get("memory")) is not None]
    return sum(memory) if memory else None


def _phase_rows(cap: Capture) -> list[dict]:
    """The capture's phases as the analyses see them (analysis/phases.py), else the lab's steps."""
    try:
        table = capture_phases(cap)
    except (AnalysisError, CaptureFormatError):
        table = None  # selftest output that does not fit the capture: no phases, as analyze says
    rows = [] if table is None else table.to_dict("records")
    if rows:
        return [{"phase": r["phase"], "name": r["name"], "iteration": int(r["iteration"]),
                 "start_ns": int(r["start_ns"]), "end_ns": int(r["end_ns"]),
                 "duration_ns": int(r["duration_ns"]), "source": r["source"]} for r in rows]
    steps = (cap.manifest.get("lab") or {}).get("steps") if isinstance(cap.manifest.get("lab"), dict) else None
    out = []
    for step in steps or []:
        begin, end = _int(step.get("begin_ns")) if isinstance(step, dict) else None, _int(step.get("end_ns"))
        if begin is None or end is None or not isinstance(step.get("op"), str):
            continue
        out.append({"phase": step["op"], "name": step["op"], "iteration": 0, "start_ns": begin, "end_ns": end,
                    "duration_ns": end - begin, "source": "lab-step"})
    return sorted(out, key=lambda r: r["start_ns"])


def _facts(cap: Capture, phases: list[dict] | None) -> dict:
    m = cap.manifest
    workload = m.get("workload") if isinstance(m.get("workload"), dict) else {}
    source = m.get("source") if isinstance(m.get("source"), dict) else {}
    window = m.get("window") if isinstance(m.get("window"), dict) else {}
    scenario = _scenario(workload).get("name")
    backend = m.get("backend")
    name = cap.path.name
    return {
        "capture": cap.capture_id,
        "name": name[: -len(".tkcap")] if name.endswith(".tkcap") else name,
        "path": str(cap.path),
        "format_version": _int(m.get("format_version")),
        "tracekit_version": m.get("tracekit_version"),
        "status": m.get("status"),
        "host": m.get("host"),
        "kernel_release": m.get("kernel_release"),
        "arch": m.get("arch"),
        "page_size": _int(m.get("page_size")),
        "backend": backend if isinstance(backend, str) else None,
        "source_kind": source.get("kind"),
        "source_description": source.get("description"),
        "scenario": scenario if isinstance(scenario, str) else workload.get("workload"),
        "workload": _workload_text(m, workload),
        "vcpus": _vcpus(m, workload),
        "memory_bytes": _memory_bytes(m, workload),
        "kvm_params": list(_flat_params(m.get("kvm_params")).items()),
        "phases": None if phases is None else [p["phase"] for p in phases],
        "mmu_lock_addrs": known_mmu_locks(m),
        "lost_events": cap.lost_total(),
        "start_time": _timestamp(m.get("start")),
        "stop_time": _timestamp(m.get("stop")),
        "duration_s": float(m["duration_s"]) if isinstance(m.get("duration_s"), (int, float)) else None,
        "window_start_ns": _int(window.get("start_ns")),
        "window_stop_ns": _int(window.get("stop_ns")),
        "family_rows": list(cap.family_rows().items()),
    }


def capture_facts(source: Source, *, phases: bool = True) -> pa.Table:
    """One row per capture (:data:`CAPTURES_SCHEMA`), from the manifests and segment footers; without
    ``phases`` the ``phases`` column is null (working phases out can read a capture's ioctls)."""
    ds = _dataset(source)
    rows = [_facts(cap, ds.phase_rows(cap) if phases else None) for cap in ds.captures]
    return pa.Table.from_pylist(rows, schema=CAPTURES_SCHEMA)


def phases_table(source: Source) -> pa.Table:
    """Every capture's phases (:data:`PHASES_SCHEMA`) on its CLOCK_MONOTONIC, in time order."""
    ds = _dataset(source)
    rows = [{"capture": cap.capture_id, **row} for cap in ds.captures for row in ds.phase_rows(cap)]
    return pa.Table.from_pylist(rows, schema=PHASES_SCHEMA)


def _thread_rows(cap: Capture) -> list[dict]:
    """The capture's threads: the recorder's (:meth:`Capture.threads`), then the workload's vCPU threads;
    a thread's process is its recorded ``pid``, else the only recorded process; its VM the process's
    guest or command name."""
    m = cap.manifest
    target = m.get("target") if isinstance(m.get("target"), dict) else {}
    pids = [p for p in target.get("pids") or [] if _int(p) is not None]
    vms = {vm["pid"]: vm.get("name") or vm.get("comm") for vm in target.get("vms") or []
           if isinstance(vm, dict) and _int(vm.get("pid")) is not None}
    only_pid = pids[0] if len(pids) == 1 else None
    workload = m.get("workload") if isinstance(m.get("workload"), dict) else {}
    threads = {thread["tid"]: thread for thread in cap.threads()}
    for vcpu in workload.get("vcpus") or []:
        if isinstance(vcpu, dict) and _int(vcpu.get("tid")) is not None and _int(vcpu.get("index")) is not None:
            known = threads.setdefault(vcpu["tid"], {"pid": _int(workload.get("pid")), "tid": vcpu["tid"],
                                                     "comm": vcpu.get("thread_name"), "vcpu": None})
            if known["vcpu"] is None:
                known["vcpu"] = vcpu["index"]
    rows = []
    for tid in sorted(threads):
        row = threads[tid]
        pid = row["pid"] if row["pid"] is not None else only_pid
        vm = vms.get(pid) if pid is not None else None
        if vm is None and pid is not None and pid == only_pid:
            vm = target.get("name") or target.get("comm")
        rows.append({"capture": cap.capture_id, "pid": pid, "tid": tid,
                     "comm": row["comm"] if isinstance(row["comm"], str) else None, "vcpu": row["vcpu"], "vm": vm,
                     **{key: row.get(key) for key in ("vcpu_from", "first_seen_ns", "last_seen_ns", "pre_exec")}})
    return rows


def threads_table(source: Source) -> pa.Table:
    """Every capture's known threads (:data:`THREADS_SCHEMA`): pid, tid, comm, vCPU index (null for
    threads that are not vCPUs), VM name, and where the family gives them first and last seen."""
    ds = _dataset(source)
    return pa.Table.from_pylist([row for cap in ds.captures for row in _thread_rows(cap)], schema=THREADS_SCHEMA)


def segments_table(source: Source) -> pa.Table:
    """Every Parquet file a family view reads (:data:`SEGMENTS_SCHEMA`): the segments, or for a family
    without segments its zero-row schema file."""
    ds = _dataset(source)
    rows = []
    for cap in ds.captures:
        for family in cap.families():
            segments = cap.segments(family)
            if segments:
                rows.extend({"capture": cap.capture_id, "family": family, "file": str(path), "rows": rows}
                            for path, rows in zip(segments, cap.segment_rows(family)))
            elif cap.schema_file(family) is not None:
                rows.append({"capture": cap.capture_id, "family": family, "file": str(cap.schema_file(family)),
                             "rows": 0})
    return pa.Table.from_pylist(rows, schema=SEGMENTS_SCHEMA)


def family_files(source: Source) -> dict[str, list[str]]:
    """``{family: [parquet files]}`` over every capture, each list non-empty (see :func:`segments_table`)."""
    out: dict[str, list[str]] = {}
    table = segments_table(source)
    for family, path in zip(table.column("family").to_pylist(), table.column("file").to_pylist()):
        out.setdefault(family, []).append(path)
    return dict(sorted(out.items()))


def plain_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with dictionary columns as their value type: what SQL engines see in the files."""
    return pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema])


# -- DuckDB ------------------------------------------------------------------------------------------

def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _create_table(con: Any, name: str, table: pa.Table) -> None:
    """``table`` copied into the DuckDB database as table ``name``."""
    con.register("_tracekit_arrow", table)
    try:
        con.execute(f"CREATE TABLE {_quote(name)} AS SELECT * FROM _tracekit_arrow")
    finally:
        con.unregister("_tracekit_arrow")


def _empty_family_view(con: Any, family: str, schema: pa.Schema) -> None:
    table = pa.schema([pa.field("capture", pa.string()), *plain_schema(schema)]).empty_table()
    _create_table(con, family, table)


def connect(source: Source, *, skip_bad: bool = False, database: str = ":memory:", threads: int | None = None) -> Any:
    """A DuckDB connection with the dataset's views (see the module docstring). ``skip_bad`` leaves
    refused captures out instead of raising CaptureFormatError; to learn which, open the
    :class:`Dataset` first (``Dataset.open(paths, skip_bad=True).problems``) and pass it."""
    ds = source if isinstance(source, Dataset) else Dataset.open(source, skip_bad=skip_bad)
    con = connection(database)
    if threads is not None:
        con.execute(f"SET threads = {int(threads)}")
    segments = segments_table(ds)
    tables = {"captures": capture_facts(ds), "threads": threads_table(ds), "phases": phases_table(ds),
              "segments": segments}
    for name, table in tables.items():
        _create_table(con, name, table)
    files = family_files(ds)
    files.pop("threads", None)  # the threads table above is that family, with the VMs and older captures'
    for family, paths in files.items():
        listed = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
        con.execute(
            f"CREATE VIEW {_quote(family)} AS SELECT s.capture, f.* EXCLUDE (filename) "
            f"FROM read_parquet([{listed}], filename = true, union_by_name = true) AS f "
            f"JOIN segments AS s ON s.file = f.filename"
        )
    for family, schema in SCHEMAS.items():
        if family not in files and family not in tables:
            _empty_family_view(con, family, schema)
    return con
