"""Guest page-table walk shapes and the tables made of them (x86 walks; arm64 stage-2 visits).

A walk's shape is its ``depth`` (elements read, saturated at 32767: :func:`depth_of`), ``root_level``,
``leaf_level`` (the last element's level when it translates, else -1: :func:`leaf_levels`) and
``level_path`` (its levels as decimal digits, 432 = 4>3>2: :func:`level_paths`); walks are rebuilt by
:mod:`.walkstream`. :func:`depth_distribution` counts walks per depth and leaf level;
:func:`stage2_walk_visits` and :func:`stage2_distribution` do the same for arm64 stage-2 walks' visits
per initiator, visitor, level and kind. Columns and units: docs/analysis.md.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from tracekit.analysis.common import count_by
from tracekit.model import x86
from tracekit.schema import TK_WALK_MAX_ELEMENTS

__all__ = [
    "MAX_WALK_ELEMENTS",
    "depth_of",
    "malformed_walks",
    "WALK_COLUMNS",
    "ELEMENT_COLUMNS",
    "PTE_PRESENT",
    "PTE_PS",
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


def leaf_levels(last_level: np.ndarray, last_pte: np.ndarray) -> np.ndarray:
    """Per walk, the level of its last element when that element translates (present, and level 1
    or PS at level 2/3), else -1 (int8)."""
    present = (last_pte & PTE_PRESENT) != 0
    huge = ((last_pte & PTE_PS) != 0) & ((last_level == 2) | (last_level == 3))
    return np.where(present & ((last_level == 1) | huge), last_level, -1).astype(np.int8)


#: Elements one walk may have (probes/walk.h): 5 levels and a few retries fit many times.
MAX_WALK_ELEMENTS = TK_WALK_MAX_ELEMENTS


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
