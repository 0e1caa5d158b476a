"""Timed events of a capture as the HTML report's timeline lanes, batch by batch.

:func:`event_batches` yields rows of one lane each (``KVM_RUN``, ``ioctl``, ``fault``, ``guest walk``, ...)
with thread, start, duration (-1: an instant or a call whose return was not seen) and series name: the
large families read through :mod:`.events` as the Perfetto timeline reads them, the ioctl calls and lock
waits from the analysis' frames, only those overlapping the phase of a phase cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd

from tracekit.analysis.events import EventReader
from tracekit.analysis.locks import lock_names
from tracekit.analysis.phases import phase_mask
from tracekit.analysis.splits import SPLIT_EVENT

__all__ = ["EventBatch", "KINDS", "TIMED_GROUPS", "event_batches"]

#: Timeline lanes, top to bottom, and the colour of each.
KINDS = {"KVM_RUN": "#4c72b0", "ioctl": "#55a868", "KVM function": "#8172b2", "fault": "#dd8452",
         "guest walk": "#c44e52", "stage-2 walk": "#937860", "split": "#da8bc3", "mmu_lock wait": "#b00020",
         "lock wait": "#8c8c8c"}

#: The kinds whose spans are KVM time worth summing (a walk or an mmu event is an instant).
TIMED_GROUPS = ("KVM_RUN", "ioctl", "KVM function", "fault", "stage-2 walk", "split", "mmu_lock wait", "lock wait")

_FAULT_PATH = "kvm_mmu_spte_requested"  # x86: one per shadow / TDP page fault that installs an SPTE

#: The function-probe families -> their lane.
_CALL_KINDS = {"fault": "fault", "split": "split", "stage2_walk": "stage-2 walk", "func_call": "KVM function"}


@dataclass
class EventBatch:
    """Rows of one kind: ``series`` (object array or one string for all), ``tid``, ``ts_ns`` and
    ``duration_ns`` (int64; -1 for an instant). ``vcpu`` (lab ``fault`` rows) is the vCPU of each row."""

    kind: str
    series: Any
    tid: np.ndarray
    ts_ns: np.ndarray
    duration_ns: np.ndarray
    vcpu: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ts_ns)


def _ints(values: Any, missing: int = -1) -> np.ndarray:
    series = pd.Series(values)
    if series.dtype.kind in "iu":
        return series.to_numpy(np.int64)
    return series.astype("float64").fillna(missing).to_numpy(np.int64)


def _cut(batch: EventBatch, phases: pd.DataFrame, phase: str | None) -> EventBatch | None:
    if phase is not None and len(batch):
        keep = phase_mask(batch.ts_ns, phases, phase, np.where(batch.duration_ns > 0, batch.duration_ns, 0))
        if not keep.all():
            series = batch.series if isinstance(batch.series, str) else batch.series[keep]
            batch = EventBatch(batch.kind, series, batch.tid[keep], batch.ts_ns[keep], batch.duration_ns[keep],
                               None if batch.vcpu is None else batch.vcpu[keep])
    return batch if len(batch) else None


def _frame_batches(result: Any) -> Iterator[EventBatch]:
    """The analysis' ioctl calls and lock waits (already cut to the phase)."""
    ioctl = result.frames.get("ioctl")
    if ioctl is not None and len(ioctl):
        names = np.asarray(ioctl["cmd_name"], dtype=object)
        for run in (True, False):
            rows = (names == "KVM_RUN") == run
            if rows.any():
                yield EventBatch("KVM_RUN" if run else "ioctl", names[rows], _ints(ioctl["tid"])[rows],
                                 _ints(ioctl["ts_ns"])[rows], _ints(ioctl["duration_ns"])[rows])
    waits = result.frames.get("waits")
    if waits is not None and len(waits):
        mmu = result.verdicts.get("mmu_lock")
        names = lock_names(waits, mmu if mmu and mmu.get("lock_addr") is not None else None)
        for is_mmu in (True, False):
            rows = (names == "mmu_lock") == is_mmu
            if rows.any():
                yield EventBatch("mmu_lock wait" if is_mmu else "lock wait", names[rows], _ints(waits["tid"])[rows],
                                 _ints(waits["ts_ns"])[rows], _ints(waits["wait_ns"])[rows])


def _family_batches(cap: Any) -> Iterator[EventBatch]:
    """The large families, one batch of the needed columns at a time (:class:`.events.EventReader`)."""
    reader = EventReader(cap)
    for batch in reader.batches("walk"):
        yield EventBatch("guest walk", "walk", batch.tid, batch.ts_ns, np.full(batch.n, -1, np.int64))
    for batch in reader.batches("mmu", ["event"]):
        for kind, event in (("fault", _FAULT_PATH), ("split", SPLIT_EVENT)):
            rows = batch.where("event", [event])
            if rows.n:
                yield EventBatch(kind, event, rows.tid, rows.ts_ns, np.full(rows.n, -1, np.int64))
    for family, kind in _CALL_KINDS.items():
        for batch, names in reader.calls(family, ["vcpu_id"]):
            vcpu = _ints(batch.values("vcpu_id")) if reader.has(family, "vcpu_id") else None
            yield EventBatch(kind, np.asarray(names, dtype=object), batch.tid, batch.ts_ns, batch.durations(), vcpu)


def event_batches(cap: Any, result: Any, phases: pd.DataFrame) -> Iterator[EventBatch]:
    """Every timed event of the analysed cut (see the module docstring)."""
    yield from _frame_batches(result)
    phase = result.info.get("phase")
    for batch in _family_batches(cap):
        cut = _cut(batch, phases, phase)
        if cut is not None:
            yield cut
