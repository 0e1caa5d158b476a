"""Host side of a lab run: unpack the guest's archive, decode its raw trace, write a capture.

:func:`unpack` extracts the archive the guest streamed over its virtio port (paths kept inside;
truncated or missing archives raise :class:`tracekit.errors.LabError`, and :func:`guest_reason` finds the
guest's own reason on its console). :func:`read_guest_trace` decodes the per-CPU raw pages with the
recorder's decoder; :func:`write_capture` writes the families with the recorder's own function-probe
decoder, the ``lock`` table from ``lock:contention_*`` and per-step counts in the manifest.
Timestamps are the guest's CLOCK_MONOTONIC, ns.
"""

from __future__ import annotations

import json
import re
import tarfile
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, TYPE_CHECKING

import numpy as np
import pyarrow as pa

from tracekit.capture import CaptureWriter
from tracekit.capture.columns import SCHEMAS
from tracekit.errors import LabError
from tracekit.funcprobes.funcprobe_families import SPLIT_TRACEPOINTS, family_for
from tracekit.host import parse_kallsyms
from tracekit.lab.scenarios import LOCK_STANDIN
from tracekit.recorder import ftrace_pages
from tracekit.recorder.tracepoint_families import lock_flags_name

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["unpack", "guest_reason", "ProbeEvent", "GuestTrace", "read_guest_trace", "step_counts", "hist_totals", "decode_functions", "write_capture"]


def unpack(archive: Path, dest: Path) -> Path:
    """Extract the guest's tar archive into ``dest`` (created); returns ``dest``."""
    if not archive.exists() or archive.stat().st_size == 0:
        raise LabError(f"the guest sent no result archive ({archive} is missing or empty)")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                target = (dest / member.name).resolve()
                if not (target == dest.resolve() or dest.resolve() in target.parents):
                    raise LabError(f"the guest archive holds a path outside its directory: {member.name}")
                if not (member.isfile() or member.isdir()):
                    continue
                tar.extract(member, dest)
    except tarfile.TarError as error:
        raise LabError(f"the guest's result archive is truncated or corrupt: {error}") from None
    if not (dest / "meta.json").exists():
        raise LabError("the guest's result archive has no meta.json")
    return dest


_GUEST_REASONS = (re.compile(r"tk-guest-error: (.*)"), re.compile(r"(Kernel panic - not syncing: .*)"),
                  re.compile(r"(Unable to mount root fs.*|No working init found.*)"))


def guest_reason(console: str, known: str = "") -> str:
    """``": guest says REASON"`` from the guest's console (its ``tk-guest-error:`` lines, else a kernel panic),
    leaving out what ``known`` (the error already shown) says; ``""`` when nothing is left."""
    for pattern in _GUEST_REASONS:
        found = [m.group(1).strip() for m in pattern.finditer(console)]
        found = [reason for reason in found if reason not in known]
        if found:
            return ": guest says " + " / ".join(dict.fromkeys(found))
    return ""


@dataclass
class ProbeEvent:
    """One event of a guest's raw trace: ``ts`` (ns, guest CLOCK_MONOTONIC), ``cpu``, ``tid``
    (``common_pid``), the tracefs event ``name`` (``stage2_split``, ``stage2_split_ret``, ...) and its
    integer fields; used for the step counts and lock waits only."""

    ts: int
    cpu: int
    tid: int
    name: str
    fields: dict


@dataclass
class DecodeStats:
    events: int = 0
    pages: int = 0
    unknown: int = 0
    missed: int = 0


@dataclass
class GuestTrace:
    meta: dict
    events: list[ProbeEvent]
    steps: list[dict]
    stats: DecodeStats
    #: ``system:event`` -> every decoded record of that event (all CPUs), as the recorder's tracefs backend
    #: hands them to the families
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


#: Events that begin a lock wait -> the flags of a wait whose event has none (the stand-in's: ``LCB_F_SPIN``).
_WAIT_BEGIN = {"contention_begin": 0, LOCK_STANDIN.name: 1}
_WAIT_END = {"contention_end", f"{LOCK_STANDIN.name}_ret"}
_COMMON = ("common_type", "common_flags", "common_preempt_count", "common_pid", "ts_ns", "cpu", "tgid")


