"""The walk tables of a capture, counted from a byte or two per walk; and the per-walk frame on request.

:func:`walk_group_counts` runs the streaming core keeping per walk only a group, a shape and a cause
code, and counts the tables from them; :func:`walk_frame` is the per-walk frame itself, for figures and
tests (docs/analysis.md, "Performance").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from tracekit.analysis import phases as phases_mod
from tracekit.analysis import spill
from tracekit.analysis.common import add_vcpu, lookup_tids, vcpu_map
from tracekit.analysis.crosscheck import CrossCheck
from tracekit.analysis.walkcause import CAUSES, FaultFollowers, cause_codes, fault_followers
from tracekit.analysis.walks import depth_of
from tracekit.analysis.walkstream import WalkShapes, stream_walks

__all__ = ["Codes", "ShapeCodes", "WalkGroups", "walk_group_counts", "walk_frame"]

#: Group keys counted with one dense ``bincount`` up to this many possible combinations.
_DENSE_KEYS = 1 << 22
_CHUNK = 1 << 20
#: Level paths kept as they are in a shape's key (below them, 20 bits of depth and leaf fit an int64).
_DIRECT_PATHS = 1 << 43


def _narrowest(count: int) -> np.dtype:
    """The narrowest unsigned integer type holding codes 0 .. ``count - 1`` (uint8 at least)."""
    return np.min_scalar_type(max(count - 1, 0))


class Codes:
    """Dictionary codes of int64 values, given in order of first appearance, one per row of a column
    of ``n`` rows stored in the narrowest unsigned type (widened as values come). ``first`` values are
    given codes 0, 1, ... up front (rows not written keep code 0)."""

    def __init__(self, n: int, first: tuple[int, ...] = ()):
        self.values: list[int] = []
        self._index: dict[int, int] = {}
        for value in first:
            self._code(value)
        self.codes = spill.full(n, 0, _narrowest(max(len(self.values), 1)))

    def _code(self, value: int) -> int:
        code = self._index.get(value)
        if code is None:
            code = self._index[value] = len(self.values)
            self.values.append(value)
        return code

    def _codes(self, values: np.ndarray) -> int | np.ndarray:
        """The codes of ``values`` (int64), new values added: one code when they are all one value (as
        mostly: the first value, then the first other one, are compared before anything is hashed)."""
        code = self._code(int(values[0]))
        other = values != values[0]
        if not other.any():
            return code
        codes = np.full(len(values), code, np.int64)
        rest = np.flatnonzero(other)
        others = values[rest]
        if (others == others[0]).all():  # two values (two vCPUs, say): no hash either
            codes[rest] = self._code(int(others[0]))
            return codes
        found, uniques = pd.factorize(others)
        codes[rest] = np.fromiter((self._code(v) for v in uniques.tolist()), np.int64, len(uniques))[found]
        return codes

    def encode(self, values: np.ndarray) -> np.ndarray:
        """The codes of ``values`` (int64), new values added."""
        if len(values) == 0:
            return np.zeros(0, np.int64)
        codes = self._codes(values)
        return np.full(len(values), codes, np.int64) if isinstance(codes, int) else codes

    def put(self, rows: Any, values: np.ndarray) -> None:
        """Store the codes of ``values`` at ``rows`` (an index array or slice)."""
        if len(values) == 0:
            return
        codes = self._codes(values)
        wanted = _narrowest(len(self.values))
        if wanted.itemsize > self.codes.dtype.itemsize:
            self.codes = spill.widened(self.codes, wanted)
        self.codes[rows] = codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """The values of ``codes`` (int64)."""
        return np.asarray(self.values, np.int64)[np.asarray(codes, np.int64)]


class ShapeCodes:
    """Each walk's rebuilt shape (depth, leaf level, level path) as one :class:`Codes` code, code 0 for a
    walk not rebuilt (no elements): the sink :func:`.walkstream.stream_walks` fills, a byte or two per walk.
    A shape's key holds its level path itself (paths below 2**43, up to 12 levels), or (negative) a code of
    a longer path."""

    def __init__(self, n: int):
        self.paths = Codes(0, first=(0,))
        self.codes = Codes(n, first=(0,))  # key 0: depth 0, leaf -1 (+1 = 0), path 0

    def rebuilt(self, wi: np.ndarray) -> np.ndarray:
        return self.codes.codes[wi] != 0

    def put(self, wi: np.ndarray, counts: np.ndarray, root: np.ndarray, leaf: np.ndarray, path: np.ndarray) -> None:
        long = path >= _DIRECT_PATHS
        key = np.where(long, 0, path) << 20  # depths saturate at 32767: 16 bits, the leaf level 4
        key |= depth_of(counts).astype(np.int64) << 4
        key |= leaf.astype(np.int64) + 1
        if long.any():
            key[long] = -1 - (key[long] | self.paths.encode(path[long]) << 20)
        self.codes.put(wi, key)

    def decode(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``depth`` (int16), ``leaf_level`` (int8) and ``level_path`` (int64) of shape ``codes``."""
        key = self.codes.decode(codes)
        long = key < 0
        key = np.where(long, -1 - key, key)
        path = key >> 20
        return (((key >> 4) & 0xFFFF).astype(np.int16), ((key & 0xF) - 1).astype(np.int8),
                np.where(long, self.paths.decode(np.where(long, path, 0)), path))


