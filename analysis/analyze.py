"""Every analysis a capture has data for, optionally cut by phase.

:func:`analyze_capture` reads, per analysis, only the families and columns it needs and returns an
:class:`Analysis`: ``info``, ``tables`` and ``verdicts`` (listed in docs/analysis.md; analyses whose
families are absent are named in ``info["skipped"]`` with the reason). The walk tables come from the
streaming core (:mod:`.walkgroups`), whose few bytes per walk are spilled to a file when large. :func:`render_text` renders the
result as 80-column text, :func:`analysis_json` as the document of docs/cli-json/analysis.md. Raises
AnalysisError for a capture with none of the analysed families, UsageError for an unknown phase.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from tracekit.analysis import (crosscheck, dirtypasses, ioctls, locks, phases as phases_mod, selftestmodel, skiplevels,
                               splits, walkcause, walkgroups, walks)
from tracekit.analysis.common import add_vcpu, count_by, format_hex, format_table, frame_of, load, records, timing_note
from tracekit.analysis.partial import partial_summary, partial_text
from tracekit.analysis.vms import VmCapture, capture_vms, vm_rows
from tracekit.errors import AnalysisError
from tracekit.render import output_width, prose_lines

__all__ = ["Analysis", "analyze_capture", "render_text", "analysis_json", "ANALYSED_FAMILIES", "HEX_COLUMNS",
           "TABLE_TITLES"]

ANALYSED_FAMILIES = ("walk", "walk_element", "stage2_walk", "stage2_visit", "lock", "ioctl", "ioctl_summary",
                     "split", "mmu")


@dataclass
class Analysis:
    """What :func:`analyze_capture` found (see the module docstring). ``frames`` holds the frames the
    analysis made on the way (``waits``, ``ioctl``, ``split_ioctls``, ``stage2_visits``);
    :meth:`walk_frame` rebuilds the per-walk frame, which the analysis never holds."""

    info: dict
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    verdicts: dict[str, dict] = field(default_factory=dict)
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    _walks: Callable[[], pd.DataFrame] | None = field(default=None, repr=False)

    def walk_frame(self) -> pd.DataFrame | None:
        """One row per walk of the analysed cut (:func:`.walkgroups.walk_frame`), rebuilt from the capture
        at each call; None when the capture has no x86 walks."""
        return self._walks() if self._walks is not None else None


def _cut(frame: pd.DataFrame, phase_table: pd.DataFrame, phase: str | None,
         duration_column: str | None = None) -> pd.DataFrame:
    return phases_mod.select_phase(frame, phase_table, phase, duration_column=duration_column)


def analyze_capture(cap: Any, *, phase: str | None = None, selftest_output: str | None = None,
                    mismatch_limit: int = 20) -> Analysis:
    """Every analysis the capture has data for (see the module docstring)."""
    families = set(cap.families())
    if not families & set(ANALYSED_FAMILIES):
        raise AnalysisError(f"{cap.path}: nothing to analyse (families: {', '.join(sorted(families)) or 'none'})")
    manifest = cap.manifest
    phase_table = phases_mod.capture_phases(cap, selftest_output)
    if phase is not None:  # an unknown phase fails before any family is read
        phases_mod.phase_mask(np.zeros(0, np.int64), phase_table, phase)
    result = Analysis(info={
        "path": str(cap.path), "kernel_release": manifest.get("kernel_release"), "arch": manifest.get("arch"),
        "source": (manifest.get("source") or {}).get("kind"), "status": manifest.get("status"),
        "lost_events": cap.lost_total(), "timing_note": timing_note(manifest), "phase": phase, "skipped": {},
        "phases_from": phase_table.attrs.get("origin", "workload record" if len(phase_table) else None),
        "phase_note": phase_table.attrs.get("note")})
    result.tables["phases"] = phase_table
    if isinstance(cap, VmCapture):
        result.info["vm"] = cap.vm
    elif len(capture_vms(manifest)) > 1:
        result.tables["vms"] = vm_rows(cap)
        result.info["vm_note"] = (f"the capture holds {len(capture_vms(manifest))} VMs and the per-vCPU rows below "
                                  "add up their vCPUs of the same number; cut one VM out with --vm PID|NAME")
    skipped = result.info["skipped"]

    split_rows = walk_counts = None  # the mmu family's split events, read with the walks' fault-path events
    if {"walk", "walk_element"} <= families:
        split_rows, walk_counts = _walk_analyses(cap, result, phase_table, phase, mismatch_limit,
                                                 selftest_output or phases_mod.command_output_text(manifest) or None)
    else:
        skipped["walk_depth"] = "no walk / walk_element families"
    if {"stage2_walk", "stage2_visit"} <= families:
        _stage2_analyses(cap, result, phase_table, phase)
    else:
        skipped["stage2"] = "no stage2_walk / stage2_visit families (function probes not attached)"
        result.verdicts["skip_levels"] = skiplevels.skip_verdict(None, "no arm64 stage-2 function-probe data")

    split = mmu = None
    if "split" in families:
        split = load(cap, "split", ["ts_ns", "tid", "duration_ns"], optional_columns=["level", "size", "ret"])
    if split_rows is not None:
        mmu = frame_of([split_rows], split_rows.num_rows, cap.schema("mmu"), split_rows.column_names, ["level"])
    elif "mmu" in families:
        mmu = load(cap, "mmu", ["ts_ns", "tid", "event"], optional_columns=["level"],
                   where=("event", [splits.SPLIT_EVENT]))
    if split is not None or mmu is not None:
        result.tables["split_calls"] = splits.split_call_summary(
            _cut(splits.split_events(split, mmu), phase_table, phase))

    ioctl = ioctl_cut = summary = None
    if "ioctl" in families:
        ioctl = load(cap, "ioctl", ["ts_ns", "tid", "duration_ns", "cmd_name"],
                     optional_columns=["ret", "slot", "flags", "memory_size", "guest_phys_addr", "partial"])
        ioctl_cut = _cut(ioctl, phase_table, phase, "duration_ns")  # a call overlapping the phase is in it
        if "ioctl_summary" in families and phase is None:
            summary = load(cap, "ioctl_summary", ["cmd_name", "count", "total_ns", "max_ns"],
                           optional_columns=["errors", "errno", "partial"])
            summary["errors"] = summary["errors"].fillna(0)
        result.tables["ioctl_latency"] = ioctls.ioctl_latency(ioctl_cut, summary)
        result.tables["memslot_latency"] = ioctls.memslot_latency(ioctl_cut)
        per_ioctl = splits.split_ioctls(ioctl_cut, split, mmu)
        result.tables["split_per_ioctl"] = splits.split_ioctl_summary(per_ioctl)
        result.tables["split_ioctls"] = per_ioctl
        result.frames["split_ioctls"] = per_ioctl
        result.frames["ioctl"] = ioctl_cut
        if phase_table.attrs.get("origin") in ("--selftest-output", "command output"):
            passes = dirtypasses.dirty_pass_times(phases_mod.parse_selftest_output(
                selftest_output if selftest_output is not None else phases_mod.command_output_text(manifest)), ioctl)
            if phase is not None:
                passes = passes[passes["phase"].isin(phases_mod.matching_phases(phase_table, phase)["phase"])]
            if len(passes):
                result.tables["dirty_passes"] = passes.reset_index(drop=True)
    else:
        skipped["ioctl_latency"] = "no ioctl family"

    if "lock" in families:
        lock = load(cap, "lock", ["ts_ns", "tid", "lock_addr", "flags", "wait_ns"], optional_columns=["stack_id"])
        stack = load(cap, "stack", ["stack_id", "frames"]) if "stack" in families else None
        waits = locks.attribute_operations(lock, manifest, stack, ioctl)
        mmu_lock = locks.identify_mmu_lock(waits, locks.known_mmu_locks(manifest))
        waits = _cut(waits, phase_table, phase, "wait_ns")
        result.verdicts["mmu_lock"] = mmu_lock or {"lock_addr": None, "name": None,
                                                   "evidence": "no contended lock looks like the VM's mmu_lock"}
        result.tables["lock_contention"] = locks.contention_summary(waits, mmu_lock)
        result.frames["waits"] = waits
    else:
        skipped["lock_contention"] = "no lock family"
    result.info["partial"] = partial_summary(manifest, walk_counts, ioctl_cut, summary)
    return result


def _model_walk(cap: Any, result: Analysis, selftest_output: str | None) -> Any:
    """The model's walk function for the capture's guest: from the built-in workload's layout record, else
    from a selftest's output (:mod:`.selftestmodel`); None, with a ``no model`` verdict, when neither."""
    workload = cap.manifest.get("workload")
    try:
        guest = selftestmodel.parse_selftest_guest(selftest_output) if selftest_output and not workload else None
        if workload:
            return crosscheck.model_from_layout(workload)
        if guest is not None:
            table = selftestmodel.first_test_table(cap, guest)
            if table is None:
                raise AnalysisError(f"no walk of the selftest's test memory [{guest.gva:#x}, "
                                    f"+{guest.size:#x}) was recorded")
            result.info["model"] = {"source": "selftest output", "mode": guest.mode, "test_gva": guest.gva,
                                    "test_gpa": guest.gpa, "test_size": guest.size, "test_table_gpa": table}
            return selftestmodel.selftest_model(guest, table)
        evidence = ("the capture has no workload record" + (" and the selftest output names no test memory"
                                                            if selftest_output else ""))
    except AnalysisError as error:
        evidence = str(error)
    result.verdicts["crosscheck"] = {"verdict": "no model", "evidence": evidence}
    return None


