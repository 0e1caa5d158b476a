"""bcc programs of the function-probe families: source, attach by resolved symbol, decode events.

:func:`program_text` is ``probes/<family>.bpf.c``, compiled by the recorder's bcc backend with offsets
from this kernel's BTF; :func:`attach` attaches each resolved probe, and :func:`decode_stage2` /
:func:`decode_tdp` turn ring records into capture tables without Python per event.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from tracekit import schema as S
from tracekit.capture.columns import FUNCPROBE_SCHEMAS as SCHEMAS
from tracekit.errors import ProbeLoadError
from tracekit.funcprobes import table_builders
from tracekit.funcprobes.kallsyms import Resolution
from tracekit.host import SymbolTable
from tracekit.probes import PROBES_DIR

__all__ = [
    "ATTACH",
    "EVENT_DTYPES",
    "RINGS",
    "program_text",
    "attach",
    "decode_stage2",
    "decode_tdp",
    "decode_tdp_outside",
    "COUNT_NOTES",
    "TDP_LEVELS",
    "STAGE2_FUNC_NAMES",
    "TDP_FUNC_NAMES",
]

#: family -> probe name -> (entry function, return function or None) in the BPF source.
ATTACH: dict[str, dict[str, tuple[str, str | None]]] = {
    "stage2": {
        "pgtable_walk": ("tk_s2_walk_entry", "tk_s2_walk_return"),
        "split_walker": ("tk_s2_split_walker", None),
        "map_walker": ("tk_s2_map_walker", None),
        "stage2_split": ("tk_s2_split_entry", "tk_s2_split_return"),
        "stage2_map": ("tk_s2_map_entry", "tk_s2_map_return"),
        "relax_perms": ("tk_s2_relax_entry", "tk_s2_relax_return"),
        "wrprotect": ("tk_s2_wrprotect_entry", "tk_s2_wrprotect_return"),
        "guest_abort": ("tk_s2_abort_entry", "tk_s2_abort_return"),
        "user_mem_abort": ("tk_s2_abort_entry", "tk_s2_abort_return"),
        "enable_log_dirty": ("tk_s2_log_masked_entry", "tk_s2_log_masked_return"),
        "split_huge_pages": ("tk_s2_split_pages_entry", "tk_s2_split_pages_return"),
    },
    "tdp": {
        "page_fault": ("tk_tdp_page_fault_entry", "tk_tdp_page_fault_return"),
        "npf": ("tk_tdp_vendor_exit_entry", "tk_tdp_vendor_exit_return"),
        "ept_violation": ("tk_tdp_vendor_exit_entry", "tk_tdp_vendor_exit_return"),
        "tdp_map": ("tk_tdp_map_entry", "tk_tdp_map_return"),
        "fast_page_fault": ("tk_tdp_fast_fault_entry", "tk_tdp_fast_fault_return"),
        "slot_try_split": ("tk_tdp_slot_split_entry", "tk_tdp_slot_split_return"),
        "mmu_try_split": ("tk_tdp_slot_split_entry", "tk_tdp_slot_split_return"),
        "tdp_try_split": ("tk_tdp_try_split_entry", "tk_tdp_try_split_return"),
        "split_root": ("tk_tdp_split_root_entry", "tk_tdp_split_root_return"),
        "wrprot_slot": ("tk_tdp_wrprot_entry", "tk_tdp_wrprot_return"),
        "split_huge_page": ("tk_tdp_split_page_entry", "tk_tdp_split_page_return"),
        "enable_log_dirty": ("tk_tdp_log_masked_entry", "tk_tdp_log_masked_return"),
        "clear_dirty_masked": ("tk_tdp_clear_masked_entry", "tk_tdp_clear_masked_return"),
        "zap_collapsible": ("tk_tdp_zap_collapse_entry", "tk_tdp_zap_collapse_return"),
        "recover_huge_pages": ("tk_tdp_zap_collapse_entry", "tk_tdp_zap_collapse_return"),
        "iter_next": ("tk_tdp_iter_next", None),
    },
}


def _by_number(names: dict[int, str], count: int) -> tuple[str, ...]:
    """The names in the order of their header numbers, which must be 0 .. count-1."""
    if sorted(names) != list(range(count)):
        raise ValueError(f"header numbers {sorted(names)} are not 0..{count - 1}")
    return tuple(names[i] for i in range(count))


#: Name used in the capture of each TK_S2_FN_* / TK_TDP_FN_* function number.
STAGE2_FUNC_NAMES = _by_number({
    S.TK_S2_FN_SPLIT: "stage2_split", S.TK_S2_FN_MAP: "stage2_map", S.TK_S2_FN_RELAX: "relax_perms",
    S.TK_S2_FN_WRPROTECT: "wrprotect", S.TK_S2_FN_ABORT: "guest_abort", S.TK_S2_FN_LOG_MASKED: "enable_log_dirty",
    S.TK_S2_FN_SPLIT_PAGES: "split_huge_pages"}, S.TK_S2_FUNCS)  # fmt: skip
TDP_FUNC_NAMES = _by_number({
    S.TK_TDP_FN_PAGE_FAULT: "page_fault", S.TK_TDP_FN_MAP: "tdp_map", S.TK_TDP_FN_FAST_FAULT: "fast_page_fault",
    S.TK_TDP_FN_SLOT_SPLIT: "slot_try_split", S.TK_TDP_FN_TRY_SPLIT: "tdp_try_split",
    S.TK_TDP_FN_SPLIT_ROOT: "split_root", S.TK_TDP_FN_SPLIT_PAGE: "split_huge_page",
    S.TK_TDP_FN_LOG_MASKED: "enable_log_dirty", S.TK_TDP_FN_CLEAR_MASKED: "clear_dirty_masked",
    S.TK_TDP_FN_ZAP_COLLAPSE: "zap_collapsible", S.TK_TDP_FN_VENDOR_EXIT: "vendor_exit",
    S.TK_TDP_FN_WRPROT: "wrprot_slot"}, S.TK_TDP_FUNCS)  # fmt: skip
#: tdp spans that are iterator loops over a root or slot ("walks" in the capture).
_TDP_WALKS = {"split_root": "tdp_mmu_split_huge_pages_root", "wrprot_slot": "kvm_tdp_mmu_wrprot_slot"}

#: Ring event dtype by C struct name (probes/stage2.h, probes/tdp.h).
EVENT_DTYPES = {name: S.STRUCT_DTYPES[name]
                for name in ("stage2_walk_event", "stage2_visit_event", "stage2_span_event", "tdp_span_event")}
#: Per-CPU counter map -> manifest note of each index (facts, not losses).
COUNT_NOTES = {
    "stage2": ("stage2_counts", _by_number({S.TK_S2_HOST_WALKS: "host_walks", S.TK_S2_UNPAIRED: "unpaired_returns",
                                            S.TK_S2_MISSED: "missed_returns"}, S.TK_S2_NCOUNTS)),
    "tdp": ("tdp_counts", _by_number({S.TK_TDP_UNPAIRED: "unpaired_returns", S.TK_TDP_MISSED: "missed_returns"},
                                     S.TK_TDP_NCOUNTS)),
}  # fmt: skip
#: ``tdp_outside`` holds [steps | first ns | first pid_tgid] per level, this many each.
TDP_LEVELS = S.TK_TDP_LEVELS
_KINDS = ("invalid", "page", "block", "table")
_VISITORS = ("stage2_split_walker", "stage2_map_walker")


def program_text(family: str) -> str:
    """The BPF C source of function-probe ``family``."""
    if family not in ATTACH:
        raise ProbeLoadError(f"no function-probe family {family!r} (known: {', '.join(ATTACH)})")
    return (PROBES_DIR / f"{family}.bpf.c").read_text()


def attach(bpf: Any, family: str, resolutions: Iterable[Resolution]) -> tuple[list[str], list[dict]]:
    """Attach every available probe at its resolved symbol; returns (attached names, failures)."""
    attached, failed = [], []
    for res in resolutions:
        name = res.probe.name
        if not res.available:
            failed.append({"probe": name, "reason": res.reason})
            continue
        entry, ret = ATTACH[family][name]
        try:
            bpf.attach_kprobe(event=res.symbol, fn_name=entry)
            if ret is not None:
                bpf.attach_kretprobe(event=res.symbol, fn_name=ret)
        except Exception as error:  # bcc: plain Exception naming the symbol
            failed.append({"probe": name, "reason": f"attach at {res.symbol} failed: {error}"})
            continue
        attached.append(name)
    return attached, failed


#: Ring-buffer map -> record dtype of each ring of the programs (one record type per ring).
RINGS = {
    "stage2": {"stage2_walks": "stage2_walk_event", "stage2_visits": "stage2_visit_event",
               "stage2_span_events": "stage2_span_event"},
    "tdp": {"tdp_events": "tdp_span_event"},
}  # fmt: skip


def _common(records: np.ndarray) -> dict[str, np.ndarray]:
    hdr = records["hdr"]
    return {"ts_ns": hdr["ts_ns"].astype(np.int64), "cpu": hdr["cpu"].astype(np.int32),
            "pid": hdr["pid"].astype(np.int32), "tid": hdr["tid"].astype(np.int32)}  # fmt: skip


def _take(common: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: values[rows] for name, values in common.items()}


def _names(codes: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    lookup = np.array(list(names) + ["unknown"], dtype=object)
    return lookup[np.minimum(codes.astype(np.int64), len(names))]


def _symbolized(addresses: np.ndarray, symbols: SymbolTable | None) -> np.ndarray | None:
    """Symbol of each address, computed once per distinct address."""
    if symbols is None:
        return None
    unique, inverse = np.unique(addresses, return_inverse=True)
    names = np.array([symbols.symbolize(int(a)) for a in unique], dtype=object)
    return names[inverse.reshape(-1)]


def _count_slots(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, slot) of every non-zero ``counts[row][slot]``."""
    rows, slots = np.nonzero(counts)
    return rows, slots


