"""The walk analyses of a capture from narrow per-walk columns: both families streamed, no walk frame.

Contract
--------
:func:`walk_group_counts` rebuilds and cross-checks every guest walk of a capture like
:func:`tracekit.analysis.walkstream.stream_walks`, but keeps per walk only what the walk tables need,
in the narrowest integer type that holds it: the ``walk`` family is read one Parquet row group at a
time (``walk_id``, ``ts_ns``, ``tid``, ``addr``, ``pferr``) and turned at once into a vCPU code (the
thread's vCPU from the manifest, through a per-thread lookup), a phase code (:func:`.phases.label_phases`),
a dictionary code of the fault code and, with ``phase``, the phase-cut flag; only ``addr`` stays whole
(the model is looked up by it) and the walk ids only until the id map (:class:`.walkstream.RowMap`) is
built. The rebuild keeps depth (int16), leaf level (int8) and a dictionary code of the level path.

Returns None when the streamed rebuild cannot be used (walk ids repeat, a walk's elements lie too far
apart, or a walk column has nulls): the caller then rebuilds in memory. Else a :class:`WalkGroups`:
``counts``, one row per distinct (``vcpu`` int64, ``phase`` categorical, ``depth`` int16,
``leaf_level`` int8, ``level_path`` int64, ``pferr`` uint32) of the walks in the phase cut with their
number ``walks`` (int64) -- the columns of the walk frame the tables group by, so
``depth_distribution(counts, by, weights="walks")`` equals ``depth_distribution(walk_frame, by)``;
``check`` (a :class:`.crosscheck.CrossCheck`, None without ``model_walk``); ``orphans`` (elements
without their walk event); ``walks`` (walk events read). Raises what reading the capture raises and
UsageError for an unknown phase.

:class:`Codes` is the dictionary: values (int64) to codes given in order of first appearance, stored
per row in a uint8 array widened to uint16 / uint32 when more values come.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from tracekit.analysis import phases as phases_mod
from tracekit.analysis.common import vcpu_map
from tracekit.analysis.crosscheck import CrossCheck, ModelCache
from tracekit.analysis.walks import ELEMENT_COLUMNS, WALK_COLUMNS
from tracekit.analysis.walkstream import (BATCH_ROWS, RowMap, _element_batches, _Rebuilder, _State, cross_check,
                                          feed_all, prefetch)

__all__ = ["Codes", "WalkGroups", "walk_group_counts", "COUNT_COLUMNS"]

#: The group columns of :attr:`WalkGroups.counts` (then ``walks``).
COUNT_COLUMNS = ("vcpu", "phase", "depth", "leaf_level", "level_path", "pferr")
#: Group keys counted with one dense ``bincount`` up to this many possible combinations.
_DENSE_KEYS = 1 << 22
_CHUNK = 1 << 20


def _narrowest(count: int) -> type:
    """The narrowest unsigned integer type holding codes 0 .. ``count - 1``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if count <= int(np.iinfo(dtype).max) + 1:
            return dtype
    return np.uint64


class Codes:
    """Dictionary codes of int64 values, one per row of a column of ``n`` rows (see the module docstring).
    ``first`` values are given codes 0, 1, ... up front (rows not written keep code 0)."""

    def __init__(self, n: int, first: tuple[int, ...] = ()):
        self.values: list[int] = []
        self._index: dict[int, int] = {}
        for value in first:
            self._code(value)
        self.codes = np.zeros(n, _narrowest(max(len(self.values), 1)))

    def _code(self, value: int) -> int:
        code = self._index.get(value)
        if code is None:
            code = self._index[value] = len(self.values)
            self.values.append(value)
        return code

    def encode(self, values: np.ndarray) -> np.ndarray:
        """The codes of ``values`` (int64), new values added."""
        if len(values) == 0:
            return np.zeros(0, np.int64)
        codes, uniques = pd.factorize(values)
        table = np.fromiter((self._code(v) for v in uniques.tolist()), np.int64, len(uniques))
        return table[codes]

    def put(self, rows: Any, values: np.ndarray) -> None:
        """Store the codes of ``values`` at ``rows`` (an index array or slice)."""
        codes = self.encode(values)
        wanted = _narrowest(len(self.values))
        if np.dtype(wanted).itemsize > self.codes.dtype.itemsize:
            self.codes = self.codes.astype(wanted)
        self.codes[rows] = codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """The values of ``codes`` (int64)."""
        return np.asarray(self.values, np.int64)[np.asarray(codes, np.int64)]