def _walk_analyses(cap: Any, result: Analysis, phase_table: pd.DataFrame, phase: str | None, limit: int,
                   selftest_output: str | None = None) -> tuple[Any, pd.DataFrame]:
    """The walk tables and verdicts into ``result``; returns the ``mmu`` family's split-event rows (a pyarrow
    table, read on the way with the fault-path events; None when the family was not read) and the walk
    counts (``depth`` and ``walks``)."""
    model_walk = _model_walk(cap, result, selftest_output)
    followers = walkcause.fault_followers(cap, also=(splits.SPLIT_EVENT,))
    grouped = walkgroups.walk_group_counts(cap, model_walk, phase_table=phase_table, phase=phase, limit=limit,
                                           followers=followers)
    counts, check = grouped.counts, grouped.check
    result.info["walk_path"] = "streamed"
    result.info["orphan_walk_elements"] = grouped.orphans
    result._walks = lambda: walkgroups.walk_frame(cap, phase_table, phase)
    result.tables["walk_depth"] = walks.depth_distribution(counts, ["vcpu"], weights="walks")
    result.tables["walk_depth_by_phase"] = walks.depth_distribution(counts, ["phase"], weights="walks")
    paths = count_by(counts, ["cause", "level_path", "pferr"], "walks", weights="walks")
    paths["levels"] = paths["level_path"].map(walks.level_path_text)
    paths["cause"] = np.asarray(paths["cause"], dtype=object)
    result.tables["walk_paths"] = paths[["cause", "levels", "pferr", "walks"]].sort_values(
        "walks", ascending=False, kind="stable").reset_index(drop=True)
    by_cause = walkcause.cause_table(counts, "walks")
    result.tables["walk_causes"] = by_cause
    result.verdicts["walk_causes"] = _cause_verdict(by_cause)
    if check is not None:
        result.verdicts["crosscheck"] = check.summary
        result.tables["crosscheck_mismatches"] = check.mismatches
        result.tables["walk_visits_vs_model"] = check.per_level
    return (None if followers is None else followers.also), counts


