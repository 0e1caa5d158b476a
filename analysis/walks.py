"""Guest page-table walks rebuilt from walk events, and their depth distributions.

Contract
--------
**x86 guest walks** (KVM's software walker, tracepoints ``kvm_mmu_pagetable_walk``,
``kvm_mmu_paging_element``, ``kvm_mmu_walker_error``). Inputs, as DataFrames or anything indexable
by column name giving arrays:

- ``walk``: ``walk_id`` (uint64, unique), ``ts_ns``, ``tid``, ``addr`` (guest virtual address,
  bytes), ``pferr`` (uint32 page-fault error code);
- ``walk_element``: ``walk_id``, ``index`` (order within the walk), ``level`` (KVM level: 1 = 4 KiB
  PTE ... 5 = PML5E), ``pte`` (uint64 guest PTE value as read);
- ``walk_error`` (optional): ``walk_id``, ``pferr``.

:func:`rebuild_walks` returns ``(walks, steps)``:

- ``walks``, one row per walk event, in walk-event order: ``walk_id``, ``ts_ns``, ``tid``,
  ``addr``, ``pferr``, ``depth`` (int16: number of levels read = elements), ``root_level`` (int8:
  level of the first element, -1 if none), ``leaf_level`` (int8: level of the last element when it
  translates: present and level 1 or PS at level 2/3; else -1), ``level_path`` (the levels in visit
  order as decimal digits: 432 = levels 4, 3, 2; 0 if none), ``error`` (a walker error was
  recorded), ``first_step`` (row of its first element in ``steps``, -1 if none);
- ``steps``, one row per element sorted by (walk_id, index): ``walk_id``, ``index``, ``depth``
  (0 = the root level), ``level``, ``pte``.
- ``walks.attrs["orphan_elements"]``: elements whose walk event is missing (lost events).

A walk of more than :data:`MAX_WALK_ELEMENTS` elements is malformed (no walker reads that many: its
elements belong to several walks, as in captures recorded before the recording window existed);
:func:`malformed_walks` counts them and ``depth`` saturates at 32767 (:func:`depth_of`), never wraps.

Vectorised with numpy (one pass per column; a sort only when the elements are out of order; the
frames share the input arrays where they can, so the rebuild allocates little beyond its outputs).
Duplicate walk ids in ``walk`` are not supported (the recorder makes them unique).

:func:`depth_distribution` counts walks per (group..., ``depth``, ``leaf_level``) with ``walks``
and ``share`` (fraction of the group's walks).

**arm64 stage-2 walks** (function probes; families ``stage2_walk``: ``walk_id``, ``ts_ns``,
``tid``, ``addr``, ``size``, ``flags``, ``duration_ns``, ``ret``, ``initiator`` (the walker
callback's symbol); ``stage2_visit``: ``walk_id``, ``visitor``, ``level``, ``kind``
(``VISIT:PTE``, e.g. ``leaf:block``, ``leaf:page``, ``table_pre:table``), ``count``).
:func:`stage2_walk_visits` gives one row per (walk, visitor, level, kind) with ``entries`` (visited
entries) and the walk's ``initiator``, ``addr``, ``size``, ``ts_ns``, ``tid``; :func:`stage2_distribution`
sums them per (group..., ``initiator``, ``visitor``, ``level``, ``kind``): ``walks``, ``entries``,
``entries_per_walk``. A walk's visitors can differ from its initiator: a split walk also shows the
``stage2_map_walker`` visits of the subtree it builds.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from tracekit.analysis.common import count_by
from tracekit.model import x86

__all__ = [
    "MAX_WALK_ELEMENTS",
    "depth_of",
    "malformed_walks",
    "WALK_COLUMNS",
    "ELEMENT_COLUMNS",
    "PTE_PRESENT",
    "PTE_PS",
    "rebuild_walks",
    "depth_distribution",
    "stage2_walk_visits",
    "stage2_distribution",
    "level_path_text",
    "leaf_levels",
    "level_paths",
]

WALK_COLUMNS = ("walk_id", "ts_ns", "tid", "addr", "pferr")
ELEMENT_COLUMNS = ("walk_id", "index", "level", "pte")
PTE_PRESENT = np.uint64(x86.PTE_P)
PTE_PS = np.uint64(x86.PTE_PS)


def _col(frame: Any, name: str, dtype: Any) -> np.ndarray:
    return np.asarray(frame[name]).astype(dtype, copy=False)


def leaf_levels(last_level: np.ndarray, last_pte: np.ndarray) -> np.ndarray:
    """Per walk, the level of its last element when that element translates (present, and level 1
    or PS at level 2/3), else -1 (int8)."""
    present = (last_pte & PTE_PRESENT) != 0
    huge = ((last_pte & PTE_PS) != 0) & ((last_level == 2) | (last_level == 3))
    return np.where(present & ((last_level == 1) | huge), last_level, -1).astype(np.int8)


#: Elements one walk may have (the recorder's TK_WALK_MAX_ELEMENTS): 5 levels and a few retries fit many times.
MAX_WALK_ELEMENTS = 64


def depth_of(counts: np.ndarray) -> np.ndarray:
    """Element counts as int16 depths, saturated at 32767 (a malformed walk never shows negative)."""
    return np.minimum(counts, np.iinfo(np.int16).max).astype(np.int16)


def malformed_walks(depth: Any, weights: Any = None) -> int:
    """Walks deeper than :data:`MAX_WALK_ELEMENTS` (``weights``: walks per row, for counted frames)."""
    deep = np.asarray(depth) > MAX_WALK_ELEMENTS
    return int(np.asarray(weights)[deep].sum()) if weights is not None else int(deep.sum())


def level_paths(level: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per walk (rows ``starts[i]`` .. ``starts[i] + counts[i] - 1`` of ``level``), its levels in visit
    order as decimal digits (int64; 0 for none, at most 18 digits), one pass per depth."""
    path = np.zeros(len(starts), np.int64)
    for d in range(int(min(counts.max(), 18)) if len(counts) else 0):
        has = counts > d
        if has.all():
            path = path * 10 + level[starts + d]
        else:
            path[has] = path[has] * 10 + level[starts[has] + d]
    return path