@dataclass
class WalkGroups:
    """What :func:`walk_group_counts` returns (see the module docstring)."""

    counts: pd.DataFrame
    check: CrossCheck | None
    orphans: int
    walks: int


class _WalkColumns:
    """The narrow per-walk columns read from the ``walk`` family (see the module docstring)."""

    def __init__(self, n: int, manifest: dict, phase_table: pd.DataFrame, phase: str | None):
        mapping = vcpu_map(manifest)
        self.vcpu_values = np.array(sorted({-1, *mapping.values()}), np.int64)
        code_of = {int(v): i for i, v in enumerate(self.vcpu_values.tolist())}
        order = sorted(mapping)
        self._tids = np.array(order, np.int64)
        self._tid_codes = np.array([code_of[mapping[t]] for t in order], np.int64)
        self._unknown = code_of[-1]
        self.phase_table, self.phase = phase_table, phase
        self.phase_names = list(phases_mod.label_phases(np.zeros(0, np.int64), phase_table).categories)
        self.n = n
        self.ids = np.empty(n, np.uint64)
        self.addrs = np.empty(n, np.uint64)
        self.vcpu = np.empty(n, _narrowest(len(self.vcpu_values)))
        self.phase_codes = np.empty(n, _narrowest(len(self.phase_names)))
        self.pferr = Codes(n)
        self.selected = np.empty(n, bool) if phase is not None else None

    def _vcpu_codes(self, tids: np.ndarray) -> np.ndarray:
        if len(self._tids) == 0:
            return np.full(len(tids), self._unknown, np.int64)
        tids = tids.astype(np.int64, copy=False)
        pos = np.minimum(np.searchsorted(self._tids, tids), len(self._tids) - 1)
        return np.where(self._tids[pos] == tids, self._tid_codes[pos], self._unknown)

    def add(self, start: int, batch: Any) -> bool:
        """Rows ``start`` ... of a record batch of the walk columns; False when one has nulls."""
        if any(batch.column(c).null_count for c in WALK_COLUMNS):
            return False
        rows = slice(start, start + batch.num_rows)
        self.ids[rows] = batch.column("walk_id").to_numpy()
        self.addrs[rows] = batch.column("addr").to_numpy()
        ts = batch.column("ts_ns").to_numpy().astype(np.int64, copy=False)
        self.phase_codes[rows] = phases_mod.label_phases(ts, self.phase_table).codes
        if self.selected is not None:
            self.selected[rows] = phases_mod.phase_mask(ts, self.phase_table, self.phase)
        self.vcpu[rows] = self._vcpu_codes(batch.column("tid").to_numpy())
        self.pferr.put(rows, batch.column("pferr").to_numpy().astype(np.int64))
        return True


def _read_walks(cap: Any, manifest: dict, phase_table: pd.DataFrame, phase: str | None) -> _WalkColumns | None:
    """The narrow columns of every walk, a row group at a time (None when a column has nulls)."""
    walks = _WalkColumns(cap.rows("walk"), manifest, phase_table, phase)
    start = 0
    for batch in cap.iter_batches("walk", list(WALK_COLUMNS), BATCH_ROWS):
        if start + batch.num_rows > walks.n or not walks.add(start, batch):
            return None
        start += batch.num_rows
    return walks if start == walks.n else None