def _cause_verdict(by_cause: pd.DataFrame) -> dict:
    """Walks per cause (every cause of :data:`.walkcause.CAUSES`, 0 when none) and what they mean."""
    totals = by_cause.groupby("cause")["walks"].sum() if len(by_cause) else pd.Series(dtype="int64")
    verdict = {cause: int(totals.get(cause, 0)) for cause in walkcause.CAUSES}
    if verdict["unknown"]:
        evidence = ("the capture does not record the shadow-MMU fault path (kvm_mmu_spte_requested / "
                    "kvm_mmu_set_spte): walk causes unknown")
    else:
        evidence = (f"{verdict['fault']:,} walks by shadow-MMU page faults (a kvm_mmu_spte_requested or "
                    f"kvm_mmu_set_spte of the same thread follows), {verdict['emulation']:,} by KVM's "
                    "instruction emulator or another guest-virtual translation (no fault path follows; "
                    "pferr 0x10 is an instruction fetch)")
    return {**verdict, "evidence": evidence}


def _stage2_analyses(cap: Any, result: Analysis, phase_table: pd.DataFrame, phase: str | None) -> None:
    walk = load(cap, "stage2_walk", ["walk_id", "ts_ns", "tid"], optional_columns=["addr", "size", "flags", "initiator"])
    visit = load(cap, "stage2_visit", ["walk_id", "level", "kind", "count"], optional_columns=["visitor"])
    walk_cut = _cut(walk, phase_table, phase)
    visits = walks.stage2_walk_visits(walk_cut, visit[visit["walk_id"].isin(walk_cut["walk_id"])])
    visits = add_vcpu(visits.assign(tid=visits["tid"].fillna(-1)), cap.manifest)
    result.tables["stage2_visits"] = walks.stage2_distribution(visits)
    if (visits["vcpu"] >= 0).any():
        result.tables["stage2_visits_by_vcpu"] = walks.stage2_distribution(visits, ["vcpu"])
    if len(phase_table):
        visits["phase"] = np.asarray(phases_mod.label_phases(visits["ts_ns"].fillna(0), phase_table), dtype=object)
        result.tables["stage2_visits_by_phase"] = walks.stage2_distribution(visits, ["phase"])
    result.frames["stage2_visits"] = visits
    split_walks = skiplevels.split_walks(walk, visit)
    scenario = skiplevels.scenario_for(cap.manifest, split_walks)
    if scenario is None:
        result.verdicts["skip_levels"] = skiplevels.skip_verdict(
            None, "no split walks, or no stage-2 scenario (model_scenario or an arm64 lab record) to model them")
        return
    comparison = skiplevels.split_visits_vs_model(walk, visit, scenario, split_walks)
    comparison = comparison[comparison["walk_id"].isin(walk_cut["walk_id"])]
    result.tables["split_visits_vs_model"] = comparison.groupby("level")[
        ["observed", *skiplevels.CANDIDATES]].sum().reset_index()
    result.verdicts["skip_levels"] = skiplevels.skip_verdict(comparison)