def rebuild_walks(walk: Any, element: Any, error: Any = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rebuild every walk (see the module docstring for the columns)."""
    wid = _col(element, "walk_id", np.uint64)
    idx = _col(element, "index", np.int16)
    level = _col(element, "level", np.int8)
    pte = _col(element, "pte", np.uint64)
    cpu = _col(element, "cpu", np.int32) if "cpu" in getattr(element, "columns", ()) else None
    n = len(wid)
    if n > 1:
        same = wid[1:] == wid[:-1]
        in_order = bool(np.all(wid[1:] >= wid[:-1])) and not np.any(same & (idx[1:] <= idx[:-1]))
        if not in_order:
            order = np.lexsort((idx, wid))
            wid, idx, level, pte = wid[order], idx[order], level[order], pte[order]
            cpu = cpu[order] if cpu is not None else None
            same = wid[1:] == wid[:-1]
        starts = np.flatnonzero(np.concatenate(([True], ~same)))
        del same
    else:
        starts = np.zeros(n, np.int64)
    counts = np.diff(np.append(starts, n)).astype(np.int64)
    ends = starts + counts - 1
    # Depth inside the walk without per-element index arithmetic: +1 per element, reset at each start.
    step = np.ones(n, np.int32)
    if len(starts) > 1:
        step[starts[1:]] = 1 - counts[:-1]
    depth_in_walk = np.cumsum(step, dtype=np.int32) - 1 if n else np.zeros(0, np.int32)
    del step

    g_wid = wid[starts]
    g_leaf = leaf_levels(level[ends], pte[ends])
    g_path = level_paths(level, starts, counts)

    w_wid = _col(walk, "walk_id", np.uint64)
    identity = len(w_wid) == len(g_wid) and bool(np.array_equal(w_wid, g_wid))
    if identity:
        found = None
        pos = None
    elif len(starts):
        pos = np.clip(np.searchsorted(g_wid, w_wid), 0, len(starts) - 1)
        found = g_wid[pos] == w_wid
    else:
        pos = np.zeros(len(w_wid), np.int64)
        found = np.zeros(len(w_wid), bool)
    if error is not None and len(error["walk_id"]):
        err = np.isin(w_wid, _col(error, "walk_id", np.uint64))
    else:
        err = np.zeros(len(w_wid), bool)

    def pick(values: np.ndarray, missing: int, dtype: Any) -> np.ndarray:
        if identity:
            return values.astype(dtype, copy=False)
        if len(values) == 0:
            return np.full(len(w_wid), missing, dtype)
        return np.where(found, values[pos], missing).astype(dtype, copy=False)

    walks = pd.DataFrame({
        "walk_id": w_wid,
        "ts_ns": _col(walk, "ts_ns", np.int64),
        "tid": _col(walk, "tid", np.int32),
        "addr": _col(walk, "addr", np.uint64),
        "pferr": _col(walk, "pferr", np.uint32),
        "depth": pick(depth_of(counts), 0, np.int16),
        "root_level": pick(level[starts], -1, np.int8),
        "leaf_level": pick(g_leaf, -1, np.int8),
        "level_path": pick(g_path, 0, np.int64),
        "error": err,
        "first_step": pick(starts, -1, np.int64),
    }, copy=False)
    matched = int(counts.sum()) if identity else int(counts[pos[found]].sum()) if len(starts) else 0
    walks.attrs["orphan_elements"] = n - matched
    steps = pd.DataFrame({"walk_id": wid, "index": idx, "depth": depth_in_walk, "level": level, "pte": pte},
                         copy=False)
    if cpu is not None:
        steps["cpu"] = cpu
    return walks, steps


def level_path_text(code: int) -> str:
    """``432`` -> ``"4>3>2"`` (``"-"`` for 0)."""
    return ">".join(str(code)) if code > 0 else "-"


def depth_distribution(walks: pd.DataFrame, by: Sequence[str] = (), weights: str | None = None) -> pd.DataFrame:
    """Walk counts per (by..., depth, leaf_level) and each count's share of its group; with ``weights``
    each row of ``walks`` stands for that column's number of walks (grouped counts)."""
    keys = [*by, "depth", "leaf_level"]
    if walks.empty:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in (*keys, "walks", "share")})
    counts = count_by(walks, keys, "walks", weights=weights)
    if by:
        totals = counts.groupby(list(by), observed=True, dropna=False)["walks"].transform("sum")
    else:
        totals = counts["walks"].sum()
    counts["share"] = counts["walks"] / totals
    return counts