def decode_stage2(map_name: str, records: np.ndarray, symbols: SymbolTable | None = None) -> dict[str, pa.Table]:
    """One batch of ring ``map_name`` of the stage2 program -> capture tables.

    ``stage2_walks``: ``stage2_walk`` rows plus their in-kernel visit counts as ``stage2_visit`` rows;
    ``stage2_visits``: raw visits made outside any open walk (``walk_id`` -1), aggregated (sampled
    visits inside a walk are already in its counts and are dropped); ``stage2_span_events``:
    ``split`` (stage2_split), ``fault`` (guest_abort) and ``func_call`` rows (args arg0, arg1, walk_id)."""
    out: dict[str, list[pa.Table]] = {name: [] for name in SCHEMAS}
    n = len(records)
    if n and map_name == "stage2_walks":
        common = _common(records)
        out["stage2_walk"].append(table_builders.table("stage2_walk", n, {
            **common, "walk_id": records["walk_id"].astype(np.int64), "addr": records["addr"], "size": records["size"],
            "flags": records["flags"], "initiator": _symbolized(records["cb"], symbols),
            "duration_ns": records["duration_ns"].astype(np.int64), "ret": records["ret"]}))  # fmt: skip
        rows, slots = _count_slots(records["counts"])
        visitor, rest = np.divmod(slots, 16)
        level, kind = np.divmod(rest, 4)
        visit = np.where(kind == 3, 2, 1)  # table entries are counted at TABLE_PRE, the rest as leaves
        out["stage2_visit"].append(table_builders.aggregate_visits(
            _take(common, rows), records["walk_id"][rows].astype(np.int64), _names(visitor, _VISITORS), level,
            table_builders.stage2_visit_names(visit, kind), records["counts"][rows, slots]))  # fmt: skip
    elif n and map_name == "stage2_visits":
        outside = records["walk_id"] == 0
        rows = np.flatnonzero(outside)
        common = _take(_common(records), rows)
        level = records["level"][rows]
        kinds = table_builders.stage2_pte_kinds(records["old"][rows], level)
        out["stage2_visit"].append(table_builders.aggregate_visits(
            common, np.full(len(rows), -1, np.int64), _names(records["visitor"][rows], _VISITORS), np.maximum(level, 0),
            table_builders.stage2_visit_names(records["visit"][rows], kinds)))  # fmt: skip
    elif n and map_name == "stage2_span_events":
        common = _common(records)
        names = _names(records["func"], STAGE2_FUNC_NAMES)
        for name in np.unique(names):
            rows = np.flatnonzero(names == name)
            cols = {**_take(common, rows), "duration_ns": records["duration_ns"][rows].astype(np.int64),
                    "ret": records["ret"][rows]}  # fmt: skip
            if name == "stage2_split":
                out["split"].append(table_builders.table("split", len(rows), {
                    **cols, "probe": name, "addr": records["arg0"][rows], "size": records["arg1"][rows]}))
            elif name == "guest_abort":
                out["fault"].append(table_builders.table("fault", len(rows), {**cols, "probe": name}))
            else:
                args = table_builders.args_json({"arg0": records["arg0"][rows], "arg1": records["arg1"][rows],
                                        "walk_id": records["walk_id"][rows]}, len(rows))  # fmt: skip
                out["func_call"].append(table_builders.table("func_call", len(rows), {**cols, "name": name, "args": args}))
    return {name: table_builders.concat_tables(name, parts) for name, parts in out.items()}


