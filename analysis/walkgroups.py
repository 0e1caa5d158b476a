"""The walk analyses of a capture from narrow per-walk columns: both families streamed, no walk frame.

Contract
--------
:func:`walk_group_counts` rebuilds and cross-checks every guest walk of a capture like
:func:`tracekit.analysis.walkstream.stream_walks`, but keeps per walk only what the walk tables and the
check need, as dictionary codes in the narrowest unsigned type that holds them (usually one byte):

- the ``walk`` family is read in batches of :data:`WALK_BATCH_ROWS` rows (``walk_id``, ``ts_ns``,
  ``tid``, ``addr``, ``pferr``, decoded by a reader thread) and each walk gets at once a *group* code of
  (its thread's vCPU from the manifest through a per-thread table, its phase from
  :func:`.phases.label_phases`, its fault code), its row in the model cache
  (:class:`.crosscheck.ModelCache`, instead of the address) and, with ``phase``, the phase-cut flag;
  the walk ids are only scanned (:class:`.walkstream.IdScan`) and read a second time to build the id
  map (:meth:`.walkstream.RowMap.from_chunks`), never held;
- ``walk_element`` is streamed in batches of :data:`ELEMENT_BATCH_ROWS` rows as in
  :mod:`.walkstream`; each rebuilt walk gets a *shape* code of (depth, leaf level, level path), code 0
  meaning "no elements" (:class:`ShapeCodes`);
- the tables' counts are one ``bincount`` over (group, shape) codes; a mismatching walk's id comes from
  the id map's inverse and its address from one more read of the ``addr`` column (only when there are
  mismatches).

Walks whose elements lie far apart are rebuilt in a second pass over ``walk_element``
(:func:`.walkstream.feed_passes`). Returns None when the streamed rebuild cannot be used (walk ids
repeat, a walk column has nulls, a walk of 2**16 elements or more): the caller then rebuilds in memory.
Else a :class:`WalkGroups`: ``counts``, one row per distinct (``vcpu`` int64, ``phase`` categorical,
``depth`` int16, ``leaf_level`` int8, ``level_path`` int64, ``pferr`` uint32, ``cause`` categorical of
:data:`.walkcause.CAUSES`, from :class:`.walkcause.FaultFollowers` fed with each batch) of the walks in the
phase cut with their number ``walks`` (int64) -- the columns of the walk frame the tables group by, so
``depth_distribution(counts, by, weights="walks")`` equals ``depth_distribution(walk_frame, by)``;
``check`` (a :class:`.crosscheck.CrossCheck`, None without ``model_walk``); ``orphans`` (elements
without their walk event); ``walks`` (walk events read). Raises what reading the capture raises and
UsageError for an unknown phase.

:class:`Codes` is the dictionary: int64 values to codes given in order of first appearance, stored per
row in a uint8 array widened to uint16 / uint32 when more values come. At 100 M events (25 M walks) the
per-walk state is about 100 MB for the id map and 4 bytes per walk besides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from tracekit.analysis import phases as phases_mod
from tracekit.analysis.common import lookup_tids, vcpu_map
from tracekit.analysis.crosscheck import CrossCheck, LostCpus, ModelCache
from tracekit.analysis.walkcause import CAUSES, FaultFollowers, cause_codes, fault_followers
from tracekit.analysis.walks import WALK_COLUMNS, depth_of
from tracekit.analysis.walkstream import (IdScan, RowMap, _element_batches, _State, cross_check, element_reader,
                                          element_stream, feed_passes, prefetch)

__all__ = ["Codes", "WalkGroups", "walk_group_counts"]

#: Group keys counted with one dense ``bincount`` up to this many possible combinations.
_DENSE_KEYS = 1 << 22
_CHUNK = 1 << 20
#: Rows per batch of the ``walk`` family (smaller batches: less decoded data and fewer temporaries at once).
WALK_BATCH_ROWS = 1 << 18
#: Rows per batch of ``walk_element`` (as fast as 1 Mi-row batches here, 100 MB less at the peak).
ELEMENT_BATCH_ROWS = 1 << 18
_VCPU_SHIFT = 48  # a walk's group key: vCPU code << 48 | phase code << 32 | fault code
_PHASE_SHIFT = 32


def _narrowest(count: int) -> np.dtype:
    """The narrowest unsigned integer type holding codes 0 .. ``count - 1`` (uint8 at least)."""
    return np.min_scalar_type(max(count - 1, 0))


def _widened(column: np.ndarray, count: int) -> np.ndarray:
    """``column`` (unsigned codes), widened when needed to hold codes 0 .. ``count - 1``."""
    wanted = _narrowest(count)
    return column.astype(wanted) if wanted.itemsize > column.dtype.itemsize else column


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
        self.codes = _widened(self.codes, len(self.values))
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

    def __init__(self, n: int, manifest: dict, phase_table: pd.DataFrame, phase: str | None,
                 model: ModelCache | None, followers: FaultFollowers | None = None):
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
        self.scan = IdScan()
        self.model = model
        self.followers = followers
        self.model_rows = np.zeros(n if model is not None else 0, np.uint8)  # per walk, its row in the model cache
        self.groups = Codes(n)  # per walk, a code of (vCPU code, phase code, fault code)
        self.selected = np.empty(n, bool) if phase is not None else None
        self.fits = len(self.vcpu_values) < 1 << 15 and len(self.phase_names) < 1 << 16

    def add(self, start: int, batch: Any) -> bool:
        """Rows ``start`` ... of a record batch of the walk columns; False when one has nulls."""
        if any(batch.column(c).null_count for c in WALK_COLUMNS):
            return False
        rows = slice(start, start + batch.num_rows)
        self.scan.add(batch.column("walk_id").to_numpy())
        if self.model is not None:
            model_rows = self.model.rows(batch.column("addr").to_numpy())
            self.model_rows = _widened(self.model_rows, len(self.model))
            self.model_rows[rows] = model_rows
        ts = batch.column("ts_ns").to_numpy().astype(np.int64, copy=False)
        if self.followers is not None:
            self.followers.add(start, batch.column("tid").to_numpy(), ts)
        if self.selected is not None:
            self.selected[rows] = phases_mod.phase_mask(ts, self.phase_table, self.phase)
        key = lookup_tids(batch.column("tid").to_numpy(), self._tids, self._tid_codes, self._unknown) << _VCPU_SHIFT
        key |= phases_mod.label_phases(ts, self.phase_table).codes.astype(np.int64) << _PHASE_SHIFT
        key |= batch.column("pferr").to_numpy().astype(np.int64)
        self.groups.put(rows, key)
        return True

    def decode(self, codes: np.ndarray) -> tuple[np.ndarray, pd.Categorical, np.ndarray]:
        """The ``vcpu`` (int64), ``phase`` and ``pferr`` (uint32) of group ``codes``."""
        key = self.groups.decode(codes)
        phase = pd.Categorical.from_codes((key >> _PHASE_SHIFT) & 0xFFFF, categories=self.phase_names)
        return self.vcpu_values[key >> _VCPU_SHIFT], phase, (key & 0xFFFF_FFFF).astype(np.uint32)


class ShapeCodes:
    """Each walk's rebuilt shape (depth, leaf level, level path) as one dictionary code, code 0 for a
    walk not rebuilt (no elements): the :class:`~.walkstream.WalkShapes` of :mod:`.walkstream` in a
    byte or two per walk. ``too_deep`` is set by a walk of 2**16 elements or more (not encodable)."""

    def __init__(self, n: int):
        self.paths = Codes(0, first=(0,))
        self.codes = Codes(n, first=(0,))  # key 0: depth 0, leaf -1 (+1 = 0), path code 0 (path 0)
        self.too_deep = False

    def rebuilt(self, wi: np.ndarray) -> np.ndarray:
        return self.codes.codes[wi] != 0

    def put(self, wi: np.ndarray, counts: np.ndarray, root: np.ndarray, leaf: np.ndarray, path: np.ndarray) -> None:
        if len(counts) and int(counts.max()) >= 1 << 16:
            self.too_deep = True
            return
        key = self.paths.encode(path) << 20
        key |= depth_of(counts).astype(np.int64) << 4
        key |= leaf.astype(np.int64) + 1
        self.codes.put(wi, key)

    def decode(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``depth`` (int16), ``leaf_level`` (int8) and ``level_path`` (int64) of shape ``codes``."""
        key = self.codes.decode(codes)
        return (((key >> 4) & 0xFFFF).astype(np.int16), ((key & 0xF) - 1).astype(np.int8),
                self.paths.decode(key >> 20))


