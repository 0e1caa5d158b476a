"""bcc backend of the function-probe families: compile, attach by resolved symbol, decode events.

Contract
--------
:func:`program_text` returns ``probes/<family>.bpf.c`` (family ``stage2`` or ``tdp``);
:func:`program_cflags` the bcc flags: ``-I`` of the probes directory, ``TK_TARGET_TGID`` and the
struct member offsets/sizes taken from the running kernel's BTF
(:mod:`tracekit.funcprobes.btf_offsets`), never from headers. :func:`compile_program` builds the
program with bcc (maps are created, no probe is attached: usable where kprobes are absent).
:func:`attach` attaches each resolved probe (:class:`~tracekit.funcprobes.kallsyms.Resolution`) to
its entry/return functions of :data:`ATTACH` and returns ``(attached, failed)`` with reasons.
:data:`EVENT_DTYPES` mirrors the event structs of ``probes/<family>.h`` (a test checks them against
the headers); :func:`decode_stage2` / :func:`decode_tdp` turn ring-buffer records (bytes) into the
capture family tables. Raises :class:`tracekit.errors.MissingCapability` (no bcc, no BTF) and
:class:`tracekit.errors.ProbeLoadError` (compile failure, log in ``detail``).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from tracekit.errors import ProbeLoadError
from tracekit.funcprobes.btf_offsets import STAGE2_FIELDS, TDP_FIELDS, BtfTypes, offset_cflags
from tracekit.funcprobes.families import SCHEMAS
from tracekit.funcprobes.kallsyms import Resolution, SymbolTable

__all__ = [
    "ATTACH",
    "EVENT_DTYPES",
    "program_text",
    "program_cflags",
    "compile_program",
    "attach",
    "decode_stage2",
    "decode_tdp",
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

#: TK_S2_FN_* / TK_TDP_FN_* -> name used in the capture.
STAGE2_FUNC_NAMES = ("stage2_split", "stage2_map", "relax_perms", "wrprotect", "guest_abort", "enable_log_dirty",
                     "split_huge_pages")  # fmt: skip
TDP_FUNC_NAMES = ("page_fault", "tdp_map", "fast_page_fault", "slot_try_split", "tdp_try_split", "split_root",
                  "split_huge_page", "enable_log_dirty", "clear_dirty_masked", "zap_collapsible", "vendor_exit",
                  "wrprot_slot")  # fmt: skip
#: tdp spans that are iterator loops over a root or slot ("walks" in the capture).
_TDP_WALKS = {"split_root": "tdp_mmu_split_huge_pages_root", "wrprot_slot": "kvm_tdp_mmu_wrprot_slot"}

_HEADER = [("ts_ns", "<u8"), ("pid", "<u4"), ("tid", "<u4"), ("cpu", "<u4"), ("kind", "<u4")]
EVENT_DTYPES = {
    "stage2_walk_event": np.dtype(_HEADER + [("walk_id", "<u8"), ("addr", "<u8"), ("size", "<u8"), ("cb", "<u8"),
                                             ("duration_ns", "<u8"), ("flags", "<u4"), ("ret", "<i4"),
                                             ("counts", "<u4", (32,)), ("sampled", "<u4"), ("dropped", "<u4")]),
    "stage2_visit_event": np.dtype(_HEADER + [("walk_id", "<u8"), ("addr", "<u8"), ("old", "<u8"), ("level", "<i4"),
                                              ("visit", "<u4"), ("visitor", "<u4"), ("pad", "<u4")]),
    "stage2_span_event": np.dtype(_HEADER + [("walk_id", "<u8"), ("arg0", "<u8"), ("arg1", "<u8"),
                                             ("duration_ns", "<u8"), ("ret", "<i8"), ("func", "<u4"), ("pad", "<u4")]),
    "tdp_span_event": np.dtype(_HEADER + [("arg0", "<u8"), ("arg1", "<u8"), ("duration_ns", "<u8"), ("ret", "<i8"),
                                          ("func", "<u4"), ("depth", "<u4"), ("iter_steps", "<u4", (8,))]),
}  # fmt: skip
_KINDS = ("invalid", "page", "block", "table")
_VISITORS = ("stage2_split_walker", "stage2_map_walker")
_FIELDS = {"stage2": STAGE2_FIELDS, "tdp": TDP_FIELDS}


def program_text(family: str) -> str:
    """The BPF C source of function-probe ``family``."""
    from tracekit.probes import PROBES_DIR

    if family not in ATTACH:
        raise ProbeLoadError(f"no function-probe family {family!r} (known: {', '.join(ATTACH)})")
    return (PROBES_DIR / f"{family}.bpf.c").read_text()


def program_cflags(family: str, btf: BtfTypes, target_tgid: int = 0, ring_pages: int = 1024) -> list[str]:
    """bcc cflags of ``family``: include path, target filter, ring size and BTF member offsets."""
    from tracekit.probes import PROBES_DIR

    prefix = "TK_S2" if family == "stage2" else "TK_TDP"
    return [f"-I{PROBES_DIR}", f"-DTK_TARGET_TGID={target_tgid}", f"-D{prefix}_PAGES={ring_pages}", "-w",
            *offset_cflags(btf, _FIELDS[family])]  # fmt: skip


def compile_program(family: str, cflags: list[str]) -> Any:
    """Compile ``family`` with bcc (maps created, nothing attached); ProbeLoadError with the log on failure."""
    from tracekit.recorder.bccload import import_bcc

    bcc = import_bcc()
    try:
        return bcc.BPF(text=program_text(family).encode(), cflags=cflags)
    except Exception as error:  # bcc raises plain Exception for compile failures
        raise ProbeLoadError(f"the {family} BPF program failed to compile: {error}") from None


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


def _records(records: Iterable[bytes], dtype: np.dtype, kind: int) -> np.ndarray:
    picked = [r[: dtype.itemsize] for r in records if len(r) >= dtype.itemsize and int.from_bytes(r[20:24], "little") == kind]
    return np.frombuffer(b"".join(picked), dtype=dtype) if picked else np.zeros(0, dtype)


def _common(rows: np.ndarray, index: int) -> dict:
    row = rows[index]
    return {"ts_ns": int(row["ts_ns"]), "cpu": int(row["cpu"]), "pid": int(row["pid"]), "tid": int(row["tid"])}


def _table(family: str, rows: list[dict]) -> pa.Table:
    schema = SCHEMAS[family]
    if not rows:
        return schema.empty_table()
    columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
    arrays = [pa.array(columns[f.name], pa.string()).dictionary_encode().cast(f.type) if pa.types.is_dictionary(f.type)
              else pa.array(columns[f.name], f.type) for f in schema]  # fmt: skip
    return pa.Table.from_arrays(arrays, schema=schema)


def decode_stage2(records: Iterable[bytes], symbols: SymbolTable | None = None) -> dict[str, pa.Table]:
    """Ring-buffer records of the stage2 program -> stage2_walk, stage2_visit, split, fault, func_call."""
    records = list(records)
    walks = _records(records, EVENT_DTYPES["stage2_walk_event"], 0)
    spans = _records(records, EVENT_DTYPES["stage2_span_event"], 2)
    out: dict[str, list[dict]] = {name: [] for name in SCHEMAS}
    for i, w in enumerate(walks):
        common = _common(walks, i)
        out["stage2_walk"].append({**common, "walk_id": int(w["walk_id"]), "addr": int(w["addr"]), "size": int(w["size"]),
                                   "flags": int(w["flags"]), "initiator": symbols.symbolize(int(w["cb"])) if symbols else None,
                                   "duration_ns": int(w["duration_ns"]), "ret": int(w["ret"])})  # fmt: skip
        for slot in np.flatnonzero(w["counts"]):
            visitor, rest = divmod(int(slot), 16)
            level, kind = divmod(rest, 4)
            visit = "table_pre" if _KINDS[kind] == "table" else "leaf"
            out["stage2_visit"].append({**common, "walk_id": int(w["walk_id"]), "visitor": _VISITORS[visitor],
                                        "level": level, "kind": f"{visit}:{_KINDS[kind]}",
                                        "count": int(w["counts"][slot])})  # fmt: skip
    for i, s in enumerate(spans):
        common, name = _common(spans, i), STAGE2_FUNC_NAMES[int(s["func"])]
        if name == "stage2_split":
            out["split"].append({**common, "probe": name, "addr": int(s["arg0"]), "size": int(s["arg1"]),
                                 "duration_ns": int(s["duration_ns"]), "ret": int(s["ret"])})  # fmt: skip
        elif name == "guest_abort":
            out["fault"].append({**common, "probe": name, "duration_ns": int(s["duration_ns"]), "ret": int(s["ret"])})
        else:
            out["func_call"].append({**common, "name": name, "duration_ns": int(s["duration_ns"]), "ret": int(s["ret"]),
                                     "args": json.dumps({"arg0": int(s["arg0"]), "arg1": int(s["arg1"]),
                                                         "walk_id": int(s["walk_id"])})})  # fmt: skip
    return {name: _table(name, rows) for name, rows in out.items()}


def decode_tdp(records: Iterable[bytes]) -> dict[str, pa.Table]:
    """Ring-buffer records of the tdp program -> split, fault, func_call, stage2_visit (iterator steps)."""
    spans = _records(list(records), EVENT_DTYPES["tdp_span_event"], 0)
    out: dict[str, list[dict]] = {name: [] for name in SCHEMAS}
    for i, s in enumerate(spans):
        common, name = _common(spans, i), TDP_FUNC_NAMES[int(s["func"])]
        if name == "split_huge_page":
            level = int(s["arg1"])
            out["split"].append({**common, "probe": name, "addr": int(s["arg0"]) << 12, "size": 4096 << (9 * (level - 1)),
                                 "level": level, "duration_ns": int(s["duration_ns"]), "ret": int(s["ret"])})  # fmt: skip
        elif name in ("page_fault", "vendor_exit"):
            out["fault"].append({**common, "probe": name, "addr": int(s["arg0"]) if name == "page_fault" else None,
                                 "duration_ns": int(s["duration_ns"]), "ret": int(s["ret"])})  # fmt: skip
        elif name in _TDP_WALKS:
            ranged = name == "split_root"  # wrprot_slot covers the whole slot: no range in its arguments
            start, end = int(s["arg0"]), int(s["arg1"])
            out["stage2_walk"].append({**common, "walk_id": i, "addr": start << 12 if ranged else None,
                                       "size": (end - start) << 12 if ranged else None,
                                       "initiator": _TDP_WALKS[name], "duration_ns": int(s["duration_ns"]),
                                       "ret": int(s["ret"])})  # fmt: skip
        else:
            out["func_call"].append({**common, "name": name, "duration_ns": int(s["duration_ns"]), "ret": int(s["ret"]),
                                     "args": json.dumps({"arg0": int(s["arg0"]), "arg1": int(s["arg1"])})})  # fmt: skip
        walk_id = i if name in _TDP_WALKS else -1
        for level in np.flatnonzero(s["iter_steps"]):
            out["stage2_visit"].append({**common, "walk_id": walk_id, "visitor": "tdp_iter_next", "level": int(level),
                                        "kind": "step", "count": int(s["iter_steps"][level])})  # fmt: skip
    return {name: _table(name, rows) for name, rows in out.items()}
