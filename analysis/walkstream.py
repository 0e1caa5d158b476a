"""Guest walks rebuilt and cross-checked while streaming ``walk_element`` segment by segment.

Contract
--------
:func:`stream_walks` gives the same per-walk results as :func:`tracekit.analysis.walks.rebuild_walks`
followed by :func:`tracekit.analysis.crosscheck.crosscheck_walks`, without holding the element columns
in memory: the ``walk`` family is read whole (``walk_id``, ``ts_ns``, ``tid``, ``addr``, ``pferr``),
``walk_element`` one segment at a time (the rows of the last walk of a segment are carried into the
next), so memory grows with walks, not with elements. The elements are read as one stream while their
walk ids increase, then as one stream per CPU (the recorder drains each CPU's buffer in order, so ids
interleave across CPUs but increase within each); when even that order breaks, or one walk's rows
appear on two CPUs, it returns None and the caller uses the in-memory path. Mismatches are the first
``limit`` found, sorted by walk id. Returns ``(walks, check)``: ``walks`` has the columns of ``rebuild_walks`` except ``first_step``
(there is no steps table); ``check`` is a :class:`~tracekit.analysis.crosscheck.CrossCheck` (None
without ``model_walk``) whose ``per_walk`` frame is left empty. Raises what reading the capture raises.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from tracekit.analysis.common import load
from tracekit.analysis.crosscheck import (_AD, _NO_LEVEL, MISMATCH_COLUMNS, CrossCheck, _model_table, check_summary,
                                          mismatch_row, per_level_table)
from tracekit.analysis.walks import ELEMENT_COLUMNS, WALK_COLUMNS, leaf_levels, level_paths

__all__ = ["stream_walks"]


class _State:
    """Per-walk outputs filled segment by segment."""

    def __init__(self, w_wid: np.ndarray, model: tuple | None, limit: int, selected: np.ndarray | None):
        n = len(w_wid)
        self.selected = selected
        self.w_wid = w_wid
        self.depth = np.zeros(n, np.int16)
        self.root = np.full(n, -1, np.int8)
        self.leaf = np.full(n, -1, np.int8)
        self.path = np.zeros(n, np.int64)
        self.bad = np.zeros(n, bool)
        self.orphans = 0
        self.model = model
        self.limit = limit
        self.mismatches: list[tuple] = []
        self.observed_levels = np.zeros(8, np.int64)
        self.conflict = False
        dense = n > 0 and int(w_wid[-1]) - int(w_wid[0]) == n - 1
        self.dense_base = w_wid[0] if dense else None

    def process(self, wid: np.ndarray, level: np.ndarray, pte: np.ndarray, addrs: np.ndarray) -> None:
        n = len(wid)
        if n == 0:
            return
        starts = np.flatnonzero(np.concatenate(([True], wid[1:] != wid[:-1])))
        counts = np.diff(np.append(starts, n))
        g_wid = wid[starts]
        if self.dense_base is not None:  # walk ids first..first+n-1: the id is the row
            wi = (g_wid - self.dense_base).astype(np.int64)
            found = (g_wid >= self.dense_base) & (wi < len(self.w_wid))
            wi = np.where(found, wi, 0)
        else:
            wi = np.clip(np.searchsorted(self.w_wid, g_wid), 0, max(len(self.w_wid) - 1, 0))
            found = (self.w_wid[wi] == g_wid) if len(self.w_wid) else np.zeros(len(g_wid), bool)
        if not found.all():
            self.orphans += int(counts[~found].sum())
            starts, counts, wi = starts[found], counts[found], wi[found]
        if len(starts) == 0:
            return
        if bool(np.any(self.depth[wi] > 0)):  # a walk's rows in two streams: not safe to stream
            self.conflict = True
        ends = starts + counts - 1
        self.depth[wi] = counts
        self.root[wi] = level[starts]
        self.leaf[wi] = leaf_levels(level[ends], pte[ends])
        self.path[wi] = level_paths(level, starts, counts)
        if self.model is None:
            return
        if self.selected is not None:
            keep = self.selected[wi]
            if not keep.all():
                starts, counts, wi = starts[keep], counts[keep], wi[keep]
            if len(starts) == 0:
                return
        for d in range(int(counts.max())):
            lv = level[starts[counts > d] + d].astype(np.int64)
            self.observed_levels += np.bincount(lv + 2, minlength=8)[:8]
        self._compare(level, pte, addrs, starts, counts, wi)

    def _compare(self, level, pte, addrs, starts, counts, wi) -> None:
        row, m_levels, m_ptes, m_depths, _ = self.model
        rows = row[wi]
        model_depth = m_depths[rows]
        bad = counts != model_depth
        first_bad = np.where(bad, np.minimum(counts, model_depth), -1)
        for d in range(int(counts.max())):
            has = np.flatnonzero(counts > d)
            e = starts[has] + d
            r = rows[has]
            m_level = m_levels[r, d] if d < m_levels.shape[1] else np.full(len(r), _NO_LEVEL, np.int8)
            m_pte = m_ptes[r, d] if d < m_ptes.shape[1] else np.zeros(len(r), np.uint64)
            wrong = (level[e] != m_level) | (((pte[e] ^ m_pte) & ~_AD) != 0)
            newly = wrong & ((first_bad[has] < 0) | (first_bad[has] > d))
            first_bad[has[newly]] = d
            bad[has] |= wrong
        self.bad[wi] = bad
        for i in np.flatnonzero(bad)[: max(self.limit - len(self.mismatches), 0)].tolist():
            w = int(wi[i])
            self.mismatches.append(mismatch_row(int(self.w_wid[w]), int(addrs[w]), int(first_bad[i]), int(counts[i]),
                                                int(starts[i]), level, pte, self.model, int(rows[i])))


def _sorted_within(wid: np.ndarray, idx: np.ndarray) -> bool:
    if len(wid) < 2:
        return True
    same = wid[1:] == wid[:-1]
    return bool(np.all(wid[1:] >= wid[:-1])) and not bool(np.any(same & (idx[1:] <= idx[:-1])))


class _Stream:
    """Elements of one ordered stream (the whole capture, or one CPU's rows) with the carried last walk."""

    def __init__(self, state: _State, addrs: np.ndarray):
        self.state = state
        self.addrs = addrs
        self.carry: list[np.ndarray] | None = None

    def feed(self, columns: list[np.ndarray]) -> bool:
        """Process the complete walks of ``columns`` (wid, idx, level, pte); False if out of order."""
        wid = columns[0]
        if len(wid) == 0:
            return True
        if self.carry is not None:
            last = self.carry[0][-1]
            if wid[0] < last:
                return False
            # Only the rows continuing the carried walk are joined to it (no copy of the batch).
            head = int(np.searchsorted(wid, last, side="right")) if wid[0] == last else 0
            joined = [np.concatenate((a, b[:head])) for a, b in zip(self.carry, columns)]
            if not _sorted_within(joined[0], joined[1]):
                return False
            if head == len(wid):
                self.carry = joined
                return True
            self.state.process(joined[0], joined[2], joined[3], self.addrs)
            columns = [c[head:] for c in columns]
            wid = columns[0]
        if not _sorted_within(wid, columns[1]):
            return False
        tail = int(np.searchsorted(wid, wid[-1], side="left"))
        self.carry = [c[tail:] for c in columns]
        self.state.process(wid[:tail], columns[2][:tail], columns[3][:tail], self.addrs)
        return True

    def flush(self) -> None:
        if self.carry is not None:
            self.state.process(self.carry[0], self.carry[2], self.carry[3], self.addrs)
            self.carry = None


def _feed_all(cap: Any, state: _State, addrs: np.ndarray) -> bool:
    """Stream ``walk_element``: as one ordered stream while walk ids stay in order, then one stream
    per CPU (each CPU's ring buffer is drained in order). False when even that order breaks."""
    whole = _Stream(state, addrs)
    per_cpu: dict[int, _Stream] | None = None
    for table in cap.iter_tables("walk_element", [*ELEMENT_COLUMNS, "cpu"]):
        for batch in table.to_batches():  # one batch per Parquet row group: zero-copy columns
            columns = [batch.column(c).to_numpy() for c in ELEMENT_COLUMNS]
            cpu = batch.column("cpu").to_numpy()
            if per_cpu is None:
                carry_last = whole.carry[0][-1] if whole.carry is not None else None
                if _sorted_within(columns[0], columns[1]) and (carry_last is None or columns[0][0] >= carry_last):
                    if not whole.feed(columns):
                        return False
                    whole_cpu = cpu  # the CPU of the carried rows, if the order breaks later
                    continue
                per_cpu = {}
                if whole.carry is not None:
                    carried_cpu = np.unique(whole_cpu[len(whole_cpu) - len(whole.carry[0]):])
                    if len(carried_cpu) != 1:
                        return False
                    per_cpu[int(carried_cpu[0])] = whole
            for value in np.unique(cpu).tolist():
                mask = cpu == value
                stream = per_cpu.setdefault(value, _Stream(state, addrs))
                if not stream.feed([c[mask] for c in columns]):
                    return False
    for stream in (per_cpu or {0: whole}).values():
        stream.flush()
    return not state.conflict


def stream_walks(cap: Any, model_walk: Callable | None = None, *, limit: int = 20,
                 select: Callable[[pd.DataFrame], np.ndarray] | None = None
                 ) -> tuple[pd.DataFrame, CrossCheck | None] | None:
    """Rebuild (and cross-check) every walk streaming the elements; None when ids are out of order.

    ``select(walk_frame) -> bool array`` limits the cross-check to some walks (a phase cut); every
    walk is still rebuilt."""
    walk = load(cap, "walk", list(WALK_COLUMNS))
    w_wid = walk["walk_id"].to_numpy(np.uint64)
    order = None
    if len(w_wid) > 1 and not bool(np.all(w_wid[1:] > w_wid[:-1])):
        order = np.argsort(w_wid, kind="stable")
        w_wid = w_wid[order]
        if bool(np.any(w_wid[1:] == w_wid[:-1])):
            return None
    addrs = walk["addr"].to_numpy(np.uint64)
    addrs_sorted = addrs if order is None else addrs[order]
    model = _model_table(addrs_sorted, model_walk) if model_walk is not None and len(addrs) else None
    selected = None if select is None else np.asarray(select(walk), bool)
    state = _State(w_wid, model, limit, selected if selected is None or order is None else selected[order])
    if not _feed_all(cap, state, addrs_sorted):
        return None
    if order is not None:
        for name in ("depth", "root", "leaf", "path", "bad"):
            values = getattr(state, name)
            original = np.empty_like(values)
            original[order] = values
            setattr(state, name, original)
        state.w_wid = walk["walk_id"].to_numpy(np.uint64)
        state.selected = selected
        state.mismatches.sort()
    w_wid = state.w_wid
    error_ids = load(cap, "walk_error", ["walk_id"])["walk_id"].to_numpy(np.uint64) \
        if "walk_error" in cap.families() else np.zeros(0, np.uint64)
    walks = pd.DataFrame({
        "walk_id": w_wid, "ts_ns": walk["ts_ns"].to_numpy(np.int64), "tid": walk["tid"].to_numpy(np.int32),
        "addr": addrs, "pferr": walk["pferr"].to_numpy(np.uint32), "depth": state.depth, "root_level": state.root,
        "leaf_level": state.leaf, "level_path": state.path,
        "error": np.isin(w_wid, error_ids) if len(error_ids) else np.zeros(len(w_wid), bool),
    }, copy=False)
    walks.attrs["orphan_elements"] = state.orphans
    if model is None:
        return walks, None
    row, m_levels, _, _, _ = model
    observed = state.depth > 0
    if state.selected is not None:
        observed &= state.selected
    compared = int(observed.sum())
    per_level = per_level_table(state.observed_levels, m_levels, row[observed])
    summary = check_summary(int(len(walks) if state.selected is None else state.selected.sum()), compared,
                            compared - int((state.bad & observed).sum()))
    per_walk = pd.DataFrame(columns=["walk_id", "addr", "depth", "model_depth", "match"])
    return walks, CrossCheck(summary, per_walk, pd.DataFrame(state.mismatches, columns=MISMATCH_COLUMNS), per_level)