def _read_walks(cap: Any, manifest: dict, phase_table: pd.DataFrame, phase: str | None,
                model: ModelCache | None, followers: FaultFollowers | None = None) -> _WalkColumns | None:
    """The narrow columns of every walk, a row group at a time (None when a column has nulls)."""
    walks = _WalkColumns(cap.rows("walk"), manifest, phase_table, phase, model, followers)
    if not walks.fits:  # too many vCPUs or phases for the group key: known before reading
        return None
    start = 0
    with prefetch(cap.iter_batches("walk", list(WALK_COLUMNS), WALK_BATCH_ROWS), depth=2) as batches:
        for batch in batches:  # decoded by the reader thread while the previous batch is coded here
            if start + batch.num_rows > walks.n or not walks.add(start, batch):
                return None
            start += batch.num_rows
    return walks if start == walks.n else None


def _column_chunks(cap: Any, column: str) -> Iterator[np.ndarray]:
    """One column of the ``walk`` family, a row group at a time (decoded by a reader thread)."""
    with prefetch(cap.iter_batches("walk", [column], WALK_BATCH_ROWS), depth=2) as batches:
        for batch in batches:
            yield batch.column(0).to_numpy()


def _rows_of(cap: Any, column: str, rows: np.ndarray) -> np.ndarray:
    """``column`` of the ``walk`` family at ``rows`` (a few: the family is read a row group at a time)."""
    rows = np.asarray(rows, np.int64)
    out = np.zeros(len(rows), np.uint64)
    start = 0
    for part in _column_chunks(cap, column):
        inside = (rows >= start) & (rows < start + len(part))
        out[inside] = part[rows[inside] - start]
        start += len(part)
    return out


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
    else:  # too many combinations for a dense count: hash them (pandas)
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