#: Table columns shown as hexadecimal (addresses, PTEs, fault codes) in the text and HTML renderings.
HEX_COLUMNS = ("lock_addr", "addr", "observed_pte", "model_pte", "pferr")


_SECTIONS = (
    ("vms", "Recorded VMs (cut one out with --vm PID|NAME)", None),
    ("phases", "Phases (CLOCK_MONOTONIC)", ["phase", "duration_ns", "source"]),
    ("dirty_passes", "Dirty passes: the selftest's printed time, tracekit's (main thread's calls around it) and the "
     "vCPUs' KVM_RUN", ["phase", "printed_ns", "measured_ns", "excess_ns", "vcpus", "vcpu_ns", "handover_ns"]),
    ("walk_depth", "Guest walk depth per vCPU (depth = levels read; leaf -1 = no translation)", None),
    ("walk_depth_by_phase", "Guest walk depth per phase", None),
    ("walk_causes", "Guest walks by cause (shadow-MMU fault, or KVM's instruction emulation)", None),
    ("walk_paths", "Guest walks per cause, level path and access code (pferr)", None),
    ("walk_visits_vs_model", "Guest PTE reads per level, observed vs model (same walks)", None),
    ("crosscheck_mismatches", "First walks that differ from the model", None),
    ("stage2_visits", "arm64 stage-2 walks: entries per level and visit kind", None),
    ("stage2_visits_by_vcpu", "arm64 stage-2 walks per vCPU", None),
    ("stage2_visits_by_phase", "arm64 stage-2 walks per phase", None),
    ("split_visits_vs_model", "Split walks: LEAF visits per level, observed vs model", None),
    ("lock_contention", "Lock contention (wait per lock, operation, vCPU, mode)",
     ["lock", "operation", "vcpu", "mode", "count", "total_ns", "p50_ns", "p99_ns", "max_ns"]),
    ("ioctl_latency", "KVM ioctl latency",
     ["cmd_name", "count", "errors", "errnos", "partial", "total_ns", "mean_ns", "p50_ns", "p99_ns", "max_ns"]),
    ("memslot_latency", "Memslot and dirty-log ioctls per slot and flag change",
     ["cmd_name", "slot", "change", "count", "mean_ns", "p50_ns", "p99_ns", "max_ns"]),
    ("split_per_ioctl", "Huge-page splits per dirty-log enable / CLEAR ioctl",
     ["kind", "count", "mean_ns", "p50_ns", "p99_ns", "max_ns", "splits", "splits_per_ioctl"]),
    ("split_ioctls", "Each dirty-log enable / CLEAR ioctl: latency and splits inside it",
     ["kind", "slot", "duration_ns", "splits", "split_ns"]),
    ("split_calls", "Split calls (function probes) and split events per level", None),
)


#: Each table's title, as the text and HTML renderings head it.
TABLE_TITLES = {key: title for key, title, _ in _SECTIONS}


