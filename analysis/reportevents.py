"""Timed events of a capture, batch by batch, as the HTML report draws them.

:func:`event_batches` yields :class:`EventBatch` es of one activity (a timeline lane) with thread, start,
duration and series, reading only the needed columns; :func:`vcpu_threads` maps threads to vCPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd

from tracekit.analysis.common import rows_where, vcpu_map
from tracekit.analysis.locks import lock_names
from tracekit.analysis.phases import phase_mask
from tracekit.analysis.splits import SPLIT_EVENT

__all__ = ["EventBatch", "KINDS", "TIMED_GROUPS", "event_batches", "vcpu_threads"]

#: Timeline lanes, top to bottom, and the colour of each.
KINDS = {"KVM_RUN": "#4c72b0", "ioctl": "#55a868", "KVM function": "#8172b2", "fault": "#dd8452",
         "guest walk": "#c44e52", "stage-2 walk": "#937860", "split": "#da8bc3", "mmu_lock wait": "#b00020",
         "lock wait": "#8c8c8c"}

#: The kinds whose spans are KVM time worth summing (a walk or an mmu event is an instant).
TIMED_GROUPS = ("KVM_RUN", "ioctl", "KVM function", "fault", "stage-2 walk", "split", "mmu_lock wait", "lock wait")

_FAULT_PATH = "kvm_mmu_spte_requested"  # x86: one per shadow / TDP page fault that installs an SPTE

# family -> (kind, the column naming the series, whether it has durations)
_FUNCTION_FAMILIES = {"fault": ("fault", "probe"), "split": ("split", "probe"),
                      "stage2_walk": ("stage-2 walk", "initiator"), "func_call": ("KVM function", "name")}


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
    """The large families, one batch of the needed columns at a time."""
    families = set(cap.families())
    if "walk" in families:
        for batch in cap.iter_batches("walk", ["ts_ns", "tid"]):
            ts = batch.column("ts_ns").to_numpy()
            yield EventBatch("guest walk", "walk", _ints(batch.column("tid").to_numpy()), ts.astype(np.int64),
                             np.full(len(ts), -1, np.int64))
    if "mmu" in families:
        for batch in cap.iter_batches("mmu", ["ts_ns", "tid", "event"]):
            for kind, event in (("fault", _FAULT_PATH), ("split", SPLIT_EVENT)):
                rows = rows_where(batch, "event", [event])  # the few dictionary entries compared, not each row
                if rows.num_rows:
                    yield EventBatch(kind, event, _ints(rows.column("tid").to_numpy()),
                                     rows.column("ts_ns").to_numpy().astype(np.int64),
                                     np.full(rows.num_rows, -1, np.int64))
    for family, (kind, series) in _FUNCTION_FAMILIES.items():
        if family not in families:
            continue
        names = cap.schema(family).names
        columns = ["ts_ns", "tid", series] + [c for c in ("duration_ns", "vcpu_id") if c in names]
        for batch in cap.iter_batches(family, columns):
            n = batch.num_rows
            duration = (_ints(batch.column("duration_ns").to_pandas()) if "duration_ns" in names
                        else np.full(n, -1, np.int64))
            vcpu = _ints(batch.column("vcpu_id").to_pandas()) if "vcpu_id" in names else None
            yield EventBatch(kind, np.asarray(batch.column(series).to_pandas(), dtype=object),
                             _ints(batch.column("tid").to_numpy()), batch.column("ts_ns").to_numpy().astype(np.int64),
                             duration, vcpu)


def event_batches(cap: Any, result: Any, phases: pd.DataFrame) -> Iterator[EventBatch]:
    """Every timed event of the analysed cut (see the module docstring)."""
    yield from _frame_batches(result)
    phase = result.info.get("phase")
    for batch in _family_batches(cap):
        cut = _cut(batch, phases, phase)
        if cut is not None:
            yield cut


def vcpu_threads(cap: Any) -> dict[int, int]:
    """``{tid: vcpu}``: the manifest's vCPU threads, then the lab ``fault`` family's ``vcpu_id`` per thread."""
    mapping = dict(vcpu_map(cap.manifest))
    if "fault" in cap.families() and "vcpu_id" in cap.schema("fault").names:
        for batch in cap.iter_batches("fault", ["tid", "vcpu_id"]):
            frame = batch.to_pandas().dropna()
            frame = frame[frame["vcpu_id"] >= 0].drop_duplicates()
            for tid, vcpu in zip(frame["tid"].tolist(), frame["vcpu_id"].tolist()):
                mapping.setdefault(int(tid), int(vcpu))
    return mapping