#: ``walk_group_counts(followers=READ)``: read the fault-path events from the capture.
READ = object()


def walk_group_counts(cap: Any, model_walk: Callable | None = None, *, phase_table: pd.DataFrame,
                      phase: str | None = None, limit: int = 20, followers: Any = READ) -> WalkGroups | None:
    """The walk tables' group counts and the model cross-check of a capture (see the module docstring);
    ``followers``: the capture's unfed :class:`.walkcause.FaultFollowers` when the caller read them."""
    manifest = cap.manifest
    model = ModelCache(model_walk) if model_walk is not None else None
    with element_reader(cap, ELEMENT_BATCH_ROWS) as reader:
        if followers is READ:
            followers = fault_followers(cap)
        walks = _read_walks(cap, manifest, phase_table, phase, model, followers)
        if walks is None:
            return None
        row_map = RowMap.from_chunks(walks.scan, lambda: _column_chunks(cap, "walk_id"))
        if not row_map.ok:
            return None
        state = feed_passes(row_map, lambda: _State(walks.n, None, model, limit, walks.selected,
                                                    shapes=ShapeCodes(walks.n),
                                                    model_rows=walks.model_rows if model is not None else None,
                                                    lost=LostCpus(manifest)),
                            lambda: element_stream(cap, ELEMENT_BATCH_ROWS), _element_batches(reader))
        if state is None or state.shapes.too_deep:
            return None
        shapes = state.shapes
    check = None
    if model is not None:
        check = cross_check(state, row_map.ids, lambda rows: _rows_of(cap, "addr", rows))
    state.walk_model_rows = walks.model_rows = None
    causes = cause_codes(walks.n, followers)
    codes, counts = _group_counts([(walks.groups.codes, len(walks.groups.values)),
                                   (shapes.codes.codes, len(shapes.codes.values)), (causes, len(CAUSES))],
                                  walks.selected)
    vcpu, phase_labels, pferr = walks.decode(codes[0])
    depth, leaf, path = shapes.decode(codes[1])
    frame = pd.DataFrame({"vcpu": vcpu, "phase": phase_labels, "depth": depth, "leaf_level": leaf,
                          "level_path": path, "pferr": pferr,
                          "cause": pd.Categorical.from_codes(codes[2], categories=list(CAUSES)), "walks": counts})
    return WalkGroups(frame, check, state.orphans, walks.n)