def stage2_walk_visits(stage2_walk: pd.DataFrame, stage2_visit: pd.DataFrame) -> pd.DataFrame:
    """One row per (walk_id, level, kind): entries visited, with the walk's initiator and range."""
    keys = ["walk_id", "visitor", "level", "kind"] if "visitor" in stage2_visit.columns else ["walk_id", "level", "kind"]
    visit = stage2_visit.assign(visitor=stage2_visit["visitor"].fillna("?")) if "visitor" in keys else stage2_visit
    visits = visit.groupby(keys, sort=True)["count"].sum()
    visits = visits.rename("entries").reset_index()
    cols = [c for c in ("walk_id", "ts_ns", "tid", "initiator", "addr", "size", "flags") if c in stage2_walk.columns]
    frame = visits.merge(stage2_walk[cols], on="walk_id", how="left")
    if "initiator" in frame.columns:
        frame["initiator"] = frame["initiator"].fillna("?")
    else:
        frame["initiator"] = "?"
    return frame


def stage2_distribution(visits: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Per (by..., initiator, visitor, level, kind): walks, entries, entries_per_walk."""
    keys = [*by, "initiator", *(["visitor"] if "visitor" in visits.columns else []), "level", "kind"]
    if visits.empty:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in (*keys, "walks", "entries", "entries_per_walk")})
    out = visits.groupby(keys, sort=True).agg(walks=("walk_id", "nunique"), entries=("entries", "sum")).reset_index()
    out["entries_per_walk"] = out["entries"] / out["walks"]
    return out
