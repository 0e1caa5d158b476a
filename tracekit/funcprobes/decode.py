"""Turn recorded function-probe events into the capture families.

Contract
--------
:func:`decode_events` takes the events of one recording in time order, each a :class:`ProbeEvent`
(``ts`` ns, ``cpu``, ``tid``, tracefs event ``name`` such as ``stage2_split`` or
``stage2_split_ret``, and its field dict), the probe family (``STAGE2_PROBES`` or ``TDP_PROBES``)
and optionally a :class:`~tracekit.funcprobes.kallsyms.SymbolTable` to name walk initiators. Entry
and return events are paired per (thread, probe) as a stack, so recursion and nesting are handled
and a function that sleeps and resumes on another CPU (the TDP split loop drops mmu_lock) still pairs;
a return without an entry is counted in ``unpaired`` and an entry without a return gets
``duration_ns = -1``. Visits (role ``visit``) are attributed to the innermost open
walk of the same thread (``walk_id`` -1 outside any walk) and aggregated per
(walk, visitor function, level, kind), kind being ``VISIT:PTE`` such as ``leaf:block`` or
``leaf:page`` (just ``VISIT`` when the probe has no ``old`` PTE, e.g. x86 ``tdp_iter_next``). Walks whose
``mmu`` is 0 (arm64 host user page tables) are dropped and counted in ``host_walks``. Returns a
:class:`Decoded` with one ``pyarrow.Table`` per family (schemas of
:mod:`tracekit.funcprobes.families`) and a ``counts`` dict of totals. ``pid_of`` maps a thread id
to its process id (identity by default). Tracepoint events named in ``split_tracepoints``
(``kvmmmu:kvm_mmu_split_huge_page``: gfn, level, errno) become ``split`` rows with
``duration_ns = -1`` and are counted under their own name.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable

import pyarrow as pa

from tracekit.funcprobes.families import SCHEMAS
from tracekit.funcprobes.kallsyms import SymbolTable
from tracekit.funcprobes.spec import FuncProbe
from tracekit.funcprobes.stage2 import VISIT_KINDS, pte_kind

__all__ = ["ProbeEvent", "Decoded", "decode_events"]


@dataclass
class ProbeEvent:
    ts: int
    cpu: int
    tid: int
    name: str
    fields: dict


@dataclass
class Decoded:
    tables: dict[str, pa.Table]
    counts: dict[str, int] = field(default_factory=dict)


def _signed(value: int | None, bits: int) -> int | None:
    if value is None:
        return None
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


class _Builder:
    def __init__(self, family: str):
        self.schema = SCHEMAS[family]
        self.columns: dict[str, list] = {f.name: [] for f in self.schema}

    def add(self, **values) -> None:
        for name, column in self.columns.items():
            column.append(values.get(name))

    def table(self) -> pa.Table:
        arrays = []
        for f in self.schema:
            values = self.columns[f.name]
            if pa.types.is_dictionary(f.type):
                arrays.append(pa.array(values, pa.string()).dictionary_encode().cast(f.type))
            else:
                arrays.append(pa.array(values, f.type))
        return pa.Table.from_arrays(arrays, schema=self.schema)


def decode_events(
    events: Iterable[ProbeEvent],
    probes: tuple[FuncProbe, ...],
    symbols: SymbolTable | None = None,
    pid_of: Callable[[int], int] | None = None,
    split_tracepoints: tuple[str, ...] = ("kvm_mmu_split_huge_page",),
) -> Decoded:
    """See the module contract."""
    pid_of = pid_of or (lambda tid: tid)
    by_entry = {p.name: p for p in probes}
    by_return = {f"{p.name}_ret": p for p in probes if p.timed}
    builders = {name: _Builder(name) for name in SCHEMAS}
    open_calls: dict[tuple[int, str], list[tuple[ProbeEvent, int]]] = defaultdict(list)
    walk_stack: dict[int, list[int]] = defaultdict(list)
    visits: dict[tuple[int, str, int, str], list] = {}
    counts: dict[str, int] = defaultdict(int)
    next_walk = 0
    pending: list[tuple[FuncProbe, ProbeEvent, int, ProbeEvent | None]] = []

    for ev in events:
        if ev.name in split_tracepoints:
            counts[ev.name] += 1
            f = ev.fields
            builders["split"].add(
                ts_ns=ev.ts, cpu=ev.cpu, pid=pid_of(ev.tid), tid=ev.tid, probe=ev.name, addr=f.get("gfn", 0) << 12,
                size=4096 << (9 * (f.get("level", 1) - 1)), level=f.get("level"), duration_ns=-1, ret=f.get("errno"),
            )  # fmt: skip
            continue
        if ev.name in by_entry:
            probe = by_entry[ev.name]
            counts[probe.name] += 1
            if probe.role == "visit":
                walk = walk_stack[ev.tid][-1] if walk_stack[ev.tid] else -1
                level = _signed(ev.fields.get("level", -1), 8)
                visit = VISIT_KINDS.get(ev.fields["visit"], "unknown") if "visit" in ev.fields else "step"
                kind = f"{visit}:{pte_kind(ev.fields.get('old', 0), level)}" if "old" in ev.fields else visit
                key = (walk, probe.symbol, level, kind)
                if key in visits:
                    visits[key][0] += 1
                else:
                    visits[key] = [1, ev]
                continue
            walk_id = -1
            if probe.role == "walk":
                walk_id = next_walk
                next_walk += 1
                walk_stack[ev.tid].append(walk_id)
            if probe.timed:
                open_calls[(ev.tid, probe.name)].append((ev, walk_id))
            else:
                pending.append((probe, ev, walk_id, None))
        elif ev.name in by_return:
            probe = by_return[ev.name]
            stack = open_calls[(ev.tid, probe.name)]
            if not stack:
                counts["unpaired"] += 1
                continue
            entry, walk_id = stack.pop()
            if probe.role == "walk" and walk_stack[ev.tid] and walk_stack[ev.tid][-1] == walk_id:
                walk_stack[ev.tid].pop()
            pending.append((probe, entry, walk_id, ev))
    for stack in open_calls.values():
        for entry, walk_id in stack:
            pending.append((by_entry[entry.name], entry, walk_id, None))

    pending.sort(key=lambda item: item[1].ts)
    for probe, entry, walk_id, ret_ev in pending:
        common = {"ts_ns": entry.ts, "cpu": entry.cpu, "pid": pid_of(entry.tid), "tid": entry.tid}
        duration = ret_ev.ts - entry.ts if ret_ev is not None else -1
        ret = ret_ev.fields.get("ret") if ret_ev is not None and probe.returns_value else None
        f = entry.fields
        if probe.role == "walk":
            if f.get("mmu", 1) == 0:
                counts["host_walks"] += 1
                continue
            cb = f.get("cb")
            if cb is not None:
                initiator = symbols.symbolize(cb) if symbols is not None else None
            else:  # x86 TDP iterator loops: the function is the initiator, the range is in gfns
                initiator = probe.symbol
            addr, size = f.get("addr"), f.get("size")
            if addr is None and "start" in f:
                addr, size = f["start"] << 12, (f["end"] - f["start"]) << 12
            builders["stage2_walk"].add(
                **common, walk_id=walk_id, addr=addr, size=size, flags=f.get("flags"),
                start_level=_signed(f.get("start_level"), 8), initiator=initiator, duration_ns=duration,
                ret=_signed(ret, 32),
            )  # fmt: skip
        elif probe.role == "split":
            addr = f.get("addr")
            if addr is None and f.get("gfn") is not None:
                addr = f["gfn"] << 12
            builders["split"].add(
                **common, probe=probe.name, addr=addr, size=f.get("size"), level=_signed(f.get("level"), 8),
                duration_ns=duration, ret=_signed(ret, 32),
            )  # fmt: skip
        elif probe.role == "fault":
            addr = f.get("ipa", f.get("gpa"))
            builders["fault"].add(
                **common, probe=probe.name, vcpu_id=_signed(f.get("vcpu_id"), 32), addr=addr,
                duration_ns=duration, ret=_signed(ret, 64),
            )  # fmt: skip
        else:
            args = {k: v for k, v in f.items() if not k.startswith("common_") and k != "__probe_ip"}
            builders["func_call"].add(
                **common, name=probe.name, duration_ns=duration, ret=_signed(ret, 64), args=json.dumps(args, sort_keys=True)
            )

    for (walk, visitor, level, kind), (count, first) in sorted(visits.items(), key=lambda kv: kv[1][1].ts):
        builders["stage2_visit"].add(
            ts_ns=first.ts, cpu=first.cpu, pid=pid_of(first.tid), tid=first.tid, walk_id=walk, visitor=visitor,
            level=level, kind=kind, count=count,
        )  # fmt: skip
    tables = {name: b.table().sort_by([("ts_ns", "ascending")]) for name, b in builders.items()}
    return Decoded(tables, dict(counts))
