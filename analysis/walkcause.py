"""Why KVM walked a guest page table: a shadow-MMU page fault, or its instruction emulator.

The tracepoints carry no cause, so it is read from what the walk's thread does next: ``fault`` when a
fault-path event (:data:`FAULT_EVENTS`) of the same thread follows the walk before the thread's next walk
and within :data:`FAULT_WINDOW_NS`, ``emulation`` when none does, ``unknown`` when the capture does not
record those events. :func:`fault_followers` reads them batch by batch into a :class:`FaultFollowers`,
which takes the walks batch by batch and names the walks a fault path follows (16 bytes per fault);
:func:`cause_codes` gives each walk its code in :data:`CAUSES`, :func:`cause_table` the table.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from tracekit.analysis import spill
from tracekit.analysis.common import value_index
from tracekit.analysis.walkstream import prefetch

__all__ = ["CAUSES", "FAULT_EVENTS", "FAULT_WINDOW_NS", "FaultFollowers", "fault_followers", "cause_codes",
           "cause_table"]

#: Cause labels, by code.
CAUSES = ("fault", "emulation", "unknown")
#: ``mmu`` events of the shadow-MMU fault path after its walk (``FNAME(fetch)``).
FAULT_EVENTS = ("kvm_mmu_spte_requested", "kvm_mmu_set_spte")
#: A fault-path event further than this after the walk belongs to something else (a TDP fault, say).
FAULT_WINDOW_NS = 10_000_000
#: Rows per batch of the ``mmu`` family read for its fault-path events.
MMU_BATCH_ROWS = 1 << 20
_MARK_BLOCK = 1 << 20
_FEW_THREADS = 16
#: Walks per block whose first walk's next event is searched (the others' are taken from it, and checked).
_GUESS_BLOCK = 256


def fault_followers(cap: Any, window_ns: int = FAULT_WINDOW_NS, *, also: Sequence[str] = ()) -> FaultFollowers | None:
    """A :class:`FaultFollowers` of the capture's fault-path events, the ``mmu`` family read batch by batch
    (None when the capture does not record those events). The rows of the ``also`` events (``ts_ns``,
    ``tid``, ``event`` and ``level`` where the family has it) are kept in its ``also`` table on the way,
    so a caller that needs them too reads the family once."""
    attached = set(((cap.manifest.get("probes") or {}).get("attached")) or ())
    if "mmu" not in cap.families():
        return None
    if attached and not attached & {f"kvmmmu:{name}" for name in FAULT_EVENTS}:
        return None
    columns = ["ts_ns", "tid", "event"] + (["level"] if also and "level" in cap.schema("mmu").names else [])
    stamps, kept_also = _ThreadStamps(), []
    wanted = list(dict.fromkeys((*FAULT_EVENTS, *also)))  # each event's position; -1 (last below): others
    is_fault = np.array([name in FAULT_EVENTS for name in wanted] + [False])
    is_also = np.array([name in also for name in wanted] + [False])
    with prefetch(cap.iter_batches("mmu", columns, MMU_BATCH_ROWS)) as batches:  # the next decoded meanwhile
        for batch in batches:
            which = value_index(batch, "event", wanted)
            fault = is_fault[which]
            if fault.any():
                stamps.add(batch.column("tid").to_numpy(zero_copy_only=False)[fault],
                           batch.column("ts_ns").to_numpy(zero_copy_only=False)[fault])
            kept = is_also[which]
            if also and (kept.any() or not kept_also):  # (the first batch's kept even when empty: the schema)
                kept_also.append(pa.Table.from_batches([batch.take(pa.array(np.flatnonzero(kept)))]))
    followers = FaultFollowers.from_stamps(stamps, window_ns)
    if also:
        followers.also = pa.concat_tables(kept_also) if kept_also else cap.schema("mmu").empty_table().select(columns)
    return followers


def _after(times: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    """``np.searchsorted(times, stamps, side="right")`` (``times`` sorted): walks are mostly each followed
    by one event before the next walk, so each walk's position is taken as that of the first walk of its
    block of :data:`_GUESS_BLOCK` (searched) plus its place in the block, checked, and only the walks
    where that is wrong (a block with a walk out of order, or without an event) are searched."""
    n = len(stamps)
    anchors = times.searchsorted(stamps[::_GUESS_BLOCK], side="right")
    guess = np.arange(n)
    guess += np.repeat(anchors - np.arange(0, n, _GUESS_BLOCK), _GUESS_BLOCK)[:n]
    padded = np.empty(len(times) + 2, times.dtype)  # times[-1] and times[len] as -inf and +inf
    padded[0], padded[-1], padded[1:-1] = np.iinfo(times.dtype).min, np.iinfo(times.dtype).max, times
    np.minimum(guess, len(times), out=guess)
    wrong = padded[guess] > stamps  # times[guess - 1] <= stamp < times[guess] when right
    wrong |= stamps >= padded[guess + 1]
    if wrong.any():
        where = np.flatnonzero(wrong)
        guess[where] = times.searchsorted(stamps[where], side="right")
    return guess


def _by_thread(tid: np.ndarray, among: np.ndarray | None = None) -> list[tuple[int, np.ndarray]]:
    """Each thread of ``tid`` (those in ``among``, sorted, when given), ascending, with its rows in order:
    a comparison per thread while they are few (a batch's vCPUs), else one stable sort."""
    tid = np.asarray(tid, np.int64)
    found, rest = [], tid
    while len(rest):
        if len(found) == _FEW_THREADS:
            order = np.argsort(tid, kind="stable")
            starts = np.flatnonzero(np.r_[True, tid[order][1:] != tid[order][:-1], True])
            found = [(int(tid[order[lo]]), order[lo:hi]) for lo, hi in zip(starts[:-1].tolist(), starts[1:].tolist())]
            break
        thread = rest.min()
        found.append((int(thread), np.flatnonzero(tid == thread)))
        rest = rest[rest != thread]
    if among is None:
        return found
    wanted = set(among.tolist())
    return [(t, rows) for t, rows in found if t in wanted]


class _ThreadStamps:
    """Fault-path event times per thread, gathered batch by batch, each thread's in a
    :class:`.spill.Growing` vector (in a file once large); a time its thread already has just before is
    not kept again (``kvm_mmu_set_spte`` carries its fault's ``kvm_mmu_spte_requested`` time: one time per
    fault)."""

    def __init__(self) -> None:
        self.parts: dict[int, spill.Growing] = {}

    def add(self, tid: np.ndarray, ts_ns: np.ndarray) -> None:
        ts_ns = np.asarray(ts_ns, np.int64)
        for thread, rows in _by_thread(tid):
            stamps = ts_ns[rows]
            vector = self.parts.setdefault(thread, spill.Growing(np.int64))
            repeated = np.empty(len(stamps), bool)
            repeated[0] = bool(vector.size) and stamps[0] == vector.values()[-1]
            np.equal(stamps[1:], stamps[:-1], out=repeated[1:])
            if not repeated.all():
                vector.append(stamps[~repeated])
        spill.trim()

    def sorted(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """The threads (sorted) and each one's distinct times, sorted (:func:`.spill.sort_distinct`, in place
        in its vector: no second copy)."""
        tids = np.array(sorted(self.parts), np.int64)
        stamps = []
        for tid in tids.tolist():
            values = self.parts.pop(tid).values()
            stamps.append(values[:spill.sort_distinct(values)])
        return tids, stamps


class FaultFollowers:
    """The walks a fault path follows: each fault-path event belongs to the last walk of its thread
    before it (within :data:`FAULT_WINDOW_NS`); walks come in any order, batch by batch (:meth:`add`).
    Per distinct (thread, time) of the events it holds the time and its latest walk so far (row, and
    how long before the event it began): 16 bytes per fault, in files (:mod:`.spill`) once large."""

    def __init__(self, tid: np.ndarray, ts_ns: np.ndarray, window_ns: int = FAULT_WINDOW_NS):
        stamps = _ThreadStamps()
        if len(tid):
            stamps.add(tid, ts_ns)
        self._build(stamps, window_ns)

    @classmethod
    def from_stamps(cls, stamps: _ThreadStamps, window_ns: int = FAULT_WINDOW_NS) -> FaultFollowers:
        followers = cls.__new__(cls)
        followers._build(stamps, window_ns)
        return followers

    def _build(self, stamps: _ThreadStamps, window_ns: int) -> None:
        self.also: pa.Table | None = None
        self._tids, self._ts = stamps.sorted()
        self._window = window_ns
        near = np.int32 if window_ns < np.iinfo(np.int32).max else np.int64
        # per thread, per event: how near its latest walk so far began (window + 1 - the gap between their
        # times, 1 ... window) and that walk's row + 1 (widened past 2**31); 0 for none: no fill needed
        self._best_near = [spill.full(len(ts), 0, near) for ts in self._ts]
        self._best_row: list[np.ndarray] | None = [spill.full(len(ts), 0, np.int32) for ts in self._ts]

    def add(self, start: int, tid: np.ndarray, ts_ns: np.ndarray) -> None:
        """Walks ``start``, ``start + 1``, ... of thread ``tid`` beginning at ``ts_ns``."""
        ts_ns = np.asarray(ts_ns, np.int64)
        for t, rows in _by_thread(tid, self._tids):
            k = int(np.searchsorted(self._tids, t))
            times, best_near = self._ts[k], self._best_near[k]
            stamps = ts_ns[rows]
            # the first fault event after each walk, searched among those of the batch's span (and the one after)
            low, high = np.searchsorted(times, (stamps.min(), stamps.max()), side="right").tolist()
            event = _after(times[low:high + 1], stamps)  # (the event after the span: no walk's is further)
            span = times[low:high + 1] if high < len(times) else np.append(times[low:high], 0)
            gap = span[event] - stamps
            ok = gap <= self._window
            if high == len(times):
                ok &= event < high - low  # no fault event after the walk
            if not ok.all():
                event, stamps, gap, rows = event[ok], stamps[ok], gap[ok], rows[ok]
            if not len(event):
                continue
            if not bool(np.all(stamps[1:] >= stamps[:-1])):  # in time order (as mostly), so are the events
                order = np.argsort(stamps, kind="stable")  # per event, its latest walk last (events follow times)
                event, gap, rows = event[order], gap[order], rows[order]
            last = np.append(event[1:] != event[:-1], True)
            if not last.all():  # (mostly each walk is followed by its own event)
                event, gap, rows = event[last], gap[last], rows[last]
            event += low
            if start + len(tid) > np.iinfo(self._best_row[k].dtype).max:
                self._best_row[k] = spill.widened(self._best_row[k], np.int64)
            near = self._window + 1 - gap
            newer = near > best_near[event]
            if not newer.all():  # (mostly no walk of an earlier batch had these events)
                event, near, rows = event[newer], near[newer], rows[newer]
            best_near[event] = near
            rows += start + 1
            self._best_row[k][event] = rows
        spill.trim()

    def rows(self) -> np.ndarray:
        """The walk rows (sorted, each once) a fault-path event follows."""
        found = [rows[rows > 0] - 1 for rows in self._best_row]
        return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)

    def release(self) -> None:
        """Free the per-fault arrays (16 bytes per fault) once every walk was added and marked; the
        ``also`` rows stay."""
        self._ts, self._best_near = [], []
        self._best_row = None

    def mark(self, codes: np.ndarray, code: int) -> None:
        """Set ``codes`` of the walks a fault-path event follows to ``code`` (a block of events at a time:
        no temporary as large as the events)."""
        if self._best_row is None:
            raise RuntimeError("fault followers released before their walks were marked")
        for best_row in self._best_row:
            for start in range(0, len(best_row), _MARK_BLOCK):
                rows = best_row[start:start + _MARK_BLOCK]
                codes[rows[rows > 0] - 1] = code
                spill.trim()


def cause_codes(n: int, followers: FaultFollowers | None) -> np.ndarray:
    """Per walk its code in :data:`CAUSES` (uint8): all ``unknown`` without ``followers`` (then a read-only
    view of one value, no memory per walk)."""
    if followers is None:
        return np.broadcast_to(np.uint8(CAUSES.index("unknown")), (n,))
    codes = spill.full(n, CAUSES.index("emulation"), np.uint8)
    followers.mark(codes, CAUSES.index("fault"))
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
