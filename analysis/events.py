"""The timed event families of a capture, read a batch at a time: the one reader of the timeline and the report.

:class:`EventReader` reads a family's needed columns in bounded batches (rows before the clock's zero
left out and counted); :func:`vcpu_threads` says which thread runs which vCPU; :func:`phase_spans` gives
the phases to draw, a lab run's steps when the capture has no other phases.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tracekit.analysis.common import rows_where, vcpu_map
from tracekit.analysis.phases import lab_phases

__all__ = ["BATCH_ROWS", "CALL_LABELS", "Batch", "EventReader", "vcpu_threads", "phase_spans"]

#: Rows per batch read.
BATCH_ROWS = 1 << 16
#: The function-probe families, each with the column naming its calls (the probe, walker or function).
CALL_LABELS = {"fault": "probe", "split": "probe", "stage2_walk": "initiator", "func_call": "name"}


class Batch:
    """Rows of one family: ``ts_ns``, ``pid``, ``tid`` as int64 arrays (nulls 0), ``n``, and ``rows`` (their
    row numbers in the family, or a slice); the other columns through :meth:`values` and :meth:`durations`."""

    def __init__(self, batch: pa.RecordBatch | pa.Table, rows: np.ndarray | slice | None = None):
        self.batch, self.n, self.rows = batch, batch.num_rows, rows
        self.ts_ns, self.pid, self.tid = (pc.fill_null(batch.column(name), 0).to_numpy().astype(np.int64)
                                          if name in batch.schema.names else np.zeros(self.n, np.int64)
                                          for name in ("ts_ns", "pid", "tid"))

    def _column(self, name: str) -> pa.Array | None:
        if name not in self.batch.schema.names:
            return None
        column = self.batch.column(name)
        return column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column

    def values(self, name: str) -> list:
        """Column ``name`` as Python values (None for nulls, and for every row when the family lacks it)."""
        column = self._column(name)
        return [None] * self.n if column is None else column.to_pylist()

    def durations(self) -> np.ndarray:
        """``duration_ns`` as int64, -1 where the call's return was not seen (null, -1, or no such column)."""
        column = self._column("duration_ns")
        if column is None:
            return np.full(self.n, -1, np.int64)
        values = pc.fill_null(column, -1).to_numpy().astype(np.int64)
        return np.where(values < 0, -1, values)

    def where(self, name: str, wanted: Sequence[str]) -> Batch:
        """The rows whose ``name`` is one of ``wanted``."""
        return Batch(rows_where(self.batch, name, wanted))


class EventReader:
    """Reads families of ``cap`` a batch at a time; ``skipped`` counts the rows before the clock's zero."""

    def __init__(self, cap: Any):
        self.cap = cap
        self.families = set(cap.families())
        self.skipped = 0

    def has(self, family: str, column: str | None = None) -> bool:
        return family in self.families and (column is None or column in self.cap.schema(family).names)

    def batches(self, family: str, columns: Iterable[str] = (), rows: int = BATCH_ROWS) -> Iterator[Batch]:
        """The batches of ``family`` with ``ts_ns``, ``pid``, ``tid`` and those of ``columns`` it has
        (none when the capture lacks the family); empty batches are left out."""
        if family not in self.families:
            return
        names = self.cap.schema(family).names
        wanted = list(dict.fromkeys(c for c in ("ts_ns", "pid", "tid", *columns) if c in names))
        first = 0
        for batch in self.cap.iter_batches(family, wanted, rows):
            keep = pc.fill_null(pc.greater_equal(batch.column("ts_ns"), 0), True)
            numbers: np.ndarray | slice = slice(first, first + batch.num_rows)
            first += batch.num_rows
            if not pc.all(keep).as_py():
                numbers = np.flatnonzero(keep.to_numpy(zero_copy_only=False)) + numbers.start
                batch = batch.filter(keep)
                self.skipped += len(keep) - batch.num_rows
            if batch.num_rows:
                yield Batch(batch, numbers)

    def calls(self, family: str, columns: Iterable[str] = ()) -> Iterator[tuple[Batch, list]]:
        """Each batch of the function-probe ``family`` (:data:`CALL_LABELS`) with its calls' names."""
        label = CALL_LABELS[family]
        for batch in self.batches(family, [label, "duration_ns", *columns]):
            yield batch, [name or family for name in batch.values(label)]


def vcpu_threads(cap: Any) -> dict[int, int]:
    """``{tid: vcpu}``: the manifest's vCPU threads, else the ``vcpu_id`` of the thread's ``fault`` or
    ``mmu`` events (lab captures: ``kvm_handle_guest_abort``, ``npf_interception``; the lowest when a
    thread names several)."""
    seen: dict[int, int] = {}
    reader = EventReader(cap)
    for family in ("fault", "mmu"):
        if not reader.has(family, "vcpu_id"):
            continue
        for batch in cap.iter_batches(family, ["tid", "vcpu_id"]):
            pairs = pa.Table.from_batches([batch]).drop_null().group_by(["tid", "vcpu_id"]).aggregate([])
            for tid, vcpu in zip(pairs.column("tid").to_pylist(), pairs.column("vcpu_id").to_pylist()):
                if vcpu >= 0:
                    seen[tid] = min(vcpu, seen.get(tid, vcpu))
    return {**seen, **vcpu_map(cap.manifest)}


def phase_spans(phases: pd.DataFrame | None, manifest: dict) -> tuple[pd.DataFrame, str]:
    """The phases to draw and what they are: ``phases`` (``"phase"``) when there are some, else a lab run's
    steps (``"lab step"``, named as :func:`.phases.lab_phases` names them); those before 0 left out."""
    kind = "phase"
    if phases is None or phases.empty:
        phases, kind = lab_phases(manifest), "lab step"
    if len(phases):
        phases = phases[(phases["start_ns"] >= 0) & (phases["end_ns"] >= phases["start_ns"])]
        phases = phases.sort_values("start_ns", kind="stable").reset_index(drop=True)
    return phases, kind
