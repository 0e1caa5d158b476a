"""Why KVM walked a guest page table: a shadow-MMU page fault, or its instruction emulator.

Contract
--------
A guest walk (``kvm_mmu_pagetable_walk``) is made by the shadow MMU's page-fault handler
(``FNAME(page_fault)``: the walk, then ``FNAME(fetch)`` with ``kvm_mmu_spte_requested`` and
``kvm_mmu_set_spte``) or by a guest-virtual translation outside it: KVM's instruction emulator (every
instruction fetch, ``pferr`` 0x10, and every memory operand of an emulated instruction) and the few other
``gva_to_gpa`` users. The tracepoints carry no cause, so a walk's cause is read from what its thread does
next: ``fault`` when one of :data:`FAULT_EVENTS` of the same thread follows it before the thread's next
walk and within :data:`FAULT_WINDOW_NS`; ``emulation`` when none does; ``unknown`` when the capture does
not record those events (no ``mmu`` family, or the probes were not attached). A walk that fails (walker
error) and is not followed by a fault path counts as ``emulation`` (KVM injects the page fault either way).

:func:`fault_path_events` reads the fault-path events of a capture (None when it has none to read);
:class:`FaultFollowers` takes the walks batch by batch (rows, ``tid``, ``ts_ns``) and names the walk rows
a fault path follows; :func:`cause_codes` gives every walk its code in :data:`CAUSES`;
:func:`cause_table` sums walk counts per ``cause`` and ``pferr`` with each one's share of all walks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["CAUSES", "FAULT_EVENTS", "FAULT_WINDOW_NS", "FaultFollowers", "fault_path_events", "cause_codes",
           "cause_table"]

#: Cause labels, by code.
CAUSES = ("fault", "emulation", "unknown")
#: ``mmu`` events of the shadow-MMU fault path after its walk (``FNAME(fetch)``).
FAULT_EVENTS = ("kvm_mmu_spte_requested", "kvm_mmu_set_spte")
#: A fault-path event further than this after the walk belongs to something else (a TDP fault, say).
FAULT_WINDOW_NS = 10_000_000


def fault_path_events(cap: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``(tid, ts_ns)`` of the capture's fault-path events, or None when it does not record them."""
    attached = set(((cap.manifest.get("probes") or {}).get("attached")) or ())
    if "mmu" not in cap.families():
        return None
    if attached and not attached & {f"kvmmmu:{name}" for name in FAULT_EVENTS}:
        return None
    tids, stamps = [], []
    wanted = pa.array(FAULT_EVENTS, pa.string())
    for batch in cap.iter_batches("mmu", ["ts_ns", "tid", "event"]):
        event = batch.column("event")
        if pa.types.is_dictionary(event.type):
            event = event.cast(pa.string())
        keep = pc.is_in(event, value_set=wanted).to_numpy(zero_copy_only=False)
        if keep.any():
            tids.append(batch.column("tid").to_numpy()[keep].astype(np.int64))
            stamps.append(batch.column("ts_ns").to_numpy()[keep].astype(np.int64))
    if not tids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(tids), np.concatenate(stamps)


class FaultFollowers:
    """The walks a fault path follows: each fault-path event belongs to the last walk of its thread
    before it (within :data:`FAULT_WINDOW_NS`); walks come in any order, batch by batch (:meth:`add`)."""

    def __init__(self, tid: np.ndarray, ts_ns: np.ndarray, window_ns: int = FAULT_WINDOW_NS):
        order = np.lexsort((ts_ns, tid))
        self._tid, self._ts = np.asarray(tid, np.int64)[order], np.asarray(ts_ns, np.int64)[order]
        self._tids, self._first = np.unique(self._tid, return_index=True)
        self._end = np.append(self._first[1:], len(self._tid))
        self._window = window_ns
        self._best_ts = np.full(len(self._ts), np.iinfo(np.int64).min, np.int64)
        self._best_row = np.full(len(self._ts), -1, np.int64)

    def add(self, start: int, tid: np.ndarray, ts_ns: np.ndarray) -> None:
        """Walks ``start``, ``start + 1``, ... of thread ``tid`` beginning at ``ts_ns``."""
        tid = np.asarray(tid, np.int64)
        ts_ns = np.asarray(ts_ns, np.int64)
        for t in np.intersect1d(np.unique(tid), self._tids).tolist():
            k = int(np.searchsorted(self._tids, t))
            lo, hi = int(self._first[k]), int(self._end[k])
            rows = np.flatnonzero(tid == t)
            stamps = ts_ns[rows]
            event = lo + np.searchsorted(self._ts[lo:hi], stamps, side="right")  # first fault event after the walk
            ok = event < hi
            event, stamps, rows = event[ok], stamps[ok], rows[ok]
            ok = self._ts[event] - stamps <= self._window
            event, stamps, rows = event[ok], stamps[ok], rows[ok]
            if not len(event):
                continue
            order = np.lexsort((stamps, event))  # per event, its latest walk last
            event, stamps, rows = event[order], stamps[order], rows[order]
            last = np.append(event[1:] != event[:-1], True)
            event, stamps, rows = event[last], stamps[last], rows[last]
            newer = stamps > self._best_ts[event]
            self._best_ts[event[newer]] = stamps[newer]
            self._best_row[event[newer]] = start + rows[newer]

    def rows(self) -> np.ndarray:
        """The walk rows (sorted, each once) a fault-path event follows."""
        return np.unique(self._best_row[self._best_row >= 0])


def cause_codes(n: int, followers: FaultFollowers | None) -> np.ndarray:
    """Per walk its code in :data:`CAUSES` (uint8): all ``unknown`` without ``followers``."""
    if followers is None:
        return np.full(n, CAUSES.index("unknown"), np.uint8)
    codes = np.full(n, CAUSES.index("emulation"), np.uint8)
    codes[followers.rows()] = CAUSES.index("fault")
    return codes


def cause_table(counts: pd.DataFrame, weights: str | None = None) -> pd.DataFrame:
    """Walks per (``cause``, ``pferr``) of a frame with those columns (``weights``: walks per row), with
    ``share`` of all walks; causes in :data:`CAUSES` order, then by walks."""
    if counts.empty:
        return pd.DataFrame({"cause": pd.Series(dtype=object), "pferr": pd.Series(dtype="int64"),
                             "walks": pd.Series(dtype="int64"), "share": pd.Series(dtype="float64")})
    walks = counts[weights].to_numpy(np.int64) if weights else np.ones(len(counts), np.int64)
    frame = pd.DataFrame({"cause": np.asarray(counts["cause"], dtype=object),
                          "pferr": counts["pferr"].to_numpy(np.int64), "walks": walks})
    table = frame.groupby(["cause", "pferr"], sort=False)["walks"].sum().reset_index()
    table["share"] = table["walks"] / max(int(table["walks"].sum()), 1)
    table["_order"] = table["cause"].map(CAUSES.index)
    table = table.sort_values(["_order", "walks"], ascending=[True, False], kind="stable")
    return table.drop(columns="_order").reset_index(drop=True)