def render_text(result: Analysis, width: int | None = None) -> str:
    """The analysis as text: terminal tables (:func:`format_table`, fitted to ``width``, default the
    terminal's) and verdict lines wrapped at ``width`` (80 in a pipe)."""
    info = result.info
    prose = width or output_width() or 80
    out = prose_lines(f"{info['path']}: kernel {info.get('kernel_release') or '?'}, {info.get('arch') or '?'}, "
           f"source {info.get('source') or '?'}", prose)
    if info.get("lost_events"):
        out.extend(prose_lines(f"WARNING: {info['lost_events']:,} events were lost while recording; counts are lower bounds", prose))
    if info.get("timing_note"):
        out.extend(prose_lines(f"NOTE: {info['timing_note']}; compare its times only with "
                               "captures of the same emulator", prose))
    if info.get("vm"):
        vm = info["vm"]
        out.append(f"cut to VM pid {vm['pid']} ({vm.get('comm') or '?'}{', guest ' + vm['name'] if vm.get('name') else ''})")
    if info.get("phase"):
        out.append(f"cut to phase {info['phase']}")
    for note in ("vm_note", "phase_note"):
        if info.get(note):
            out.extend(prose_lines(f"NOTE: {info[note]}", prose))
    formats = {"share": lambda v: f"{v:.1%}",
               "splits_per_ioctl": lambda v: "-" if pd.isna(v) else f"{v:.1f}",
               "entries_per_walk": lambda v: f"{v:.1f}", **dict.fromkeys(HEX_COLUMNS, format_hex)}
    for key, title, columns in _SECTIONS:
        table = result.tables.get(key)
        if table is None:
            continue
        if key == "walk_depth_by_phase" and (table.empty or set(table["phase"]) == {""}):
            continue
        if key == "phases" and table.empty:
            continue
        if columns and "partial" in columns and not table.get("partial", pd.Series(dtype=int)).any():
            columns = [c for c in columns if c != "partial"]  # no call cut by the window: no column for it
        shown = table[columns] if columns else table
        out.append("")
        out.append(format_table(shown, title=title, width=width, formats=formats))
    verdicts = result.verdicts
    out.append("")
    out.append("Verdicts")
    if "crosscheck" in verdicts:
        v = verdicts["crosscheck"]
        if v.get("compared"):
            out.extend(prose_lines(f"  model cross-check: {v['verdict']}: {crosscheck.match_text(v)}", prose))
            if v.get("cut_short"):
                out.extend(prose_lines(f"    {v['cut_short']:,} walks cut short by lost events (their recorded reads "
                                 "agree with the model) were not judged", prose))
            if v.get("outside_model"):
                out.extend(prose_lines(f"    {v['outside_model']:,} walks of addresses the model does not cover "
                                 "(outside the selftest's test memory) were not compared", prose))
            if v.get("retried"):
                out.extend(prose_lines(f"    {v['retried']:,} walks were retried from the root (walk_addr_generic's "
                                 "retry): each compared by its last pass", prose))
        else:
            out.extend(prose_lines(f"  model cross-check: {v['verdict']} ({v.get('evidence', '')})", prose))
    if "walk_causes" in verdicts:
        v = verdicts["walk_causes"]
        out.extend(prose_lines(f"  walk causes: {v['fault']:,} fault, {v['emulation']:,} emulation"
                         + (f", {v['unknown']:,} unknown" if v["unknown"] else ""), prose))
        out.extend(prose_lines("    " + v["evidence"], prose))
    if "skip_levels" in verdicts:
        v = verdicts["skip_levels"]
        out.extend(prose_lines(f"  split walker skips levels: {v['verdict']}", prose))
        out.extend(prose_lines("    " + v["evidence"], prose))
    if "mmu_lock" in verdicts:
        v = verdicts["mmu_lock"]
        name = f"{v['lock_addr']:#x}" if v.get("lock_addr") is not None else "not identified"
        out.append(f"  mmu_lock: {name}")
        out.extend(prose_lines("    " + v["evidence"], prose))
    for key, reason in info.get("skipped", {}).items():
        out.extend(prose_lines(f"  {key}: skipped ({reason})", prose))
    if "partial" in info:
        for line in partial_text(info["partial"]):
            out.extend(prose_lines(line, prose))
    return "\n".join(out)


def analysis_json(result: Analysis) -> dict:
    """The ``tracekit analyze --json`` document (docs/cli-json/analysis.md)."""
    verdicts = {}
    for key, value in result.verdicts.items():
        v = dict(value)
        if "per_walk" in v:
            v["per_walk"] = {str(k): w for k, w in v["per_walk"].items()}
        verdicts[key] = v
    return {"schema": "tracekit.analyze/1", "info": result.info,
            "tables": {k: records(t) for k, t in result.tables.items()}, "verdicts": verdicts}




