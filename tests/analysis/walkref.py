"""The in-memory walk rebuild and cross-check: the reference the streaming core is tested against.

:func:`rebuild_walks` rebuilds every walk from whole ``walk`` / ``walk_element`` frames by one sort;
:func:`crosscheck_walks` compares each with the model; :func:`reference_walk_frame` gives the per-walk
frame ``analyze`` gives (vCPU, phase, cause) and the check, the families loaded whole. They share the
element comparison of :mod:`tracekit.analysis.crosscheck` with the core, not its streaming.
:func:`core_walks` gives the core's side of each comparison; :class:`TableCapture` serves in-memory tables through the capture interface the core reads, in batches
of any size.

``rebuild_walks`` returns ``(walks, steps)``: ``walks`` one row per walk event, in walk-event order
(``walk_id``, ``ts_ns``, ``tid``, ``addr``, ``pferr``, ``depth``, ``root_level``, ``leaf_level``,
``level_path``, ``error``, ``first_step``: row of its first element in ``steps``, -1 if none; every row
of a repeated walk id gets that id's elements) and ``steps`` one row per element sorted by (walk_id,
index) (``walk_id``, ``index``, ``depth`` within the walk, ``level``, ``pte``, and ``cpu`` when the
elements have it); ``walks.attrs["orphan_elements"]``: elements whose walk event is missing.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from tracekit.analysis import phases as phases_mod
from tracekit.analysis.common import add_vcpu, load
from tracekit.analysis.crosscheck import (MISMATCH_COLUMNS, CrossCheck, LostCpus, ModelCache, check_summary,
                                          compare_elements, compared_passes, cut_short, mismatch_row, modelled,
                                          per_level_table)
from tracekit.analysis.walkcause import CAUSES, cause_codes, fault_followers
from tracekit.analysis.walkgroups import walk_frame
from tracekit.analysis.walks import ELEMENT_COLUMNS, WALK_COLUMNS, depth_of, leaf_levels, level_paths
from tracekit.analysis.walkstream import stream_walks
from tracekit.model.x86 import X86Walk


def _col(frame: Any, name: str, dtype: Any) -> np.ndarray:
    return np.asarray(frame[name]).astype(dtype, copy=False)


def rebuild_walks(walk: Any, element: Any, error: Any = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every walk of the ``walk`` rows rebuilt from the ``walk_element`` rows (``error``: walk_error rows):
    ``(walks, steps)`` as the module docstring says."""
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
    matched = int(counts.sum()) if identity else int(counts[np.unique(pos[found])].sum()) if len(starts) else 0
    walks.attrs["orphan_elements"] = n - matched
    steps = pd.DataFrame({"walk_id": wid, "index": idx, "depth": depth_in_walk, "level": level, "pte": pte},
                         copy=False)
    if cpu is not None:
        steps["cpu"] = cpu
    return walks, steps