class _GroupCodes:
    """The ``on_walks`` sink of :func:`walk_group_counts`: per walk a code of (its thread's vCPU from the
    manifest, its phase, its fault code), through a code of each (vCPU, phase) pair when they are too many
    for the key itself; feeds the fault followers on the way."""

    def __init__(self, n: int, manifest: dict, phase_table: pd.DataFrame, followers: FaultFollowers | None):
        mapping = vcpu_map(manifest)
        self.vcpu_values = np.array(sorted({-1, *mapping.values()}), np.int64)
        code_of = {int(v): i for i, v in enumerate(self.vcpu_values.tolist())}
        order = sorted(mapping)
        self._tids = np.array(order, np.int64)
        self._tid_codes = np.array([code_of[mapping[t]] for t in order], np.int64)
        self._unknown = code_of[-1]
        self.phase_codes = phases_mod.PhaseCodes(phase_table)
        self.phase_names = self.phase_codes.names
        self.followers = followers
        self.pairs = Codes(0)  # (vCPU code << 32 | phase code) -> pair code, when they do not fit a key directly
        self.direct = len(self.vcpu_values) < 1 << 15 and len(self.phase_names) < 1 << 16
        self.groups = Codes(n)  # per walk: (vCPU code << 16 | phase code, or pair code) << 32 | fault code
        self.n = n
        self.causes: np.ndarray | None = None  # per walk its cause, once every walk was read

    def __call__(self, start: int, columns: dict[str, np.ndarray]) -> None:
        tid, ts = columns["tid"], columns["ts_ns"].astype(np.int64, copy=False)
        if self.followers is not None:
            self.followers.add(start, tid, ts)
        if start + len(tid) == self.n and self.followers is not None:  # the last walks: the causes are known,
            self.causes = cause_codes(self.n, self.followers)           # the fault times freed before the elements
            self.followers.release()
        vcpu, phase = lookup_tids(tid, self._tids, self._tid_codes, self._unknown), self.phase_codes(ts).astype(np.int64)
        if self.direct:  # vCPU code << 48 | phase code << 32 | fault code
            key = vcpu << 48
            key |= phase << 32
        else:
            key = self.pairs.encode(vcpu << 32 | phase) << 32
        key |= columns["pferr"].astype(np.int64)
        self.groups.put(slice(start, start + len(tid)), key)

    def decode(self, codes: np.ndarray) -> tuple[np.ndarray, pd.Categorical, np.ndarray]:
        """The ``vcpu`` (int64), ``phase`` and ``pferr`` (uint32) of group ``codes``."""
        key = self.groups.decode(codes)
        pair = ((key >> 48) << 32 | (key >> 32) & 0xFFFF) if self.direct else self.pairs.decode(key >> 32)
        phase = pd.Categorical.from_codes(pair & 0xFFFF_FFFF, categories=self.phase_names)
        return self.vcpu_values[pair >> 32], phase, (key & 0xFFFF_FFFF).astype(np.uint32)


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
            spill.trim()
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


