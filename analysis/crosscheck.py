"""Observed x86 guest walks compared with the reference model's walks of the same guest page tables.

Contract
--------
- :func:`model_from_layout` rebuilds :class:`tracekit.model.x86.X86PageTables` from the built-in
  workload's layout record (``workload.guest_paging``: ``levels``, ``root_gpa``, ``table_gpas``,
  ``mappings`` [{``gva``, ``gpa``, ``size``, ``page_size``}] in mapping order), serialises it at
  the first table address and checks that the root and every table address agree with the record.
  Returns the model's ``walk(gva)`` function. Raises AnalysisError when the record is missing or
  the rebuilt tables differ.
- :func:`crosscheck_walks` takes ``walks`` and ``steps`` from
  :func:`tracekit.analysis.walks.rebuild_walks` and a ``model_walk(gva) -> X86Walk``; every walk
  with at least one element is compared level by level (KVM level and guest PTE, the PTE compared
  ignoring the Accessed and Dirty bits the walker sets, ``pte_equal_ignoring_ad``), and the walk
  depth must agree. The model is walked once per distinct 4 KiB page. Returns a
  :class:`CrossCheck`: ``summary`` (dict: ``walks``, ``compared``, ``matched``, ``match_rate``,
  ``mismatched``, ``verdict`` ``"match"`` / ``"mismatch"`` / ``"no walks"``), ``per_walk``
  (walk_id, addr, depth, model_depth, match, first_mismatch_depth) and ``mismatches`` (the first
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

__all__ = ["CrossCheck", "model_from_layout", "crosscheck_walks", "MISMATCH_COLUMNS"]

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


def _model_steps(pages: np.ndarray, model_walk: Callable[[int], X86Walk]) -> tuple[pd.DataFrame, dict[int, str]]:
    rows = []
    faults: dict[int, str] = {}
    depth_of: dict[int, int] = {}
    for page in pages.tolist():
        try:
            walk = model_walk(int(page))
        except ModelError as error:
            faults[int(page)] = str(error)
            depth_of[int(page)] = 0
            continue
        depth_of[int(page)] = walk.depth
        for depth, step in enumerate(walk.levels):
            rows.append((page, depth, step.level, step.pte))
    frame = pd.DataFrame(rows, columns=["page", "depth", "model_level", "model_pte"])
    frame["page"] = frame["page"].astype(np.uint64)
    frame["model_pte"] = frame["model_pte"].astype(np.uint64)
    frame.attrs["depth_of"] = depth_of
    return frame, faults


def crosscheck_walks(walks: pd.DataFrame, steps: pd.DataFrame, model_walk: Callable[[int], X86Walk],
                     *, limit: int = 20) -> CrossCheck:
    """Compare every observed walk with the model's walk of the same address."""
    observed = walks[walks["depth"] > 0]
    empty = pd.DataFrame(columns=["walk_id", "addr", "depth", "model_depth", "match", "first_mismatch_depth"])
    if observed.empty:
        return CrossCheck({"walks": int(len(walks)), "compared": 0, "matched": 0, "match_rate": None,
                           "mismatched": 0, "verdict": "no walks"}, empty)
    pages = observed["addr"].to_numpy(np.uint64) & _PAGE_MASK
    model, faults = _model_steps(np.unique(pages), model_walk)
    depth_of = model.attrs["depth_of"]

    per_walk = pd.DataFrame({"walk_id": observed["walk_id"].to_numpy(np.uint64),
                             "addr": observed["addr"].to_numpy(np.uint64),
                             "page": pages, "depth": observed["depth"].to_numpy(np.int64)})
    per_walk["model_depth"] = np.array([depth_of[int(p)] for p in np.unique(pages)])[
        np.searchsorted(np.unique(pages), pages)]
    obs = steps.merge(per_walk[["walk_id", "page"]], on="walk_id", how="inner")
    both = obs.merge(model, on=["page", "depth"], how="left")
    level_bad = both["model_level"].isna() | (both["level"] != both["model_level"].fillna(-99))
    pte_obs = both["pte"].to_numpy(np.uint64)
    pte_model = both["model_pte"].fillna(0).to_numpy(np.uint64)
    pte_bad = (pte_obs & ~_AD) != (pte_model & ~_AD)
    both["bad"] = level_bad.to_numpy() | pte_bad
    first_bad = both[both["bad"]].groupby("walk_id")["depth"].min()
    per_walk["first_mismatch_depth"] = per_walk["walk_id"].map(first_bad)
    depth_bad = per_walk["depth"] != per_walk["model_depth"]
    shorter = np.minimum(per_walk["depth"], per_walk["model_depth"])
    per_walk.loc[depth_bad & per_walk["first_mismatch_depth"].isna(), "first_mismatch_depth"] = shorter
    per_walk["match"] = per_walk["first_mismatch_depth"].isna()
    per_walk["first_mismatch_depth"] = per_walk["first_mismatch_depth"].astype("Int64")

    bad_walks = per_walk[~per_walk["match"]].head(limit)
    mismatch_rows = []
    for wid, addr, page, depth, model_depth, at in zip(bad_walks["walk_id"], bad_walks["addr"], bad_walks["page"],
                                                       bad_walks["depth"], bad_walks["model_depth"],
                                                       bad_walks["first_mismatch_depth"]):
        row = both[(both["walk_id"] == wid) & (both["depth"] == at)]
        if len(row):
            r = row.iloc[0]
            m_level = None if pd.isna(r["model_level"]) else int(r["model_level"])
            m_pte = None if m_level is None else int(r["model_pte"])
            reason = "level differs" if m_level != int(r["level"]) else "pte differs"
            if m_level is None:
                reason = f"model walk ends at depth {model_depth}" + (f" ({faults[int(page)]})" if int(page) in faults else "")
            mismatch_rows.append((wid, addr, int(at), int(r["level"]), int(r["pte"]), m_level, m_pte, reason))
        else:
            m = model[(model["page"] == page) & (model["depth"] == at)]
            m_level = int(m["model_level"].iloc[0]) if len(m) else None
            m_pte = int(m["model_pte"].iloc[0]) if len(m) else None
            mismatch_rows.append((wid, addr, int(at), None, None, m_level, m_pte,
                                  f"observed walk ends at depth {depth}, model at {model_depth}"))
    mismatches = pd.DataFrame(mismatch_rows, columns=MISMATCH_COLUMNS)
    matched = int(per_walk["match"].sum())
    compared = int(len(per_walk))
    summary = {"walks": int(len(walks)), "compared": compared, "matched": matched,
               "match_rate": matched / compared, "mismatched": compared - matched,
               "verdict": "match" if matched == compared else "mismatch"}
    observed_levels = obs.groupby("level").size().rename("observed")
    model_levels = per_walk[["page"]].merge(model, on="page").groupby("model_level").size().rename("model")
    per_level = pd.concat([observed_levels, model_levels], axis=1).fillna(0).astype(np.int64)
    per_level = per_level.rename_axis("level").reset_index().sort_values("level", ascending=False)
    return CrossCheck(summary, per_walk.drop(columns="page"), mismatches, per_level.reset_index(drop=True))