def read_guest_trace(folder: Path) -> GuestTrace:
    """Decode the raw per-CPU pages of an unpacked guest result directory (with the recorder's decoder)."""
    meta = json.loads((folder / "meta.json").read_text())
    formats = {}
    for path in sorted((folder / "formats").glob("*__*")):
        fmt = ftrace_pages.parse_format(path.read_text(), path.name.split("__", 1)[0])
        formats[fmt.id] = fmt
    stats = DecodeStats()
    events: list[ProbeEvent] = []
    arrays: dict[str, list[np.ndarray]] = {}
    marks: list[tuple[int, int]] = []
    for path in sorted((folder / "raw").glob("cpu*.bin")):
        try:
            decoded = ftrace_pages.decode_pages(path.read_bytes(), formats, cpu=int(path.stem[3:]))
        except ftrace_pages.RawBufferError as error:
            raise LabError(f"the guest's raw trace {path.name} is corrupt: {error}") from None
        stats.pages += decoded.pages
        stats.unknown += decoded.unknown
        stats.missed += decoded.missed
        for event_id, rows in decoded.events.items():
            fmt = formats[event_id]
            stats.events += len(rows)
            if fmt.system == "ftrace":
                marks += [(int(ts), int(mark)) for ts, mark in zip(rows["ts_ns"], rows["id"])]
                continue
            arrays.setdefault(f"{fmt.system}:{fmt.name}", []).append(rows)
            names = [n for n in rows.dtype.names if n not in _COMMON and rows.dtype[n].kind in "iu"]
            columns = {n: rows[n].tolist() for n in names}
            for i, (ts, cpu, tid) in enumerate(zip(rows["ts_ns"].tolist(), rows["cpu"].tolist(), rows["common_pid"].tolist())):
                events.append(ProbeEvent(ts, cpu, tid, fmt.name, {n: columns[n][i] for n in names}))
    events.sort(key=lambda e: (e.ts, e.cpu))
    named = {step["index"]: step["op"] for step in meta.get("steps", [])}
    steps: dict[int, dict] = {}
    for ts, mark in sorted(marks):
        index, end = divmod(mark, 2)
        step = steps.setdefault(index, {"index": index, "op": named.get(index, "step")})
        step["end_ns" if end else "begin_ns"] = ts
    joined = {name: np.concatenate(parts) for name, parts in arrays.items()}
    return GuestTrace(meta, events, [steps[i] for i in sorted(steps)], stats, joined)


def step_counts(trace: GuestTrace) -> list[dict]:
    """Per scenario step: the number of entry events of each probe between its markers (inclusive).

    ``trace.events`` is time-ordered (as :func:`read_guest_trace` returns it), so each step reads only
    its own slice of the events instead of all of them."""
    times = [ev.ts for ev in trace.events]
    result = []
    for step in trace.steps:
        begin, end = step.get("begin_ns"), step.get("end_ns")
        counts: dict[str, int] = {}
        if begin is not None and end is not None:
            for ev in trace.events[bisect_left(times, begin) : bisect_right(times, end)]:
                if not ev.name.endswith("_ret"):
                    counts[ev.name] = counts.get(ev.name, 0) + 1
        result.append({**step, "counts": counts})
    return result


def hist_totals(folder: Path) -> dict[str, dict[str, int]]:
    """The in-kernel histogram of each hot probe: ``{probe: {"level=L visit=V": hits, ...}}``."""
    totals: dict[str, dict[str, int]] = {}
    for path in sorted((folder / "hist").glob("*.txt")) if (folder / "hist").is_dir() else []:
        rows: dict[str, int] = {}
        for line in path.read_text().splitlines():
            match = re.match(r"\{\s*(.*?)\s*\}\s*hitcount:\s*(\d+)", line)
            if match:
                key = " ".join(part.replace(" ", "") for part in match.group(1).split(","))
                rows[key] = int(match.group(2))
        totals[path.stem] = rows
    return totals


def lock_rows(events: list[ProbeEvent], pid_of, mmu_locks: set[int]) -> tuple[list[dict], dict[str, dict]]:
    """Pair ``lock:contention_begin``/``end`` per thread (or, before 5.19, the entries and returns of the
    qspinlock slow path, :data:`~tracekit.lab.scenarios.LOCK_STANDIN`: spin waits) into rows of the recorder's
    ``lock`` table, and summarise them per (``mmu_lock`` or ``other``, flags): ``{"mmu_lock SPIN|WRITE": {"waits",
    "wait_ns"}}``. A wait begun inside another (an interrupt on the same thread) closes first."""
    open_waits: dict[int, list[ProbeEvent]] = {}
    rows, summary = [], {}
    for ev in events:
        if ev.name in _WAIT_BEGIN:
            open_waits.setdefault(ev.tid, []).append(ev)
        elif ev.name in _WAIT_END and open_waits.get(ev.tid):
            begin = open_waits[ev.tid].pop()
            flags, addr = begin.fields.get("flags", _WAIT_BEGIN[begin.name]), begin.fields.get("lock_addr", 0)
            wait = ev.ts - begin.ts
            rows.append({"ts_ns": begin.ts, "cpu": begin.cpu, "pid": pid_of(begin.tid), "tid": begin.tid,
                         "lock_addr": addr, "flags": flags, "flags_name": lock_flags_name(flags), "wait_ns": wait,
                         "ret": ev.fields.get("ret", 0), "stack_id": -1})  # fmt: skip
            key = f"{'mmu_lock' if addr in mmu_locks else 'other'} {lock_flags_name(flags)}"
            entry = summary.setdefault(key, {"waits": 0, "wait_ns": 0})
            entry["waits"] += 1
            entry["wait_ns"] += wait
    return rows, summary