def decode_tdp(records: np.ndarray, walk_base: int = 0) -> dict[str, pa.Table]:
    """One batch of ``tdp_events`` -> split, fault, stage2_walk (iterator loops, ``walk_id`` =
    ``walk_base`` + row), func_call and stage2_visit (``tdp_iter_next`` steps per level; walk -1
    outside an iterator loop)."""
    out: dict[str, list[pa.Table]] = {name: [] for name in SCHEMAS}
    n = len(records)
    if not n:
        return {name: SCHEMAS[name].empty_table() for name in SCHEMAS}
    common = _common(records)
    names = _names(records["func"], TDP_FUNC_NAMES)
    walk_ids = np.where(np.isin(names, list(_TDP_WALKS)), walk_base + np.arange(n, dtype=np.int64), -1)
    arg0, arg1 = records["arg0"], records["arg1"]
    for name in np.unique(names):
        rows = np.flatnonzero(names == name)
        cols = {**_take(common, rows), "duration_ns": records["duration_ns"][rows].astype(np.int64),
                "ret": records["ret"][rows]}  # fmt: skip
        if name == "split_huge_page":
            level = arg1[rows].astype(np.int64)
            out["split"].append(table_builders.table("split", len(rows), {
                **cols, "probe": name, "addr": arg0[rows] << np.uint64(12),
                "size": (np.uint64(4096) << (np.uint64(9) * (level - 1).clip(0).astype(np.uint64))), "level": level}))
        elif name in ("page_fault", "vendor_exit"):
            out["fault"].append(table_builders.table("fault", len(rows), {
                **cols, "probe": name, "addr": arg0[rows] if name == "page_fault" else None}))
        elif name in _TDP_WALKS:
            ranged = name == "split_root"  # wrprot_slot covers the whole slot: no range in its arguments
            out["stage2_walk"].append(table_builders.table("stage2_walk", len(rows), {
                **cols, "walk_id": walk_ids[rows], "addr": arg0[rows] << np.uint64(12) if ranged else None,
                "size": (arg1[rows] - arg0[rows]) << np.uint64(12) if ranged else None,
                "initiator": _TDP_WALKS[name]}))  # fmt: skip
        else:
            args = table_builders.args_json({"arg0": arg0[rows], "arg1": arg1[rows]}, len(rows))
            out["func_call"].append(table_builders.table("func_call", len(rows), {**cols, "name": name, "args": args}))
    rows, levels = np.nonzero(records["iter_steps"])
    out["stage2_visit"].append(table_builders.aggregate_visits(
        _take(common, rows), walk_ids[rows], np.full(len(rows), "tdp_iter_next", dtype=object), levels,
        np.full(len(rows), "step", dtype=object), records["iter_steps"][rows, levels]))  # fmt: skip
    return {name: table_builders.concat_tables(name, parts) for name, parts in out.items()}


