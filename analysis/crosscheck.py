"""Observed x86 guest walks compared with the reference model's walks of the same guest page tables.

Contract
--------
- :func:`model_from_layout` rebuilds :class:`tracekit.model.x86.X86PageTables` from the built-in
  workload's layout record (``workload.guest_paging``: ``levels``, ``root_gpa``, ``table_gpas``,
  ``mappings`` [{``gva``, ``gpa``, ``size``, ``page_size``}] in mapping order), serialises it at
  the first table address and checks that the root and every table address agree with the record.
  Levels may be -1..5 (per-level counts cover that range).
  Returns the model's ``walk(gva)`` function. Raises AnalysisError when the record is missing or
  the rebuilt tables differ.
- :func:`crosscheck_walks` takes ``walks`` and ``steps`` from
  :func:`tracekit.analysis.walks.rebuild_walks` and a ``model_walk(gva) -> X86Walk``; every walk
  with at least one element is compared level by level (KVM level and guest PTE, the PTE compared
  ignoring the Accessed and Dirty bits the walker sets, ``pte_equal_ignoring_ad``), and the walk
  depth must agree. The model is walked once per 2 MiB region mapped by a huge leaf, else once per
  distinct 4 KiB page; the comparison itself is vectorised, one pass per depth. Returns a
  :class:`CrossCheck`: ``summary`` (dict: ``walks``, ``compared``, ``matched``, ``match_rate``,
  ``mismatched``, ``verdict`` ``"match"`` / ``"mismatch"`` / ``"no walks"``), ``per_walk``
  (walk_id, addr, depth, model_depth, match) and ``mismatches`` (the first
  ``limit`` mismatching walks: walk_id, addr, depth of the first difference, observed_level,
  observed_pte, model_level, model_pte, reason) and ``per_level`` (level, observed: PTE reads at that
  level, model: the model's reads for the same walks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from tracekit.errors import AnalysisError, ModelError
from tracekit.model.x86 import PTE_AD_MASK, X86PageTables, X86Walk

__all__ = ["CrossCheck", "model_from_layout", "crosscheck_walks", "mismatch_row", "MISMATCH_COLUMNS",
           "check_summary", "per_level_table"]

MISMATCH_COLUMNS = ["walk_id", "addr", "depth", "observed_level", "observed_pte", "model_level", "model_pte", "reason"]
_PAGE_MASK = np.uint64(~0xFFF & (2**64 - 1))
_AD = np.uint64(PTE_AD_MASK)


@dataclass
class CrossCheck:
    """Result of :func:`crosscheck_walks` (see the module docstring)."""

    summary: dict
    per_walk: pd.DataFrame
    mismatches: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=MISMATCH_COLUMNS))
    per_level: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["level", "observed", "model"]))


def model_from_layout(workload: dict | None) -> Callable[[int], X86Walk]:
    """The model's walk function for the guest page tables described by a workload layout record."""
    paging = (workload or {}).get("guest_paging") or {}
    mappings = paging.get("mappings")
    if not mappings or "root_gpa" not in paging:
        raise AnalysisError("the capture has no workload guest-paging record to rebuild the model from")
    if (workload or {}).get("arch", "x86_64") not in ("x86_64", "x86"):
        raise AnalysisError(f"the workload's guest is {workload.get('arch')}, not x86-64")
    try:
        tables = X86PageTables(levels=int(paging.get("levels", 4)))
        for m in mappings:
            tables.map(int(m["gva"]), int(m["gpa"]), int(m["size"]), int(m.get("page_size", 4096)), user=True)
        recorded = sorted(int(t) for t in paging.get("table_gpas") or [])
        base = recorded[0] if recorded else int(paging["root_gpa"])
        root, pages = tables.serialize(base)
    except (ModelError, KeyError, TypeError, ValueError) as error:
        raise AnalysisError(f"cannot rebuild the guest page tables from the workload record: {error}") from error
    if root != int(paging["root_gpa"]) or (recorded and sorted(pages) != recorded):
        raise AnalysisError("the rebuilt guest page tables do not match the workload record "
                            f"(root {root:#x} vs {int(paging['root_gpa']):#x}, {len(pages)} vs {len(recorded)} tables)")
    return tables.walk


_NO_LEVEL = -128