def decode_functions(arrays: dict[str, np.ndarray], probes: tuple, symbols, vmm_pid: int | None = None,
                     vmm_tids: Iterable[int] = ()) -> tuple[dict[str, pa.Table], dict[str, int]]:
    """The capture tables of the function probes ``probes`` (and the split tracepoints) in ``arrays``,
    decoded by the recorder's family (:meth:`~tracekit.funcprobes.funcprobe_families.FunctionProbeFamily.decode_recording`),
    with ``pid`` the VMM's for its threads (``vmm_tids``) and the thread id otherwise; and the counts of the
    run summary: entry events per probe and split tracepoint, ``unpaired`` returns and dropped ``host_walks``
    (each only when non-zero)."""
    family = family_for(probes)
    family.symbols = symbols
    tids = np.fromiter(vmm_tids, np.int64)
    mine = {}
    for name, rows in arrays.items():
        if name.split(":", 1)[1] in family.event_names():
            rows = rows.copy()
            if vmm_pid:
                rows["tgid"] = np.where(np.isin(rows["common_pid"], tids), vmm_pid, rows["common_pid"])
            mine[name] = rows
    tables = family.decode_recording(mine)
    entries = {p.name for p in (*probes, *SPLIT_TRACEPOINTS)}
    counts = {name.split(":", 1)[1]: len(rows) for name, rows in mine.items() if name.split(":", 1)[1] in entries}
    counts.update(unpaired=family.notes["unpaired_returns"], host_walks=family.notes["host_walks"])
    return tables, {name: n for name, n in sorted(counts.items()) if n}


def write_capture(output: Path, trace: GuestTrace, folder: Path, probes: tuple, manifest: dict,
                  mmu_lock_offset: int | None = None) -> dict:  # fmt: skip
    """Write the capture; returns the manifest additions (counts, steps) for the run summary."""

    symbols = parse_kallsyms((folder / "kallsyms.txt").read_text()) if (folder / "kallsyms.txt").exists() else None
    vmm_pid = trace.meta.get("vmm_pid")
    vmm_tids = set(trace.meta.get("vmm_tids", []))

    def pid_of(tid: int) -> int:  # the raw trace has thread ids only; the VMM's threads are known
        return vmm_pid if vmm_pid and tid in vmm_tids else tid

    tables, counts = decode_functions(trace.arrays, probes, symbols, vmm_pid, vmm_tids)
    steps = step_counts(trace)
    kvms = {ev.fields["kvm"] for ev in trace.events if ev.name == "enable_log_dirty" and "kvm" in ev.fields}
    mmu_locks = {k + mmu_lock_offset for k in kvms} if mmu_lock_offset is not None else set()
    locks, lock_summary = lock_rows(trace.events, pid_of, mmu_locks)
    summary = {
        "counts": counts,
        "steps": steps,
        "kernel_histograms": hist_totals(folder),
        "decode": {"events": trace.stats.events, "pages": trace.stats.pages, "unknown": trace.stats.unknown,
                   "missed": trace.stats.missed},  # fmt: skip
        "mmu_lock_addrs": sorted(mmu_locks),
        "lock_contention": lock_summary,
    }
    meta = trace.meta
    with CaptureWriter(output, manifest={**manifest, "lab": summary}) as writer:
        for family, table in tables.items():
            writer.declare(family, table.schema)
            if table.num_rows:
                writer.append(family, table)
        if locks:
            schema = SCHEMAS["lock"]
            writer.declare("lock", schema)
            writer.append("lock", pa.Table.from_pylist(locks, schema=pa.schema(
                [f.with_type(pa.string()) if pa.types.is_dictionary(f.type) else f for f in schema])))  # fmt: skip
        for cpu, count in (meta.get("lost") or {}).items():
            writer.add_lost("tracefs", int(cpu), int(count))
    return summary
