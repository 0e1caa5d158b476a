"""Tables coalesced into blocks, and the faults that met a coalescing's invalid window.

:func:`rebuilds` finds the arm64 map walks that replaced a table by a block: a successful
``stage2_map_walker`` walk of one block's size with a ``table_pre:table`` visit at that block's level.
:func:`window_hits` counts, for each, the map walks of *other* threads over the same block that began
while it ran and found the entry invalid at that level (``leaf:invalid``: the table entry broken, the
block not yet installed), i.e. faults taken in the invalid window. :func:`coalesce_summary` puts the
counts beside the model of both orders (:func:`tracekit.model.coalesce.coalesce`). Racy by nature:
the model gives each order's steps inside the window, the capture how many faults met it.
"""

from __future__ import annotations

import pandas as pd

from tracekit.model.coalesce import ORDERS, coalesce
from tracekit.model.geometry import arm64_stage2
from tracekit.model.stage2 import Stage2PageTable

__all__ = ["BLOCK_BY_LEVEL", "rebuilds", "window_hits", "coalesce_summary"]

#: arm64 4 KiB granule: block level -> block size.
BLOCK_BY_LEVEL = {1: 1 << 30, 2: 2 << 20}
_MAP = "stage2_map_walker"


def _map_walks(stage2_walk: pd.DataFrame) -> pd.DataFrame:
    return stage2_walk[stage2_walk["initiator"].astype(str) == _MAP]


def rebuilds(stage2_walk: pd.DataFrame, stage2_visit: pd.DataFrame) -> pd.DataFrame:
    """One row per table-to-block replacement: ``walk_id``, ``tid``, ``level``, ``start``, ``end`` (the
    block's IPA range), ``t0``/``t1`` (the walk's entry and return, ns)."""
    visits = stage2_visit[(stage2_visit["visitor"].astype(str) == _MAP) & (stage2_visit["kind"].astype(str) == "table_pre:table")]
    joined = _map_walks(stage2_walk).merge(visits[["walk_id", "level"]].drop_duplicates(), on="walk_id")
    joined = joined[(joined["size"] == joined["level"].map(BLOCK_BY_LEVEL)) & (joined["ret"].fillna(0) == 0)]
    block = joined["level"].map(BLOCK_BY_LEVEL).astype("int64")
    start = joined["addr"].astype("int64") - joined["addr"].astype("int64") % block
    return pd.DataFrame({"walk_id": joined["walk_id"], "tid": joined["tid"], "level": joined["level"].astype(int),
                         "start": start, "end": start + block, "t0": joined["ts_ns"],
                         "t1": joined["ts_ns"] + joined["duration_ns"].clip(lower=0)}).reset_index(drop=True)  # fmt: skip


def window_hits(stage2_walk: pd.DataFrame, stage2_visit: pd.DataFrame, replaced: pd.DataFrame | None = None) -> pd.Series:
    """Per replacement (index of :func:`rebuilds`), the other threads' map walks over its block that began
    while it ran and found the entry invalid at its level."""
    replaced = rebuilds(stage2_walk, stage2_visit) if replaced is None else replaced
    invalid = stage2_visit[(stage2_visit["visitor"].astype(str) == _MAP) & (stage2_visit["kind"].astype(str) == "leaf:invalid")]
    met = _map_walks(stage2_walk).merge(invalid[["walk_id", "level"]].drop_duplicates(), on="walk_id")
    counts = []
    for row in replaced.itertuples():
        hit = met[(met["level"] == row.level) & (met["tid"] != row.tid) & (met["addr"] >= row.start)
                  & (met["addr"] < row.end) & (met["ts_ns"] >= row.t0) & (met["ts_ns"] <= row.t1)]  # fmt: skip
        counts.append(len(hit))
    return pd.Series(counts, index=replaced.index, dtype="int64")


def coalesce_summary(stage2_walk: pd.DataFrame, stage2_visit: pd.DataFrame) -> dict:
    """``{"rebuilds", "window_hits", "rebuilds_hit", "model": {order: {"steps", "unmapped_steps",
    "leaves_put"}}}``, the model's figures summed over the capture's replacements (each modelled on a
    table of pages, what eager splitting leaves)."""
    replaced = rebuilds(stage2_walk, stage2_visit)
    hits = window_hits(stage2_walk, stage2_visit, replaced)
    model = {order: {"steps": 0, "unmapped_steps": 0, "leaves_put": 0} for order in ORDERS}
    geom = arm64_stage2()
    for level in replaced["level"]:
        for order in ORDERS:
            pgt = Stage2PageTable(geom)
            pgt.populate(0, BLOCK_BY_LEVEL[level], geom.granule)
            result = coalesce(pgt, 0, BLOCK_BY_LEVEL[level], order)
            for key in model[order]:
                model[order][key] += getattr(result, key)
    return {"rebuilds": len(replaced), "window_hits": int(hits.sum()), "rebuilds_hit": int((hits > 0).sum()),
            "model": model}  # fmt: skip
