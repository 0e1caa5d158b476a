"""Does this kernel's stage-2 split walker skip levels? Observed visits against the model.

:func:`split_visits_vs_model` compares each split walk's visits per level with the reference model under
every candidate skip set, :func:`skip_verdict` says ``yes``, ``no`` or ``not enough data`` with the
evidence, and :func:`expected_split_visits` is the lab's expectation (docs/analysis.md).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from tracekit.errors import AnalysisError, ModelError
from tracekit.funcprobes.stage2_probes import WALK_FLAGS, walk_flag_names
from tracekit.model.accounting import WalkStats
from tracekit.model.geometry import arm64_stage2
from tracekit.model.split import EagerSplitter
from tracekit.model.stage2 import Stage2PageTable

__all__ = ["CANDIDATES", "BACKING_BLOCK", "split_walks", "split_visits_vs_model", "skip_verdict", "scenario_for",
           "kernel_candidate", "expected_split_visits"]

#: Lab backing -> the stage-2 mapping size it faults in.
BACKING_BLOCK = {"thp": 2 << 20, "hugetlb-2m": 2 << 20, "hugetlb-1g": 1 << 30, "4k": 4096}

#: Candidate walker behaviours: column name -> skipped levels.
CANDIDATES = {"model_no_skip": frozenset(), "model_skip_3": frozenset({3}), "model_skip_2_3": frozenset({2, 3})}


def split_walks(stage2_walk: pd.DataFrame, stage2_visit: pd.DataFrame) -> pd.DataFrame:
    """The split walks (see the module docstring), in time order."""
    initiator = stage2_walk["initiator"].fillna("").astype(str) if "initiator" in stage2_walk else ""
    by_initiator = initiator.str.contains("split") if len(stage2_walk) else pd.Series(dtype=bool)
    if "visitor" in stage2_visit.columns:
        split_ids = stage2_visit.loc[stage2_visit["visitor"].fillna("").astype(str).str.contains("split"), "walk_id"]
        by_visitor = stage2_walk["walk_id"].isin(split_ids)
    else:
        by_visitor = False
    return stage2_walk[by_initiator | by_visitor].sort_values("ts_ns", kind="stable")


def scenario_for(manifest: dict, splits: pd.DataFrame | None = None) -> dict | None:
    """The stage-2 scenario of a capture (see the module docstring), or None."""
    scenario = manifest.get("model_scenario")
    if isinstance(scenario, dict) and scenario.get("memslots"):
        return scenario
    lab = (manifest.get("workload") or {}).get("scenario") or {}
    block = BACKING_BLOCK.get(lab.get("backing", ""))
    if lab.get("arch") != "arm64" or block is None or splits is None or splits.empty:
        return None
    ranges = sorted((int(a) - int(a) % block, int(a) + int(s)) for a, s in zip(splits["addr"], splits["size"]))
    merged: list[list[int]] = []
    for start, end in ranges:
        end = -(-end // block) * block
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return {"granule": 4096, "ipa_bits": 40, "chunk_size": int(lab.get("eager_split_chunk") or 0),
            "memslots": [{"ipa": a, "size": b - a, "mapping_size": block} for a, b in merged]}


def _splitters(scenario: dict) -> dict[str, Any]:
    out = {}
    try:
        geom = arm64_stage2(int(scenario.get("granule", 4096)), int(scenario.get("ipa_bits", 40)))
        for name, skip in CANDIDATES.items():
            pgt = Stage2PageTable(geom)
            for slot in scenario["memslots"]:
                pgt.populate(int(slot["ipa"]), int(slot["size"]), int(slot["mapping_size"]))
            out[name] = EagerSplitter(pgt, int(scenario.get("chunk_size", 0)) or geom.level_size(geom.start_level),
                                      skip_levels=skip)
    except (ModelError, KeyError, TypeError, ValueError) as error:
        raise AnalysisError(f"cannot build the stage-2 model from the capture's scenario: {error}") from error
    return out


def split_visits_vs_model(stage2_walk: pd.DataFrame, stage2_visit: pd.DataFrame, scenario: dict,
                          splits: pd.DataFrame | None = None) -> pd.DataFrame:
    """Observed LEAF visits per split walk and level next to each candidate model's prediction
    (``splits``: :func:`split_walks` of the same frames when the caller already has it)."""
    if splits is None:
        splits = split_walks(stage2_walk, stage2_visit)
    leaf = stage2_visit[stage2_visit["kind"].astype(str).str.lower().str.startswith("leaf")]
    if "visitor" in leaf.columns and leaf["visitor"].notna().any():
        # Only the split walker's own callbacks: the subtree a split builds is walked by stage2_map_walker
        # inside the same walk (kvm_pgtable_stage2_create_unlinked), the model's "build" count.
        leaf = leaf[leaf["visitor"].fillna("").astype(str).str.contains("split")]
    observed = leaf.groupby(["walk_id", "level"])["count"].sum()
    splitters = _splitters(scenario)
    rows = []
    for wid, addr, size in zip(splits["walk_id"], splits["addr"], splits["size"]):
        predicted = {}
        for name, splitter in splitters.items():
            stats = WalkStats()
            if splitter.nobjs < splitter.capacity:  # kvm_mmu_split_huge_pages tops up before a chunk
                splitter.nobjs = splitter.capacity
            try:
                splitter.stage2_split(int(addr), int(size), stats)
            except ModelError as error:
                raise AnalysisError(f"split walk {wid} ({int(addr):#x}+{int(size):#x}) is outside the model: {error}")
            predicted[name] = stats
        for level in range(-1, 4):
            obs = int(observed.get((wid, level), 0))
            row = {"walk_id": wid, "level": level, "observed": obs}
            for name, stats in predicted.items():
                row[name] = stats.get("leaf", level)
            if obs or any(row[name] for name in CANDIDATES):
                rows.append(row)
    columns = ["walk_id", "level", "observed", *CANDIDATES]
    return pd.DataFrame(rows, columns=columns)


def _walk_verdict(group: pd.DataFrame) -> tuple[str, list[str]]:
    matches = [name for name in CANDIDATES if (group[name] == group["observed"]).all()]
    distinct = {tuple(group[name]) for name in CANDIDATES}
    if len(distinct) == 1 or not matches:
        return "not enough data", matches
    if "model_no_skip" in matches:
        return ("no" if len(matches) == 1 else "not enough data"), matches
    return "yes", matches


def skip_verdict(comparison: pd.DataFrame | None, reason: str | None = None) -> dict:
    """The capture's verdict from :func:`split_visits_vs_model` (see the module docstring)."""
    if comparison is None or comparison.empty:
        return {"verdict": "not enough data", "matches": [], "walks": 0, "per_walk": {},
                "evidence": reason or "no split walks with visits in the capture"}
    per_walk = {}
    deciding = {}
    for wid, group in comparison.groupby("walk_id", sort=False):
        verdict, matches = _walk_verdict(group)
        per_walk[int(wid)] = verdict
        if verdict != "not enough data":
            deciding[int(wid)] = matches
    matches_all = [n for n in CANDIDATES if (comparison[n] == comparison["observed"]).all()]
    verdicts = set(per_walk.values()) - {"not enough data"}
    if not verdicts:
        verdict = "not enough data"
    elif len(verdicts) == 1:
        verdict = verdicts.pop()
    else:
        verdict = "not enough data"
    by_level = comparison.groupby("level")[["observed", *CANDIDATES]].sum()
    parts = [f"L{int(level)}: observed {int(r['observed'])}, no-skip model {int(r['model_no_skip'])}"
             for level, r in by_level.iterrows() if r["observed"] != r["model_no_skip"] or level >= 2]
    evidence = (f"{len(per_walk)} split walks, {len(deciding)} decisive; LEAF visits " + "; ".join(parts)
                + (f"; exact match: {', '.join(matches_all)}" if matches_all else "; no candidate matches every walk"))
    return {"verdict": verdict, "matches": matches_all, "walks": len(per_walk), "per_walk": per_walk,
            "evidence": evidence}