def _model_table(addrs: np.ndarray, model_walk: Callable[[int], X86Walk]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    """Model walks needed for ``addrs``: per address the row of its walk, and per row the levels, PTEs
    and depth. The model is walked once per 2 MiB region whose walk ends on a 2 MiB or 1 GiB leaf
    (every address inside shares it), else once per distinct 4 KiB page."""
    region = addrs >> np.uint64(21)
    low = region.min() if len(region) else np.uint64(0)
    if len(region) and int(region.max()) - int(low) < 1 << 22:  # a compact range: its offsets are the codes
        offsets = (region - low).astype(np.int64)
        present = np.flatnonzero(np.bincount(offsets) > 0)
        lookup = np.zeros(int(offsets.max()) + 1, np.int64)
        lookup[present] = np.arange(len(present))
        r_codes, r_uniques = lookup[offsets], present.astype(np.uint64) + low
    else:
        r_codes, r_uniques = pd.factorize(region)
    walks: list[X86Walk | None] = []
    faults: dict[int, str] = {}

    def walk_of(gva: int) -> X86Walk | None:
        try:
            return model_walk(gva)
        except ModelError as error:
            faults[gva] = str(error)
            return None

    region_row = np.full(len(r_uniques), -1, np.int64)
    small_regions = []
    for i, r in enumerate(np.asarray(r_uniques, dtype=np.uint64).tolist()):
        w = walk_of(r << 21)
        if w is not None and w.leaf_level in (2, 3):
            region_row[i] = len(walks)
            walks.append(w)
        else:
            small_regions.append(i)
    row = region_row[r_codes]
    if small_regions:
        small = np.isin(r_codes, small_regions)
        pages = addrs[small] & _PAGE_MASK
        p_codes, p_uniques = pd.factorize(pages)
        base = len(walks)
        for page in np.asarray(p_uniques, dtype=np.uint64).tolist():
            walks.append(walk_of(page))
        row[small] = base + p_codes
    depth = max((len(w.levels) for w in walks if w is not None), default=0)
    levels = np.full((len(walks), max(depth, 1)), _NO_LEVEL, np.int8)
    ptes = np.zeros((len(walks), max(depth, 1)), np.uint64)
    depths = np.zeros(len(walks), np.int64)
    for i, w in enumerate(walks):
        if w is None:
            continue
        depths[i] = len(w.levels)
        for d, st in enumerate(w.levels):
            levels[i, d] = st.level
            ptes[i, d] = st.pte
    return row, levels, ptes, depths, faults


def mismatch_row(walk_id: int, addr: int, at: int, depth: int, first: int, level: np.ndarray, pte: np.ndarray,
                 model: tuple, model_row: int) -> tuple:
    """The :data:`MISMATCH_COLUMNS` row of a walk whose first difference is at depth ``at``; ``first`` is
    the row of its first element in ``level`` / ``pte``, ``model`` what :func:`_model_table` returned."""
    _, m_levels, m_ptes, m_depths, faults = model
    model_depth = int(m_depths[model_row])
    m_level = int(m_levels[model_row, at]) if at < m_levels.shape[1] and m_levels[model_row, at] != _NO_LEVEL else None
    m_pte = int(m_ptes[model_row, at]) if m_level is not None else None
    if at >= depth:
        return (walk_id, addr, at, None, None, m_level, m_pte,
                f"observed walk ends at depth {depth}, model at {model_depth}")
    o_level, o_pte = int(level[first + at]), int(pte[first + at])
    if m_level is None:
        fault = faults.get(addr & ~0xFFF) or faults.get((addr >> 21) << 21)
        reason = f"model walk ends at depth {model_depth}" + (f" ({fault})" if fault else "")
    else:
        reason = "level differs" if m_level != o_level else "pte differs"
    return (walk_id, addr, at, o_level, o_pte, m_level, m_pte, reason)


def check_summary(walks: int, compared: int, matched: int) -> dict:
    """The :class:`CrossCheck` ``summary`` dict for ``walks`` walks of which ``compared`` were compared
    and ``matched`` matched (verdict ``"no walks"`` when none was compared)."""
    return {"walks": walks, "compared": compared, "matched": matched,
            "match_rate": matched / compared if compared else None, "mismatched": compared - matched,
            "verdict": ("match" if matched == compared else "mismatch") if compared else "no walks"}


def per_level_table(observed_counts: np.ndarray, model_levels: np.ndarray, model_rows: np.ndarray) -> pd.DataFrame:
    """The :class:`CrossCheck` ``per_level`` frame: ``observed_counts`` (PTE reads per level + 2, 8
    slots) next to the model's reads per level for the walks whose model rows are ``model_rows``
    (``model_levels`` as :func:`_model_table` returns them), levels from the highest down."""
    model_counts = np.zeros(8, np.int64)
    for d in range(model_levels.shape[1]):
        lv = model_levels[model_rows, d].astype(np.int64)
        model_counts += np.bincount(lv[lv != _NO_LEVEL] + 2, minlength=8)[:8]
    levels_seen = [lv for lv in range(7, -1, -1) if observed_counts[lv] or model_counts[lv]]
    return pd.DataFrame({"level": [lv - 2 for lv in levels_seen],
                         "observed": [int(observed_counts[lv]) for lv in levels_seen],
                         "model": [int(model_counts[lv]) for lv in levels_seen]})


def crosscheck_walks(walks: pd.DataFrame, steps: pd.DataFrame, model_walk: Callable[[int], X86Walk],
                     *, limit: int = 20) -> CrossCheck:
    """Compare every observed walk with the model's walk of the same address."""
    depth = walks["depth"].to_numpy(np.int64)
    observed = depth > 0
    if not observed.any():
        empty = pd.DataFrame(columns=["walk_id", "addr", "depth", "model_depth", "match"])
        return CrossCheck(check_summary(int(len(walks)), 0, 0), empty)
    if not observed.all():
        walks = walks[observed]
        depth = depth[observed]
    addrs = walks["addr"].to_numpy(np.uint64)
    first = walks["first_step"].to_numpy(np.int64)
    row, m_levels, m_ptes, m_depths, faults = _model_table(addrs, model_walk)
    level = steps["level"].to_numpy()
    pte = steps["pte"].to_numpy(np.uint64)
    model_depth = m_depths[row]
    bad = depth != model_depth
    first_bad = np.where(bad, np.minimum(depth, model_depth), -1)
    obs_counts = np.zeros(8, np.int64)
    for d in range(int(depth.max())):
        has = depth > d
        sel_all = bool(has.all())
        e = first + d if sel_all else first[has] + d
        r = row if sel_all else row[has]
        m_level = m_levels[r, d] if d < m_levels.shape[1] else np.full(len(r), _NO_LEVEL, np.int8)
        m_pte = m_ptes[r, d] if d < m_ptes.shape[1] else np.zeros(len(r), np.uint64)
        o_level = level[e]
        wrong = (o_level != m_level) | (((pte[e] ^ m_pte) & ~_AD) != 0)
        if sel_all:
            newly = wrong & ((first_bad < 0) | (first_bad > d))
            first_bad[newly] = d
            bad |= wrong
        else:
            idx = np.flatnonzero(has)
            newly = wrong & ((first_bad[idx] < 0) | (first_bad[idx] > d))
            first_bad[idx[newly]] = d
            bad[idx] |= wrong
        obs_counts += np.bincount(o_level.astype(np.int64) + 2, minlength=8)[:8]

    walk_ids = walks["walk_id"].to_numpy(np.uint64)
    per_walk = pd.DataFrame({"walk_id": walk_ids, "addr": addrs, "depth": depth, "model_depth": model_depth,
                             "match": ~bad}, copy=False)
    model = (row, m_levels, m_ptes, m_depths, faults)
    mismatch_rows = [mismatch_row(int(walk_ids[i]), int(addrs[i]), int(first_bad[i]), int(depth[i]), int(first[i]),
                                  level, pte, model, int(row[i]))
                     for i in np.flatnonzero(bad)[:limit].tolist()]
    mismatches = pd.DataFrame(mismatch_rows, columns=MISMATCH_COLUMNS)
    per_level = per_level_table(obs_counts, m_levels, row)
    compared = int(len(walks))
    summary = check_summary(int(len(observed)), compared, compared - int(bad.sum()))
    return CrossCheck(summary, per_walk, mismatches, per_level)
