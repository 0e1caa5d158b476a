"""The ``stage2`` and ``tdp`` function-probe families of ``tracekit record``.

:class:`Stage2Family` and :class:`TdpFamily` resolve their probes on this kernel without attaching
anything, and decode what the bcc or tracefs backend recorded into the capture families of
docs/capture-families-funcprobes.md.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tracekit.capture.columns import FUNCPROBE_SCHEMAS as SCHEMAS
from tracekit.errors import MissingCapability
from tracekit.funcprobes import table_builders
from tracekit.funcprobes.availability import FAMILY_ARCH, Support, fetch_style, kprobe_support, running_types
from tracekit.funcprobes.bcc_programs import (
    ATTACH, COUNT_NOTES, EVENT_DTYPES, RINGS, STAGE2_FUNC_NAMES, TDP_FUNC_NAMES, TDP_LEVELS, attach,
    decode_stage2, decode_tdp, decode_tdp_outside, program_text,
)
from tracekit.funcprobes.btf_offsets import STAGE2_FIELDS, TDP_FIELDS, offset_cflags
from tracekit.funcprobes.fetchargs import KVM_MODULES, KernelTypes, fetch_cflags, kernel_types
from tracekit.funcprobes.kallsyms import MODES, Resolution, resolve
from tracekit.funcprobes.kprobe_events import append_line, define_kprobes
from tracekit.funcprobes.spec import FuncProbe, event_names
from tracekit.funcprobes.stage2_probes import STAGE2_PROBES, VISITOR_ARGS
from tracekit.funcprobes.tdp_probes import TDP_PROBES, TRACEPOINT_SPLITS
from tracekit.host import Host, SymbolTable
from tracekit.recorder.backend_bcc import read_percpu
from tracekit.recorder.probe_family import ProbeFamily, ProbeStatus, RingSpec

__all__ = ["FunctionProbeFamily", "Stage2Family", "TdpFamily", "TDP_MMU_ONLY", "SPLIT_TRACEPOINTS", "family_for",
           "pair_calls", "tracefs_group"]

#: tdp probes whose functions run only when KVM uses the TDP MMU (``kvm.tdp_mmu=Y``).
TDP_MMU_ONLY = frozenset({"tdp_map", "tdp_try_split", "split_root", "wrprot_slot", "split_huge_page",
                          "clear_dirty_masked", "zap_collapsible", "recover_huge_pages", "iter_next"})

_ARCH_LABEL = {"stage2": "aarch64", "tdp": "x86_64"}

#: Tracepoints whose events, when handed to the decoder with the probes' (the labs record
#: ``kvmmmu:kvm_mmu_split_huge_page`` next to the tdp probes), become ``split`` rows: gfn, level, errno.
SPLIT_TRACEPOINTS = tuple(FuncProbe(event, event, "split", timed=False) for _system, event in TRACEPOINT_SPLITS)
_NOT_ARGS = ("common_", "__probe_", "ts_ns", "cpu", "tgid")


def tracefs_group(pid: int | None = None) -> str:
    """The ``kprobe_events`` group of one recorder process (never shared with the labs' ``tk``)."""
    return f"tkrec{os.getpid() if pid is None else pid}"


def pair_calls(entry_ts: np.ndarray, entry_tid: np.ndarray, ret_ts: np.ndarray, ret_tid: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pair entries and returns of one function per thread as a stack (recursion allowed).

    Returns (paired entry indices, their return indices, entries still open (last at their depth:
    carry them on), entries whose return was missed (another entry came at the same depth)).
    Returns without an entry are left out. Vectorised: depth per thread by a cumulative sum, then an
    entry pairs with the next event of its thread at the same depth when that is a return."""
    ne = len(entry_ts)
    ts = np.concatenate([entry_ts, ret_ts]).astype(np.int64)
    tid = np.concatenate([entry_tid, ret_tid]).astype(np.int64)
    is_ret = np.r_[np.zeros(ne, bool), np.ones(len(ret_ts), bool)]
    index = np.r_[np.arange(ne), np.arange(len(ret_ts))]
    empty = np.empty(0, np.int64)
    if len(ts) == 0:
        return empty, empty, empty, empty
    order = np.lexsort((is_ret, ts, tid))
    tid, is_ret, index = tid[order], is_ret[order], index[order]
    delta = np.where(is_ret, -1, 1)
    total = np.cumsum(delta)
    starts = np.r_[True, tid[1:] != tid[:-1]]
    base = (total - delta)[np.maximum.accumulate(np.where(starts, np.arange(len(tid)), 0))]
    depth = total - base + is_ret  # an entry's depth after it, a return's before it
    by_depth = np.lexsort((np.arange(len(tid)), depth, tid))
    t2, d2, r2, i2 = tid[by_depth], depth[by_depth], is_ret[by_depth], index[by_depth]
    same_next = np.r_[(t2[1:] == t2[:-1]) & (d2[1:] == d2[:-1]), False]
    pair_at = np.flatnonzero(~r2 & np.r_[r2[1:], False] & same_next)
    entries = ~r2
    paired = np.zeros(len(t2), bool)
    paired[pair_at] = True
    open_ = entries & ~paired & ~same_next
    missed = entries & ~paired & same_next
    return i2[pair_at], i2[pair_at + 1], np.sort(i2[open_]), np.sort(i2[missed])


def _as_int32(values: np.ndarray) -> np.ndarray:
    return np.asarray(values).astype(np.uint64).astype(np.uint32).view(np.int32)


def _as_int8(values: np.ndarray) -> np.ndarray:
    return np.asarray(values).astype(np.int64).astype(np.uint8).view(np.int8)


class FunctionProbeFamily(ProbeFamily):
    """Kprobe family over :data:`probes` (see the module contract); subclasses set the names."""

    probes: tuple[FuncProbe, ...] = ()
    tdp_mmu_only: frozenset[str] = frozenset()

    def __init__(self, options=None):
        super().__init__(options)
        self.functions = tuple(p.symbol for p in self.probes)
        self.machine = platform.machine()
        self.kvm_parameters = Path("/sys/module/kvm/parameters")
        self.btf_paths: tuple[Path, ...] = Host(None).btf_paths(*KVM_MODULES)  # the running kernel's
        self.group = tracefs_group()
        self.symbols: SymbolTable | None = None
        self.support: Support | None = None
        self._resolutions: dict[str, Resolution] = {}
        self._by_symbol = {p.symbol: p for p in self.probes}
        self._defined: list[str] = []
        self._bcc_attached: list[Resolution] = []
        self._pending: dict[str, dict[str, np.ndarray]] = {}
        self._next_walk = 0
        self.notes: dict[str, Any] = {"attach_failed": [], "host_walks": 0, "unpaired_returns": 0,
                                      "missed_returns": 0}  # fmt: skip

    # -- availability ---------------------------------------------------------------------------------
    def tables(self) -> dict[str, pa.Schema]:
        return dict(SCHEMAS)

    def _tdp_mmu_enabled(self) -> bool | None:
        try:
            return (self.kvm_parameters / "tdp_mmu").read_text().strip() in ("Y", "1")
        except OSError:
            return None

    def check(self, host: Host) -> list[ProbeStatus]:
        self.symbols = host.symbol_table()
        self.support = kprobe_support(self.symbols, host.tracefs or Path("/nonexistent"))
        arch = _ARCH_LABEL[self.name]
        tdp_mmu = self._tdp_mmu_enabled()
        native = self.machine in FAMILY_ARCH[self.name]
        types = self._kernel_types() if native and self.support.kprobes else None
        style = fetch_style(self.support, FAMILY_ARCH[self.name][0])
        out = []
        for probe in self.probes:
            res = resolve(probe, self.symbols, types, style)
            self._resolutions[probe.symbol] = res
            if not native:
                out.append(ProbeStatus(probe.symbol, False, f"{arch} only (this host is {self.machine})"))
                continue
            reasons = []
            if not self.support.kprobes:
                reasons.append(self.support.reason)
            if not res.available:
                reasons.append(f"{res.reason}: never fires")
            if probe.name in self.tdp_mmu_only and tdp_mmu is False:
                reasons.append("the TDP MMU is off (kvm.tdp_mmu=N): only the shadow MMU runs")
            if res.available and "never fires" in probe.note:
                reasons.append(f"and where it attaches: {probe.note}")
            if reasons and not reasons[0].startswith("and "):
                out.append(ProbeStatus(probe.symbol, False, "; ".join(reasons)))
            else:
                how = MODES[res.mode]
                out.append(ProbeStatus(probe.symbol, True, f"{how}: {res.reason}" + (f" ({probe.note})" if probe.note else "")))
        return out

    def _kernel_types(self) -> KernelTypes | None:
        """This kernel's BTF (vmlinux and the KVM modules' split BTF), None when unreadable."""
        return running_types(self.btf_paths[0].parent) if self.btf_paths[0].exists() else None

    def resolutions(self) -> list[Resolution]:
        """The probes as :meth:`check` resolved them (the per-probe report of the manifest)."""
        return [self._resolutions[p.symbol] for p in self.probes if p.symbol in self._resolutions]

    def _available(self, statuses: list[ProbeStatus]) -> list[Resolution]:
        return [self._resolutions[s.probe] for s in statuses if s.available and s.probe in self._resolutions]

    # -- bcc backend ----------------------------------------------------------------------------------
    def bpf_source(self) -> str:
        return program_text(self.name)

    def cflags(self, available: list[ProbeStatus], target_tgid: int) -> list[str]:
        fields = STAGE2_FIELDS if self.name == "stage2" else TDP_FIELDS
        pages = self.rings()[0].pages
        # raw visit samples have no capture table: stage2 sends only the visits made outside any walk
        flags = [f"-DTK_S2_PAGES={pages}", "-DTK_S2_SAMPLE_PER_WALK=0"] if self.name == "stage2" else [
            f"-DTK_TDP_PAGES={pages}"]
        try:
            types = kernel_types(self.btf_paths[0], self.btf_paths[1:])
            return flags + offset_cflags(types, fields) + self._visitor_cflags(types)
        except MissingCapability:
            if any(s.available for s in available):
                raise
            return flags  # nothing of it can attach here (record skips it; --print-bpf still shows it)

    def _visitor_cflags(self, types: KernelTypes) -> list[str]:
        """stage2: where the visitors' fields are in this kernel's visitor prototype (``S2V_*``, see
        probes/stage2.bpf.c): ``ctx->level`` from 6.2, separate parameters before."""
        if self.name != "stage2":
            return []
        for visitor in ("stage2_split_walker", "stage2_map_walker"):
            found = fetch_cflags(visitor, VISITOR_ARGS, types, "arm64", "S2V")
            if found:
                return found
        return []

    def _ring_maps(self) -> dict[str, str]:
        return RINGS[self.name]

    def rings(self) -> list[RingSpec]:
        pages = max(self.options.ring_pages.get(name, 1024) for name in self._ring_maps())  # one size for all
        return [RingSpec(name, EVENT_DTYPES[dtype], pages) for name, dtype in self._ring_maps().items()]

    def lost_maps(self) -> dict[str, tuple[str, ...]]:
        """Reserve failures per probe: the index layouts of stage2.bpf.c and tdp.bpf.c."""
        symbol = {p.name: p.symbol for p in self.probes}
        symbol["vendor_exit"] = "npf_interception|handle_ept_violation"
        if self.name == "stage2":
            head = ("kvm_pgtable_walk", "stage2_split_walker|stage2_map_walker", "stage2_spans (table full)")
            return {"stage2_lost": head + tuple(symbol[n] for n in STAGE2_FUNC_NAMES)}
        return {"tdp_lost": tuple(symbol[n] for n in TDP_FUNC_NAMES) + ("tdp spans nested deeper than 4 (span table full)",)}

    def attach_bcc(self, bpf: Any, available: list[ProbeStatus]) -> list[str]:
        resolutions = self._available(available)
        names, failed = attach(bpf, self.name, resolutions)
        self.notes["attach_failed"] += failed
        self._bcc_attached = [r for r in resolutions if r.probe.name in names]
        return [f"kprobe:{r.symbol}" for r in self._bcc_attached]

    def detach_bcc(self, bpf: Any) -> None:
        for res in self._bcc_attached:
            _entry, ret = ATTACH[self.name][res.probe.name]
            for detach in (bpf.detach_kprobe, bpf.detach_kretprobe) if ret else (bpf.detach_kprobe,):
                try:
                    detach(event=res.symbol)
                except Exception:  # bcc: plain Exception when already gone; cleanup() frees the rest
                    pass
        self._bcc_attached = []

    def decode(self, map_name: str, records: np.ndarray) -> dict[str, pa.Table]:
        if self.name == "stage2":
            return decode_stage2(map_name, records, self.symbols)
        tables = decode_tdp(records, walk_base=self._next_walk)
        self._next_walk += len(records)
        return tables

    def finish(self, bpf: Any, stop_ns: int) -> dict[str, pa.Table]:
        """bcc: add the in-kernel counters to the notes; tdp: the iterator steps outside any span as visits."""
        map_name, notes = COUNT_NOTES[self.name]
        try:
            totals = read_percpu(bpf, map_name, len(notes)).sum(axis=0)
            outside = read_percpu(bpf, "tdp_outside", 3 * TDP_LEVELS) if self.name == "tdp" else None
        except KeyError:  # bcc: no such map, the program was built without this family
            return {}
        for note, total in zip(notes, totals):
            self.notes[note] += int(total)
        return {} if outside is None else {"stage2_visit": decode_tdp_outside(outside)}

    def manifest_notes(self) -> dict[str, Any]:
        return {f"{self.name}_probes": {**self.notes, "resolution": [r.as_dict() for r in self.resolutions()]}}

    # -- tracefs backend ------------------------------------------------------------------------------
    def supports_tracefs(self) -> bool:
        return True

    def tracefs_prepare(self, tracefs: Path, available: list[ProbeStatus]) -> list[str]:
        """Define a kprobe (and kretprobe) per available probe; refused lines are noted, not raised."""
        first = len(self._defined)
        for res in self._available(available):
            refusal = define_kprobes(tracefs, res, self._defined, group=self.group)
            if refusal:
                self.notes["attach_failed"].append({"probe": res.symbol, "reason": refusal})
        return [f"{self.group}:{name}" for name in self._defined[first:]]

    def tracefs_cleanup(self, tracefs: Path) -> None:
        defined, self._defined = self._defined, []
        for name in reversed(defined):
            try:
                append_line(tracefs / "kprobe_events", f"-:{self.group}/{name}")
            except OSError:
                pass

    def decode_tracefs(self, events: dict[str, np.ndarray]) -> dict[str, pa.Table]:
        by_name = {name.split(":", 1)[1]: array for name, array in events.items()}
        parts: dict[str, list[pa.Table]] = {name: [] for name in SCHEMAS}
        walks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # (tid, start, end, walk_id)
        new_walks = self._number_walks(by_name)
        for probe in self.probes:
            if probe.role == "visit":
                continue
            entry_name, ret_name = event_names(probe)
            new = new_walks.get(probe.name) or _columns(by_name.get(entry_name))
            entries = _concat([self._pending.pop(probe.name, None), new])
            returns = _columns(by_name.get(ret_name)) if ret_name else _columns(None)
            if not len(entries["ts_ns"]):
                self.notes["unpaired_returns"] += len(returns["ts_ns"])
                continue
            if ret_name is None:
                rows, rets, open_, missed = np.arange(len(entries["ts_ns"])), None, np.empty(0, int), np.empty(0, int)
            else:
                rows, rets, open_, missed = pair_calls(entries["ts_ns"], entries["tid"], returns["ts_ns"], returns["tid"])
                self.notes["unpaired_returns"] += len(returns["ts_ns"]) - len(rets)
                self.notes["missed_returns"] += len(missed)
            if len(open_):
                self._pending[probe.name] = _take(entries, open_)
            duration = np.full(len(rows), -1, np.int64)
            ret = None
            if rets is not None:
                duration = returns["ts_ns"][rets] - entries["ts_ns"][rows]
                ret = returns["ret"][rets] if probe.returns_value and "ret" in returns else None
            done = _take(entries, np.r_[rows, missed].astype(np.int64))
            if len(missed):
                duration = np.r_[duration, np.full(len(missed), -1, np.int64)]
                ret = None if ret is None else np.ma.concatenate([np.ma.asarray(ret), np.ma.masked_all(len(missed), ret.dtype)])
            if probe.role == "walk":
                ended = entries["ts_ns"][rows] + duration[: len(rows)]
                walks.append((entries["tid"][rows], entries["ts_ns"][rows], ended, entries["walk_id"][rows]))
                if len(open_):
                    walks.append((entries["tid"][open_], entries["ts_ns"][open_],
                                  np.full(len(open_), np.iinfo(np.int64).max), entries["walk_id"][open_]))  # fmt: skip
            family, table = self._rows(probe, done, duration, ret)
            if table is not None:
                parts[family].append(table)
        parts["stage2_visit"].append(self._visits(by_name, walks))
        for probe in SPLIT_TRACEPOINTS:
            if probe.name in by_name and len(by_name[probe.name]):
                e = _columns(by_name[probe.name])
                errno = e["errno"] if "errno" in e else None
                parts["split"].append(self._rows(probe, e, np.full(len(e["ts_ns"]), -1, np.int64), errno)[1])
        return {name: table_builders.concat_tables(name, tables) for name, tables in parts.items()}

    def event_names(self) -> set[str]:
        """tracefs event names (without group) :meth:`decode_tracefs` reads: entries, returns, split tracepoints."""
        return {name for p in self.probes for name in event_names(p) if name} | {p.name for p in SPLIT_TRACEPOINTS}

    def decode_recording(self, events: dict[str, np.ndarray]) -> dict[str, pa.Table]:
        """A whole recording in one batch: :meth:`decode_tracefs` plus the calls left open at its end."""
        tables = self.decode_tracefs(events)
        finals = self.finish_tracefs(0)
        return {name: table_builders.concat_tables(name, [table, finals[name]]) if name in finals else table
                for name, table in tables.items()}  # fmt: skip

    def _number_walks(self, by_name: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """The new entries of every walk probe, sorted by time, with ``walk_id`` numbered in time order
        across all walk probes of the batch (ties by CPU, then probe order), continuing the last batch."""
        entries = {p.name: _sorted(_columns(by_name.get(event_names(p)[0]))) for p in self.probes if p.role == "walk"}
        entries = {name: cols for name, cols in entries.items() if len(cols["ts_ns"])}
        if not entries:
            return {}
        ts = np.concatenate([cols["ts_ns"] for cols in entries.values()]).astype(np.int64)
        cpu = np.concatenate([cols["cpu"] for cols in entries.values()]).astype(np.int64)
        ranks = np.empty(len(ts), np.int64)
        ranks[np.lexsort((cpu, ts))] = np.arange(len(ts))  # lexsort is stable: probe order breaks the last ties
        start = 0
        for cols in entries.values():
            cols["walk_id"] = self._next_walk + ranks[start : start + len(cols["ts_ns"])]
            start += len(cols["ts_ns"])
        self._next_walk += len(ts)
        return entries

    def finish_tracefs(self, stop_ns: int) -> dict[str, pa.Table]:
        """Calls still open when the recording stopped (``duration_ns`` -1)."""
        parts: dict[str, list[pa.Table]] = {name: [] for name in SCHEMAS}
        for probe in self.probes:
            entries = self._pending.pop(probe.name, None)
            if entries is not None and len(entries["ts_ns"]):
                family, table = self._rows(probe, entries, np.full(len(entries["ts_ns"]), -1, np.int64), None)
                if table is not None:
                    parts[family].append(table)
        return {name: table_builders.concat_tables(name, tables) for name, tables in parts.items() if tables}

    def _visits(self, by_name: dict[str, np.ndarray], walks: list) -> pa.Table:
        tables = []
        for probe in self.probes:
            if probe.role != "visit" or probe.name not in by_name:
                continue
            v = _columns(by_name[probe.name])
            n = len(v["ts_ns"])
            level = _as_int8(v["level"]) if "level" in v else np.full(n, -1, np.int8)
            if "visit" in v:
                kind = table_builders.stage2_visit_names(v["visit"], table_builders.stage2_pte_kinds(v["old"], level) if "old" in v else None)
            else:
                kind = np.full(n, "step", dtype=object)
            walk_id = _innermost_walk(v["tid"], v["ts_ns"], walks)
            tables.append(table_builders.aggregate_visits(_common(v), walk_id, np.full(n, probe.symbol, dtype=object), level, kind))
        return table_builders.concat_tables("stage2_visit", tables)

    def _rows(self, probe: FuncProbe, e: dict[str, np.ndarray], duration: np.ndarray, ret: Any
              ) -> tuple[str, pa.Table | None]:
        n = len(e["ts_ns"])
        cols: dict[str, Any] = {**_common(e), "duration_ns": duration}
        if probe.role == "walk":
            host = e["mmu"] == 0 if "mmu" in e else np.zeros(n, bool)
            self.notes["host_walks"] += int(host.sum())
            keep = np.flatnonzero(~host)
            e, cols = _take(e, keep), {k: np.asarray(v)[keep] for k, v in cols.items()}
            ret = None if ret is None else ret[keep]
            n = len(keep)
            addr, size = e.get("addr"), e.get("size")
            if addr is None and "start" in e:
                addr, size = e["start"] << np.uint64(12), (e["end"] - e["start"]) << np.uint64(12)
            initiator = probe.symbol  # x86 iterator loops: the function is the initiator
            if "cb" in e:  # arm64: the visitor callback, unknown without a symbol table
                initiator = None
                if self.symbols is not None:
                    unique, inverse = np.unique(e["cb"], return_inverse=True)
                    initiator = np.array([self.symbols.symbolize(int(a)) for a in unique], dtype=object)[inverse.reshape(-1)]
            cols.update(walk_id=e["walk_id"], addr=addr, size=size, flags=e.get("flags"), initiator=initiator,
                        start_level=_as_int8(e["start_level"]) if "start_level" in e else None,
                        ret=_ret(ret, 32))  # fmt: skip
            return "stage2_walk", table_builders.table("stage2_walk", n, cols)
        if probe.role == "split":
            addr = e.get("addr")
            if addr is None and "gfn" in e:
                addr = e["gfn"] << np.uint64(12)
            level = _as_int8(e["level"]) if "level" in e else None
            size = e.get("size")
            if size is None and level is not None:
                size = np.uint64(4096) << (np.uint64(9) * (level.astype(np.int64) - 1).clip(0).astype(np.uint64))
            cols.update(probe=probe.name, addr=addr, size=size, level=level, ret=_ret(ret, 32))
            return "split", table_builders.table("split", n, cols)
        if probe.role == "fault":
            addr = e.get("ipa", e.get("gpa"))
            cols.update(probe=probe.name, addr=addr, ret=_ret(ret, 64),
                        vcpu_id=_as_int32(e["vcpu_id"]) if "vcpu_id" in e else None)  # fmt: skip
            return "fault", table_builders.table("fault", n, cols)
        args = {k: v for k, v in e.items() if not k.startswith(_NOT_ARGS) and k not in ("tid", "walk_id")}
        cols.update(name=probe.name, ret=_ret(ret, 64), args=table_builders.args_json(args, n))
        return "func_call", table_builders.table("func_call", n, cols)


def _ret(ret: Any, bits: int) -> Any:
    if ret is None:
        return None
    mask = np.ma.getmaskarray(ret) if isinstance(ret, np.ma.MaskedArray) else np.zeros(len(ret), bool)
    data = np.ma.getdata(ret).astype(np.uint64)
    values = data.astype(np.uint32).view(np.int32) if bits == 32 else data.view(np.int64)
    return np.ma.MaskedArray(values, mask=mask)


def _columns(events: np.ndarray | None) -> dict[str, np.ndarray]:
    """tracefs event array -> column dict with ``tid`` (the thread: ``common_pid``)."""
    if events is None:
        return {"ts_ns": np.empty(0, np.int64), "tid": np.empty(0, np.int32), "cpu": np.empty(0, np.int32),
                "tgid": np.empty(0, np.int32)}  # fmt: skip
    cols = {name: np.asarray(events[name]) for name in events.dtype.names}
    cols["tid"] = cols["common_pid"]
    return cols


def _common(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"ts_ns": cols["ts_ns"].astype(np.int64), "cpu": cols["cpu"].astype(np.int32),
            "pid": cols["tgid"].astype(np.int32), "tid": cols["tid"].astype(np.int32)}  # fmt: skip


def _take(cols: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: values[rows] for name, values in cols.items()}


def _sorted(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return _take(cols, np.lexsort((cols["cpu"], cols["ts_ns"])))


def _concat(parts: list[dict[str, np.ndarray] | None]) -> dict[str, np.ndarray]:
    parts = [p for p in parts if p is not None and len(p["ts_ns"])]
    if not parts:
        return _columns(None)
    if len(parts) == 1:
        return parts[0]
    names = [n for n in parts[0] if all(n in p for p in parts)]
    return {n: np.concatenate([p[n] for p in parts]) for n in names}


def _innermost_walk(tid: np.ndarray, ts: np.ndarray, walks: list) -> np.ndarray:
    """Walk id of the innermost walk of the same thread open at each visit (-1 when there is none).

    A thread's walks nest (they are calls), so the walks open at a visit are those its depth counts, and
    the innermost is the latest one that started at that depth. Starts, visits and ends are merged per
    thread in time order (at one instant a start before a visit before an end), the depth is their running
    sum (+1, 0, -1), and each visit takes the last start of its thread at its depth. ``walks`` holds
    (tid, start, end, walk_id) arrays; an open walk ends at the largest int64."""
    n = len(ts)
    if not walks or n == 0:
        return np.full(n, -1, np.int64)
    w_tid, w_start, w_end, w_id = (np.concatenate(c) for c in zip(*walks))
    m = len(w_tid)
    kind = np.r_[np.zeros(m, np.int8), np.ones(n, np.int8), np.full(m, 2, np.int8)]
    all_tid = np.r_[w_tid, tid, w_tid].astype(np.int64)
    order = np.lexsort((kind, np.r_[w_start, ts, w_end].astype(np.int64), all_tid))
    kind, all_tid = kind[order], all_tid[order]
    depth = np.cumsum(np.array([1, 0, -1], np.int64)[kind])  # every thread's starts and ends cancel out
    keep = np.flatnonzero(kind != 2)
    by = keep[np.lexsort((keep, depth[keep], all_tid[keep]))]  # per (thread, depth) in time order
    is_start = kind[by] == 0
    last_start = np.maximum.accumulate(np.where(is_start, np.arange(len(by)), -1))
    visits = np.flatnonzero(~is_start)
    start = np.maximum(last_start[visits], 0)
    ok = (last_start[visits] >= 0) & (depth[by[visits]] > 0)
    ok &= (all_tid[by[start]] == all_tid[by[visits]]) & (depth[by[start]] == depth[by[visits]])
    result = np.full(n, -1, np.int64)
    result[order[by[visits]] - m] = np.where(ok, w_id[np.minimum(order[by[start]], m - 1)], -1)
    return result


class Stage2Family(FunctionProbeFamily):
    """arm64 KVM stage-2 walks, visits, splits, maps and faults (kprobes; docs/probes/stage2.md)."""

    name = "stage2"
    description = "arm64 KVM stage-2 page-table walks, visits, splits and faults (kprobes)"
    probes = STAGE2_PROBES


class TdpFamily(FunctionProbeFamily):
    """x86 KVM TDP-MMU faults, eager splits and dirty-log clearing (kprobes; docs/probes/tdp.md)."""

    name = "tdp"
    description = "x86 KVM TDP-MMU faults, iterator walks, huge-page splits and dirty-log clearing (kprobes)"
    probes = TDP_PROBES
    tdp_mmu_only = TDP_MMU_ONLY


def family_for(probes: tuple[FuncProbe, ...]) -> FunctionProbeFamily:
    """A new family of the given probe tuple (``STAGE2_PROBES`` or ``TDP_PROBES``); ValueError otherwise."""
    for cls in (Stage2Family, TdpFamily):
        if tuple(probes) == cls.probes:
            return cls()
    raise ValueError("not the probes of a function-probe family (stage2 or tdp)")