def _model_table(addrs: np.ndarray, model_walk: Callable[[int], X86Walk]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    """Model walks needed for ``addrs`` (:class:`ModelCache`): per address the row of its walk, and per
    row the levels, PTEs and depth, and the model's faults."""
    cache = ModelCache(model_walk)
    return cache.table(cache.rows(addrs))


def crosscheck_walks(walks: pd.DataFrame, steps: pd.DataFrame, model_walk: Callable[[int], X86Walk],
                     *, limit: int = 20, lost: LostCpus | None = None) -> CrossCheck:
    """Compare every observed walk with the model's walk of the same address."""
    depth = walks["depth"].to_numpy(np.int64)
    observed = depth > 0
    if not observed.any():
        return CrossCheck(check_summary(int(len(walks)), 0, 0))
    if not observed.all():
        walks = walks[observed]
        depth = depth[observed]
    addrs = walks["addr"].to_numpy(np.uint64)
    row, m_levels, m_ptes, m_depths, faults = _model_table(addrs, model_walk)
    inside = modelled(row, m_depths)
    outside = int((~inside).sum())
    if outside:
        walks, depth, addrs, row = walks[inside], depth[inside], addrs[inside], row[inside]
    if not len(walks):
        return CrossCheck(check_summary(int(len(observed)), 0, 0, outside=outside))
    level = steps["level"].to_numpy()
    pte = steps["pte"].to_numpy(np.uint64)
    model_depth = m_depths[row]
    walk_depth = depth
    first, depth, retried, earlier = compared_passes(level, walks["first_step"].to_numpy(np.int64), depth,
                                                     model_depth)
    bad, first_bad, obs_counts = compare_elements(level, pte, first, depth, row,
                                                  [m_levels[:, d] for d in range(m_levels.shape[1])],
                                                  [m_ptes[:, d] for d in range(m_ptes.shape[1])], model_depth)
    obs_counts += np.bincount(level[earlier].astype(np.int64) + 2, minlength=8)[:8]
    short = np.zeros(len(bad), bool)
    if lost and bad.any():
        cpu = steps["cpu"].to_numpy(np.int64)[first] if "cpu" in steps.columns else np.zeros(len(first), np.int64)
        maybe = np.flatnonzero(bad & lost.on(cpu))
        short[maybe] = cut_short(level, pte, first[maybe], depth[maybe], row[maybe],
                                 [m_levels[:, d] for d in range(m_levels.shape[1])],
                                 [m_ptes[:, d] for d in range(m_ptes.shape[1])], model_depth[maybe])
        bad &= ~short

    walk_ids = walks["walk_id"].to_numpy(np.uint64)
    model = (row, m_levels, m_ptes, m_depths, faults)
    mismatch_rows = [mismatch_row(int(walk_ids[i]), int(addrs[i]), int(first_bad[i]), int(depth[i]), int(first[i]),
                                  level, pte, model, int(row[i]))
                     for i in np.flatnonzero(bad)[:limit].tolist()]
    mismatches = pd.DataFrame(mismatch_rows, columns=MISMATCH_COLUMNS)
    per_level = per_level_table(obs_counts, m_levels, row)
    compared = int(len(walks))
    summary = check_summary(int(len(observed)), compared, compared - int(bad.sum()) - int(short.sum()),
                            int(retried.sum()), outside, int(short.sum()))
    return CrossCheck(summary, mismatches, per_level)


def reference_walk_frame(cap: Any, phase_table: pd.DataFrame, phase: str | None, model_walk: Any = None,
                         limit: int = 20) -> tuple[pd.DataFrame, CrossCheck | None]:
    """The per-walk frame of ``analyze`` (the rebuild's columns but ``first_step``, plus ``cause``,
    ``vcpu`` and ``phase``) cut to ``phase``, and the cross-check of the walks of the cut when
    ``model_walk`` is given: the walk families loaded whole and rebuilt in memory."""
    walk = load(cap, "walk", list(WALK_COLUMNS))
    element = load(cap, "walk_element", [*ELEMENT_COLUMNS, "cpu"])
    error = load(cap, "walk_error", ["walk_id"]) if "walk_error" in cap.families() else None
    rebuilt, steps = rebuild_walks(walk, element, error)
    check = None
    if model_walk is not None:
        cut = rebuilt if phase is None else rebuilt[phases_mod.phase_mask(rebuilt["ts_ns"], phase_table, phase)]
        check = crosscheck_walks(cut, steps, model_walk, limit=limit, lost=LostCpus(cap.manifest))
    orphans = rebuilt.attrs.get("orphan_elements", 0)
    rebuilt = rebuilt.drop(columns="first_step")
    followers = fault_followers(cap)
    if followers is not None:
        followers.add(0, rebuilt["tid"].to_numpy(), rebuilt["ts_ns"].to_numpy())
    rebuilt["cause"] = pd.Categorical.from_codes(cause_codes(len(rebuilt), followers), categories=list(CAUSES))
    rebuilt = add_vcpu(rebuilt, cap.manifest)
    rebuilt["phase"] = phases_mod.label_phases(rebuilt["ts_ns"], phase_table)
    rebuilt = phases_mod.select_phase(rebuilt, phase_table, phase)
    rebuilt.attrs["orphan_elements"] = orphans
    return rebuilt, check


#: The per-walk columns the core and the reference both rebuild.
REBUILT_COLUMNS = ["walk_id", "ts_ns", "tid", "addr", "pferr", "depth", "root_level", "leaf_level", "level_path",
                   "error"]


def core_walks(cap: Any, model_walk: Any = None, limit: int = 20) -> tuple[pd.DataFrame, CrossCheck | None]:
    """The streaming core's per-walk frame (:data:`REBUILT_COLUMNS`, ``attrs["orphan_elements"]``) and,
    with ``model_walk``, its cross-check: what the reference's are compared with."""
    frame = walk_frame(cap, phases_mod.make_phase_table([], "workload"))
    rebuilt = frame[REBUILT_COLUMNS].reset_index(drop=True)
    rebuilt.attrs["orphan_elements"] = frame.attrs["orphan_elements"]
    check = stream_walks(cap, model_walk=model_walk, limit=limit).check if model_walk is not None else None
    return rebuilt, check


class TableCapture:
    """In-memory ``walk`` / ``walk_element`` (and other) tables read through the capture interface
    (``rows``, ``iter_batches``, ``families``, ``schema``, ``manifest``) in batches of ``batch_rows`` at
    most, so a test picks where batches end."""

    def __init__(self, tables: dict[str, pa.Table], manifest: dict | None = None, batch_rows: int | None = None):
        self.tables, self.manifest, self.batch_rows, self.path = tables, manifest or {}, batch_rows, "<tables>"

    def families(self) -> list[str]:
        return sorted(self.tables)

    def schema(self, family: str) -> pa.Schema:
        return self.tables[family].schema

    def rows(self, family: str) -> int:
        return self.tables[family].num_rows if family in self.tables else 0

    def iter_batches(self, family: str, columns: Sequence[str] | None = None,
                     batch_rows: int = 1 << 20) -> Iterator[pa.RecordBatch]:
        table = self.tables[family]
        table = table.select(list(columns)) if columns is not None else table
        return iter(table.to_batches(max_chunksize=min(batch_rows, self.batch_rows or batch_rows)))