def _group_counts(columns: list[tuple[np.ndarray, int]], keep: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per distinct combination of the ``(codes, size)`` columns (rows where ``keep``): the codes of each
    column (one row per combination) and its count, combinations in ascending mixed-radix order."""
    radix = 1
    for _, size in columns:
        radix *= max(size, 1)
    n = len(columns[0][0])
    if radix <= _DENSE_KEYS:
        totals = np.zeros(radix, np.int64)
        key = np.empty(min(n, _CHUNK), np.int64)
        for start in range(0, n, _CHUNK):
            part = key[:min(_CHUNK, n - start)]
            part[:] = 0
            for codes, size in columns:
                part *= size
                part += codes[start:start + len(part)]
            totals += np.bincount(part if keep is None else part[keep[start:start + len(part)]], minlength=radix)
        keys = np.flatnonzero(totals)
        counts = totals[keys]
    else:  # many combinations: count them with pandas, chunk by chunk
        frame = pd.DataFrame({i: codes for i, (codes, _) in enumerate(columns)}, copy=False)
        if keep is not None:
            frame = frame[keep]
        sizes = frame.groupby(list(range(len(columns))), sort=True).size()
        out = [np.asarray(sizes.index.get_level_values(i), np.int64) for i in range(len(columns))]
        return np.stack(out) if out else np.zeros((0, 0), np.int64), sizes.to_numpy(np.int64)
    out = []
    for codes, size in reversed(columns):
        out.append(keys % size)
        keys = keys // size
    return np.stack(out[::-1]), counts


def walk_group_counts(cap: Any, model_walk: Callable | None = None, *, phase_table: pd.DataFrame,
                      phase: str | None = None, limit: int = 20) -> WalkGroups | None:
    """The walk tables' group counts and the model cross-check of a capture (see the module docstring)."""
    manifest = cap.manifest
    with prefetch(cap.iter_batches("walk_element", list(ELEMENT_COLUMNS), BATCH_ROWS), depth=2) as reader:
        walks = _read_walks(cap, manifest, phase_table, phase)
        if walks is None:
            return None
        row_map = RowMap(walks.ids)
        walks.ids = None  # walk ids are looked up through the map from here on
        if not row_map.ok:
            return None
        model = ModelCache(model_walk) if model_walk is not None else None
        state = _State(walks.n, walks.addrs, model, limit, walks.selected, paths=Codes(walks.n, first=(0,)))
        if not feed_all(_Rebuilder(state, row_map), _element_batches(reader)):
            return None
    check = cross_check(state, row_map.ids) if model is not None else None
    state.addrs = walks.addrs = None
    depth_low = int(state.depth.min()) if walks.n else 0
    leaf_low = int(state.leaf.min()) if walks.n else 0
    columns = [(walks.vcpu, len(walks.vcpu_values)), (walks.phase_codes, len(walks.phase_names)),
               (state.depth - np.int16(depth_low) if depth_low else state.depth,
                int(state.depth.max()) - depth_low + 1 if walks.n else 1),
               (state.leaf - np.int8(leaf_low) if leaf_low else state.leaf,
                int(state.leaf.max()) - leaf_low + 1 if walks.n else 1),
               (state.paths.codes, len(state.paths.values)), (walks.pferr.codes, max(len(walks.pferr.values), 1))]
    codes, counts = _group_counts(columns, walks.selected)
    frame = pd.DataFrame({
        "vcpu": walks.vcpu_values[codes[0]],
        "phase": pd.Categorical.from_codes(codes[1], categories=walks.phase_names),
        "depth": (codes[2] + depth_low).astype(np.int16),
        "leaf_level": (codes[3] + leaf_low).astype(np.int8),
        "level_path": state.paths.decode(codes[4]),
        "pferr": walks.pferr.decode(codes[5]).astype(np.uint32),
        "walks": counts,
    })
    return WalkGroups(frame, check, state.orphans, walks.n)
