"""Export a capture as a Chrome JSON trace that the Perfetto UI (ui.perfetto.dev) opens.

Contract
--------
:func:`write_perfetto` writes ``{"traceEvents": [...], "displayTimeUnit": "ns", "metadata": {...}}``
(the Trace Event Format) to ``path``, streaming one event per line so memory stays bounded by the
largest family read:

- one track per thread, named ``vCPU N (tid)`` for vCPU threads (manifest ``target.threads``,
  workload ``vcpus``) and by ``comm`` or ``tid N`` otherwise (``M`` metadata events);
- ioctls (``ioctl`` family) as complete slices (``ph: "X"``, category ``ioctl``, name
  ``cmd_name``, args slot / flags / ret);
- split calls (``split``) as slices (category ``split``); x86 split events
  (``mmu`` ``kvm_mmu_split_huge_page``) as instants (``ph: "i"``);
- lock waits (``lock``) as slices named ``wait <lock_addr hex>`` (category ``lock``);
- workload phases as slices on a ``phases`` track (tid 0 of the target process);
- counters (``ph: "C"``, argument ``rate``) per busy 10 ms bin and process, back to 0 after each run
  of busy bins: ``guest walks/s`` (the x86 fault rate: one guest walk per shadow-MMU fault) and
  ``stage-2 faults/s`` (function-probe ``fault`` family, arm64).

Timestamps are CLOCK_MONOTONIC microseconds (float, ns precision). Families that are absent are
skipped. Raises CaptureFormatError when ``path`` cannot be written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, TextIO

import numpy as np
import pandas as pd

from tracekit.analysis.common import load, vcpu_map
from tracekit.analysis.phases import workload_phases
from tracekit.analysis.splits import SPLIT_EVENT
from tracekit.errors import CaptureFormatError

__all__ = ["write_perfetto", "trace_events", "COUNTER_BIN_NS"]

COUNTER_BIN_NS = 10_000_000
_PHASE_TID = 0


def _us(ns: Any) -> float:
    return round(int(ns) / 1000.0, 3)


def _thread_names(cap: Any) -> dict[int, str]:
    manifest = cap.manifest
    names = {}
    for thread in (manifest.get("target") or {}).get("threads") or []:
        if isinstance(thread.get("tid"), int) and thread.get("comm"):
            names[thread["tid"]] = str(thread["comm"])
    for tid, vcpu in vcpu_map(manifest).items():
        names[tid] = f"vCPU {vcpu} ({tid})"
    return names


def trace_events(cap: Any) -> Iterator[dict]:
    """The trace events of ``cap`` in the order they are written."""
    families = set(cap.families())
    names = _thread_names(cap)
    seen: dict[tuple[int, int], None] = {}

    def threads(pids: np.ndarray, tids: np.ndarray) -> Iterator[dict]:
        for pid, tid in set(zip(pids.tolist(), tids.tolist())):
            if (pid, tid) not in seen:
                seen[(pid, tid)] = None
                yield {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                       "args": {"name": names.get(tid, f"tid {tid}")}}
                if tid in names and names[tid].startswith("vCPU"):
                    yield {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                           "args": {"sort_index": int(names[tid].split()[1])}}

    target_pids = (cap.manifest.get("target") or {}).get("pids") or []
    main_pid = int(target_pids[0]) if target_pids else 0
    phases = workload_phases(cap.manifest)
    if len(phases):
        yield {"ph": "M", "name": "thread_name", "pid": main_pid, "tid": _PHASE_TID, "args": {"name": "phases"}}
        for label, start, dur in zip(phases["phase"], phases["start_ns"], phases["duration_ns"]):
            yield {"ph": "X", "cat": "phase", "name": label, "pid": main_pid, "tid": _PHASE_TID,
                   "ts": _us(start), "dur": _us(dur)}
    if "ioctl" in families:
        io = load(cap, "ioctl", ["ts_ns", "pid", "tid", "duration_ns", "cmd_name"],
                  optional_columns=["slot", "flags", "ret"])
        yield from threads(io["pid"].to_numpy(), io["tid"].to_numpy())
        for row in io.itertuples(index=False):
            args = {k: int(getattr(row, k)) for k in ("slot", "flags", "ret")
                    if getattr(row, k) is not None and not _isnan(getattr(row, k))}
            yield {"ph": "X", "cat": "ioctl", "name": row.cmd_name or "ioctl", "pid": int(row.pid),
                   "tid": int(row.tid), "ts": _us(row.ts_ns), "dur": _dur(row.duration_ns), "args": args}
    if "split" in families:
        sp = load(cap, "split", ["ts_ns", "pid", "tid", "duration_ns"], optional_columns=["level", "ret"])
        yield from threads(sp["pid"].to_numpy(), sp["tid"].to_numpy())
        for ts, pid, tid, dur, level in zip(sp["ts_ns"], sp["pid"], sp["tid"], sp["duration_ns"], sp["level"]):
            yield {"ph": "X", "cat": "split", "name": "split" if _isnan(level) else f"split L{int(level)}",
                   "pid": int(pid), "tid": int(tid), "ts": _us(ts), "dur": _dur(dur)}
    if "mmu" in families:
        mmu = load(cap, "mmu", ["ts_ns", "pid", "tid", "event"], optional_columns=["level"])
        mmu = mmu[mmu["event"] == SPLIT_EVENT]
        yield from threads(mmu["pid"].to_numpy(), mmu["tid"].to_numpy())
        for ts, pid, tid, level in zip(mmu["ts_ns"], mmu["pid"], mmu["tid"], mmu["level"]):
            yield {"ph": "i", "s": "t", "cat": "split", "name": "split_huge_page" if _isnan(level)
                   else f"split_huge_page L{int(level)}", "pid": int(pid), "tid": int(tid), "ts": _us(ts)}
    if "lock" in families:
        lk = load(cap, "lock", ["ts_ns", "pid", "tid", "lock_addr", "wait_ns"])
        yield from threads(lk["pid"].to_numpy(), lk["tid"].to_numpy())
        for ts, pid, tid, addr, wait in zip(lk["ts_ns"], lk["pid"], lk["tid"], lk["lock_addr"], lk["wait_ns"]):
            yield {"ph": "X", "cat": "lock", "name": "wait ?" if _isnan(addr) else f"wait {int(addr):#x}",
                   "pid": int(pid), "tid": int(tid), "ts": _us(ts), "dur": _dur(wait)}
    for family, name in (("walk", "guest walks/s"), ("fault", "stage-2 faults/s")):
        if family in families:
            yield from _rate_counter(load(cap, family, ["ts_ns", "pid"]), name)


def _rate_counter(frame: Any, name: str) -> Iterator[dict]:
    """Counter events: events per second in each busy COUNTER_BIN_NS bin, per process, and a zero after
    each run of busy bins (so memory follows the events, not the time they span)."""
    if not len(frame):
        return
    bins = frame["ts_ns"].to_numpy(np.int64) // COUNTER_BIN_NS
    pids = frame["pid"].to_numpy(np.int64)
    for pid in np.unique(pids):
        busy, counts = np.unique(bins[pids == pid], return_counts=True)
        busy_bins = busy.tolist()
        for i, (b, count) in enumerate(zip(busy_bins, counts.tolist())):
            yield {"ph": "C", "name": name, "pid": int(pid), "ts": _us(b * COUNTER_BIN_NS),
                   "args": {"rate": count * (10**9 // COUNTER_BIN_NS)}}
            if i + 1 == len(busy_bins) or busy_bins[i + 1] != b + 1:
                yield {"ph": "C", "name": name, "pid": int(pid), "ts": _us((b + 1) * COUNTER_BIN_NS),
                       "args": {"rate": 0}}


def _dur(ns: Any) -> float:
    """A slice duration in µs from ``ns`` (0 when null or negative)."""
    return 0.0 if _isnan(ns) else _us(max(int(ns), 0))


def _isnan(value: Any) -> bool:
    """True for a missing value: None, NaN or pandas' NA (a nullable uint64 column's null)."""
    try:
        return value is None or value is pd.NA or bool(np.isnan(value))
    except TypeError:
        return False


def _write(out: TextIO, cap: Any) -> int:
    out.write('{"displayTimeUnit": "ns", "metadata": ')
    out.write(json.dumps({"source": "tracekit", "capture": str(cap.path),
                          "kernel_release": cap.manifest.get("kernel_release"), "clock": "CLOCK_MONOTONIC"}))
    out.write(', "traceEvents": [\n')
    n = 0
    for event in trace_events(cap):
        out.write((",\n" if n else "") + json.dumps(event, separators=(",", ":")))
        n += 1
    out.write("\n]}\n")
    return n


def write_perfetto(cap: Any, path: str | os.PathLike) -> int:
    """Write the trace of ``cap`` to ``path``; return the number of trace events."""
    target = Path(path)
    if target.is_symlink():
        raise CaptureFormatError(f"refusing to write through a symlink: {target}")
    try:
        with open(target, "w", encoding="utf-8") as out:
            return _write(out, cap)
    except OSError as error:
        raise CaptureFormatError(f"cannot write {target}: {error.strerror or error}") from error