@dataclass
class WalkGroups:
    """What :func:`walk_group_counts` returns: ``counts`` (see the module docstring), ``check`` (None
    without a model), ``orphans`` (elements without their walk event), ``walks`` (walk events read)."""

    counts: pd.DataFrame
    check: CrossCheck | None
    orphans: int
    walks: int


#: ``followers=READ``: read the fault-path events from the capture.
READ = object()


def walk_group_counts(cap: Any, model_walk: Callable | None = None, *, phase_table: pd.DataFrame,
                      phase: str | None = None, limit: int = 20, followers: Any = READ) -> WalkGroups:
    """The walk tables' group counts and the model cross-check of the walks in ``phase`` (see the module
    docstring); ``followers``: the capture's unfed :class:`.walkcause.FaultFollowers` when the caller read
    them (None: causes unknown). Raises what reading the capture raises."""
    if followers is READ:
        followers = fault_followers(cap)
    n = cap.rows("walk")
    groups = _GroupCodes(n, cap.manifest, phase_table, followers)
    select = None if phase is None else (lambda ts: phases_mod.phase_mask(ts, phase_table, phase))
    streamed = stream_walks(cap, ShapeCodes, on_walks=groups, model_walk=model_walk, select=select, limit=limit)
    shapes = streamed.shapes
    causes = groups.causes if groups.causes is not None else cause_codes(n, followers)
    codes, counts = _group_counts([(groups.groups.codes, len(groups.groups.values)),
                                   (shapes.codes.codes, len(shapes.codes.values)), (causes, len(CAUSES))],
                                  streamed.selected)
    vcpu, phase_labels, pferr = groups.decode(codes[0])
    depth, leaf, path = shapes.decode(codes[1])
    frame = pd.DataFrame({"vcpu": vcpu, "phase": phase_labels, "depth": depth, "leaf_level": leaf,
                          "level_path": path, "pferr": pferr,
                          "cause": pd.Categorical.from_codes(codes[2], categories=list(CAUSES)), "walks": counts})
    return WalkGroups(frame, streamed.check, streamed.orphans, n)


#: The per-walk frame's columns read from the ``walk`` family, and their types.
_WALK_TYPES = {"walk_id": np.uint64, "ts_ns": np.int64, "tid": np.int32, "addr": np.uint64, "pferr": np.uint32}


def walk_frame(cap: Any, phase_table: pd.DataFrame, phase: str | None = None) -> pd.DataFrame:
    """One row per walk of ``phase``: ``walk_id``, ``ts_ns``, ``tid``, ``addr``, ``pferr``, ``depth``,
    ``root_level``, ``leaf_level``, ``level_path``, ``error``, ``cause``, ``vcpu``, ``phase``
    (docs/analysis.md); ``attrs["orphan_elements"]`` as :func:`walk_group_counts` counts them."""
    n = cap.rows("walk")
    columns = {name: np.empty(n, dtype) for name, dtype in _WALK_TYPES.items()}
    followers = fault_followers(cap)

    def on_walks(start: int, batch: dict[str, np.ndarray]) -> None:
        for name, column in columns.items():
            column[start:start + len(batch[name])] = batch[name]
        if followers is not None:
            followers.add(start, batch["tid"], batch["ts_ns"])

    streamed = stream_walks(cap, WalkShapes, on_walks=on_walks)
    shapes = streamed.shapes
    error = np.zeros(n, bool)
    error[streamed.error_rows] = True
    frame = pd.DataFrame({**columns, "depth": shapes.depth, "root_level": shapes.root, "leaf_level": shapes.leaf,
                          "level_path": shapes.path, "error": error,
                          "cause": pd.Categorical.from_codes(cause_codes(n, followers), categories=list(CAUSES))},
                         copy=False)
    frame = add_vcpu(frame, cap.manifest)
    frame["phase"] = phases_mod.label_phases(frame["ts_ns"], phase_table)
    frame = phases_mod.select_phase(frame, phase_table, phase)
    frame.attrs["orphan_elements"] = streamed.orphans
    return frame