def kernel_candidate(splits: pd.DataFrame) -> tuple[str | None, str]:
    """The candidate the split walks' own SKIP_LEVEL flags name (None if no candidate has those levels),
    and the flags as names (``LEAF|SKIP_LEVEL3``)."""
    flags = 0
    for value in splits["flags"].dropna() if "flags" in splits else ():
        flags |= int(value)
    skipped = frozenset(level for level in range(4) if flags & WALK_FLAGS.get(f"SKIP_LEVEL{level}", 0))
    name = next((n for n, levels in CANDIDATES.items() if levels == skipped), None)
    return name, walk_flag_names(flags)


def expected_split_visits(stage2_walk: pd.DataFrame, stage2_visit: pd.DataFrame, lab_scenario: dict) -> dict | None:
    """The split-walker LEAF visits the model predicts for a lab run's own split calls, under the walk
    semantics its kernel declared (the SKIP_LEVEL bits its split walks passed): ``{"expected",
    "model", "walk_flags"}``; None when the run has no split walks or its scenario has no model."""
    splits = split_walks(stage2_walk, stage2_visit)
    scenario = scenario_for({"workload": {"scenario": lab_scenario}}, splits)
    if scenario is None:
        return None
    name, flags = kernel_candidate(splits)
    if name is None:
        raise AnalysisError(f"the split walks passed walk flags {flags}: no model of those semantics")
    comparison = split_visits_vs_model(stage2_walk, stage2_visit, scenario, splits)
    return {"expected": int(comparison[name].sum()), "model": name, "walk_flags": flags}