def decode_tdp_outside(per_cpu: np.ndarray) -> pa.Table:
    """``tdp_outside`` as (cpu, 3 x TDP_LEVELS) -> ``stage2_visit`` rows of no walk: one per level with
    steps (the CPUs' counts summed), ``walk_id`` -1, visitor ``tdp_iter_next``, kind ``step``,
    ``ts_ns``/``cpu``/``pid``/``tid`` of the earliest CPU's first step at that level (the tracefs
    backend's rows for steps outside any walk)."""
    per_cpu = np.asarray(per_cpu, dtype=np.uint64).reshape(len(per_cpu), 3, TDP_LEVELS)
    cpus, levels = np.nonzero(per_cpu[:, 0, :])
    pid_tgid = per_cpu[cpus, 2, levels]
    common = {"ts_ns": per_cpu[cpus, 1, levels].astype(np.int64), "cpu": cpus.astype(np.int32),
              "pid": (pid_tgid >> np.uint64(32)).astype(np.int32),
              "tid": (pid_tgid & np.uint64(0xFFFFFFFF)).astype(np.int32)}  # fmt: skip
    return table_builders.aggregate_visits(common, np.full(len(cpus), -1, np.int64), np.full(len(cpus), "tdp_iter_next", dtype=object),
                                  levels, np.full(len(cpus), "step", dtype=object), per_cpu[cpus, 0, levels])  # fmt: skip
