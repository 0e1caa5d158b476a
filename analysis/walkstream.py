"""Guest walks rebuilt and cross-checked while streaming ``walk_element`` segment by segment.

Contract
--------
:func:`stream_walks` gives the same per-walk results as :func:`tracekit.analysis.walks.rebuild_walks`
followed by :func:`tracekit.analysis.crosscheck.crosscheck_walks`, without holding the element columns
in memory: the ``walk`` family is read whole (``walk_id``, ``ts_ns``, ``tid``, ``addr``, ``pferr``),
``walk_element`` one segment at a time (the rows of the last walk of a segment are carried into the
next), so memory grows with walks, not with elements. It needs walk ids in increasing order in both
families (the order the recorder writes); otherwise it returns None and the caller uses the in-memory
path. Returns ``(walks, check)``: ``walks`` has the columns of ``rebuild_walks`` except ``first_step``
(there is no steps table); ``check`` is a :class:`~tracekit.analysis.crosscheck.CrossCheck` (None
without ``model_walk``) whose ``per_walk`` frame is left empty. Raises what reading the capture raises.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from tracekit.analysis.common import load
from tracekit.analysis.crosscheck import _AD, _NO_LEVEL, MISMATCH_COLUMNS, CrossCheck, _model_table, mismatch_row
from tracekit.analysis.walks import ELEMENT_COLUMNS, PTE_PRESENT, PTE_PS, WALK_COLUMNS

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

    def process(self, wid: np.ndarray, level: np.ndarray, pte: np.ndarray, addrs: np.ndarray) -> None:
        n = len(wid)
        if n == 0:
            return
        starts = np.flatnonzero(np.concatenate(([True], wid[1:] != wid[:-1])))
        counts = np.diff(np.append(starts, n))
        g_wid = wid[starts]
        wi = np.clip(np.searchsorted(self.w_wid, g_wid), 0, max(len(self.w_wid) - 1, 0))
        found = (self.w_wid[wi] == g_wid) if len(self.w_wid) else np.zeros(len(g_wid), bool)
        if not found.all():
            self.orphans += int(counts[~found].sum())
            starts, counts, wi = starts[found], counts[found], wi[found]
        if len(starts) == 0:
            return
        ends = starts + counts - 1
        last, last_pte = level[ends], pte[ends]
        translates = ((last_pte & PTE_PRESENT) != 0) & (
            (last == 1) | (((last_pte & PTE_PS) != 0) & ((last == 2) | (last == 3))))
        self.depth[wi] = counts
        self.root[wi] = level[starts]
        self.leaf[wi] = np.where(translates, last, -1)
        path = np.zeros(len(starts), np.int64)
        for d in range(int(min(counts.max(), 18))):
            has = counts > d
            path[has] = path[has] * 10 + level[starts[has] + d]
        self.path[wi] = path
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


def stream_walks(cap: Any, model_walk: Callable | None = None, *, limit: int = 20,
                 select: Callable[[pd.DataFrame], np.ndarray] | None = None
                 ) -> tuple[pd.DataFrame, CrossCheck | None] | None:
    """Rebuild (and cross-check) every walk streaming the elements; None when ids are out of order.

    ``select(walk_frame) -> bool array`` limits the cross-check to some walks (a phase cut); every
    walk is still rebuilt."""
    walk = load(cap, "walk", list(WALK_COLUMNS))
    w_wid = walk["walk_id"].to_numpy(np.uint64)
    if len(w_wid) > 1 and not bool(np.all(w_wid[1:] > w_wid[:-1])):
        return None
    addrs = walk["addr"].to_numpy(np.uint64)
    model = _model_table(addrs, model_walk) if model_walk is not None and len(addrs) else None
    state = _State(w_wid, model, limit, None if select is None else np.asarray(select(walk), bool))
    carry: list[np.ndarray] | None = None
    for table in cap.iter_tables("walk_element", list(ELEMENT_COLUMNS)):
        for batch in table.to_batches():  # one batch per Parquet row group: zero-copy columns
            columns = [batch.column(c).to_numpy() for c in ELEMENT_COLUMNS]
            wid = columns[0]
            if len(wid) == 0:
                continue
            if carry is not None:
                last = carry[0][-1]
                if wid[0] < last:
                    return None
                # Only the rows continuing the carried walk are joined to it (no copy of the batch).
                head = int(np.searchsorted(wid, last, side="right")) if wid[0] == last else 0
                joined = [np.concatenate((a, b[:head])) for a, b in zip(carry, columns)]
                if not _sorted_within(joined[0], joined[1]):
                    return None
                if head == len(wid):
                    carry = joined
                    continue
                state.process(joined[0], joined[2], joined[3], addrs)
                columns = [c[head:] for c in columns]
                wid = columns[0]
            if not _sorted_within(wid, columns[1]):
                return None
            tail = int(np.searchsorted(wid, wid[-1], side="left"))
            carry = [c[tail:] for c in columns]
            state.process(wid[:tail], columns[2][:tail], columns[3][:tail], addrs)
    if carry is not None:
        state.process(carry[0], carry[2], carry[3], addrs)
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
    matched = compared - int((state.bad & observed).sum())
    model_counts = np.zeros(8, np.int64)
    for d in range(m_levels.shape[1]):
        lv = m_levels[row[observed], d].astype(np.int64)
        model_counts += np.bincount(lv[lv != _NO_LEVEL] + 2, minlength=8)[:8]
    levels_seen = [lv for lv in range(7, -1, -1) if state.observed_levels[lv] or model_counts[lv]]
    per_level = pd.DataFrame({"level": [lv - 2 for lv in levels_seen],
                              "observed": [int(state.observed_levels[lv]) for lv in levels_seen],
                              "model": [int(model_counts[lv]) for lv in levels_seen]})
    summary = {"walks": int(len(walks) if state.selected is None else state.selected.sum()), "compared": compared, "matched": matched,
               "match_rate": matched / compared if compared else None, "mismatched": compared - matched,
               "verdict": ("match" if matched == compared else "mismatch") if compared else "no walks"}
    per_walk = pd.DataFrame(columns=["walk_id", "addr", "depth", "model_depth", "match"])
    return walks, CrossCheck(summary, per_walk, pd.DataFrame(state.mismatches, columns=MISMATCH_COLUMNS), per_level)
