"""The built-in tracepoint probe families: ``walk``, ``ioctl``, ``lock`` and ``mmu``.

Each (listed by name in :mod:`tracekit.recorder.registry`) turns ring-buffer records (numpy arrays of
the dtypes in :mod:`tracekit.schema`) or raw tracefs events into Arrow tables whose columns are
documented in docs/capture-families-tracepoints.md (common columns ``ts_ns`` int64 CLOCK_MONOTONIC
ns, ``cpu``, ``pid`` (tgid), ``tid`` first). The tracefs decoders keep per-thread state between
batches (open walks, ioctl entries and lock contentions not yet closed).
"""

from __future__ import annotations

import platform
from typing import Any

import numpy as np
import pyarrow as pa

from tracekit import schema as S
from tracekit.capture.columns import SCHEMAS
from tracekit.probes import source_text
from tracekit.recorder.ring_batch import batch_dtype, is_batched, unbatch
from tracekit.recorder.backend_bcc import read_percpu
from tracekit.recorder.probe_family import ProbeFamily, ProbeStatus, RingSpec, common_arrays
from tracekit.host import Host
from tracekit.recorder.inflight import BlockedCall, NR_IOCTL, inflight_records
from tracekit.recorder.ioctl_args import IoctlArgsProbe, decode_args
from tracekit.recorder.kvm_ioctls import KVMIO, ioctl_cflags, ioctl_name

__all__ = ["WalkFamily", "IoctlFamily", "impossible_elements", "LockFamily", "MmuFamily", "MMU_EVENTS", "LOCK_FLAG_NAMES",
           "lock_flags_name"]

def _table(schema: pa.Schema, columns: dict[str, Any]) -> pa.Table:
    arrays = []
    for fld in schema:
        value = columns[fld.name]
        if isinstance(value, pa.Array | pa.ChunkedArray):
            arrays.append(value.cast(fld.type) if value.type != fld.type else value)
        elif pa.types.is_dictionary(fld.type):
            arrays.append(pa.array(value, type=pa.string()).dictionary_encode().cast(fld.type))
        else:
            arrays.append(pa.array(value, type=fld.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _labels(codes: np.ndarray, name_of) -> pa.DictionaryArray:
    """Dictionary column of ``name_of(code)`` for integer ``codes``, computed once per distinct code."""
    unique, inverse = np.unique(codes, return_inverse=True)
    names = pa.array([name_of(int(c)) for c in unique], type=pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(inverse.astype(np.int32)), names)


def _masked(values: np.ndarray, valid: np.ndarray, type_: pa.DataType) -> pa.Array:
    """``values`` as an Arrow array of ``type_`` with nulls where ``valid`` is False (no per-row work)."""
    if pa.types.is_boolean(type_):
        return pa.array(values, type=type_, mask=~valid)
    data = np.ascontiguousarray(values, dtype=type_.to_pandas_dtype())
    bitmap = np.packbits(valid.astype(np.uint8), bitorder="little")
    nulls = len(valid) - int(np.count_nonzero(valid))
    return pa.Array.from_buffers(type_, len(data), [pa.py_buffer(bitmap), pa.py_buffer(data)], null_count=nulls)


def _fill_header(records: np.ndarray, ev: np.ndarray, kind: int) -> None:
    records["hdr"]["ts_ns"] = ev["ts_ns"]
    records["hdr"]["cpu"] = ev["cpu"]
    records["hdr"]["tid"] = ev["common_pid"]
    records["hdr"]["pid"] = ev["tgid"] if "tgid" in ev.dtype.names else ev["common_pid"]
    records["hdr"]["kind"] = kind


def _concat_events(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """Records of several kinds in one array ordered by (tid, ts_ns) (stable)."""
    if not parts:
        return np.empty(0, dtype)
    records = np.concatenate(parts) if len(parts) > 1 else parts[0]
    order = np.lexsort((records["hdr"]["ts_ns"], records["hdr"]["tid"]))
    return records[order]


# --------------------------------------------------------------------------------------------- walk

class WalkFamily(ProbeFamily):
    """kvmmmu:kvm_mmu_pagetable_walk / kvm_mmu_paging_element / kvm_mmu_walker_error."""

    name = "walk"
    description = "guest page-table walks done by KVM's software walker"
    tracepoints = ("kvmmmu:kvm_mmu_pagetable_walk", "kvmmmu:kvm_mmu_paging_element", "kvmmmu:kvm_mmu_walker_error")
    untimed = ("kvmmmu:kvm_mmu_paging_element",)  # its walk's start time
    continuations = ("kvmmmu:kvm_mmu_paging_element", "kvmmmu:kvm_mmu_walker_error")
    required = tracepoints[:2]
    tracepoint_fields = {"kvmmmu:kvm_mmu_pagetable_walk": ("addr", "pferr"),
                         "kvmmmu:kvm_mmu_paging_element": ("pte", "level"),
                         "kvmmmu:kvm_mmu_walker_error": ("pferr",)}

    WALK, ELEMENT, ERROR = SCHEMAS["walk"], SCHEMAS["walk_element"], SCHEMAS["walk_error"]

    #: Elements kept per walk: more make a walk malformed.
    MAX_ELEMENTS = S.TK_WALK_MAX_ELEMENTS

    def __init__(self, options=None):
        super().__init__(options)
        self._open: dict[int, tuple[int, int]] = {}  # tracefs: tid -> (walk_id, next index)
        self._shape: dict[int, tuple[int, int, bool]] = {}  # tracefs: open walk -> (last level, root, broken)
        self._next_id = 1
        self._partial = {"walk_elements_without_start": 0, "walk_elements_beyond_limit": 0}

    def partial_counts(self) -> dict[str, int]:
        return dict(self._partial)

    def finish(self, bpf: Any, stop_ns: int) -> dict[str, pa.Table]:
        counts = read_percpu(bpf, "walk_partial", S.TK_WALK_PARTIALS).sum(axis=0)
        self._partial = {"walk_elements_without_start": int(counts[S.TK_WALK_PARTIAL_NO_START]),
                         "walk_elements_beyond_limit": int(counts[S.TK_WALK_PARTIAL_TOO_LONG])}
        return {}

    def tables(self) -> dict[str, pa.Schema]:
        return {"walk": self.WALK, "walk_element": self.ELEMENT, "walk_error": self.ERROR}

    def bpf_source(self) -> str:
        return source_text("walk")

    def cflags(self, available: list[ProbeStatus], target_tgid: int) -> list[str]:
        return [f"-DTK_WALK_PAGES={self.rings()[0].pages}", f"-DTK_BATCH_EVENTS={self.options.batch_events}"]

    def rings(self) -> list[RingSpec]:
        return [RingSpec("walk_events", batch_dtype(S.WALK_EVENT_DTYPE, self.options.batch_events),
                         self.options.ring_pages.get("walk_events", 4096))]

    def lost_maps(self) -> dict[str, tuple[str, ...]]:
        return {"walk_lost": self.tracepoints}

    def staging_maps(self) -> dict[str, str]:
        return {"walk_staging": "walk_events"}

    def failure_maps(self) -> dict[str, tuple[str, str, tuple[str, ...]]]:
        return {"walk_failures": ("walk_failure_count", "walk_events", self.tracepoints)}

    def decode(self, map_name: str, records: np.ndarray) -> dict[str, pa.Table]:
        if is_batched(records):
            records = unbatch(records)
        # Select from plain field views: boolean indexing of the nested record dtype is ~10x slower.
        kind = records["hdr"]["kind"]
        fields = {**common_arrays(records["hdr"]), "walk_id": records["walk_id"], "value": records["value"],
                  "aux": records["aux"], "index": records["index"]}
        out = {}
        for table, k in (("walk", S.TK_WALK_START), ("walk_element", S.TK_WALK_ELEMENT), ("walk_error", S.TK_WALK_ERROR)):
            rows = np.flatnonzero(kind == k)
            pick = {name: column[rows] for name, column in fields.items()}
            cols: dict[str, Any] = {name: pick[name] for name in ("ts_ns", "cpu", "pid", "tid", "walk_id")}
            if table == "walk":
                cols["addr"], cols["pferr"] = pick["value"], pick["aux"]
            elif table == "walk_element":
                cols["index"] = pick["index"].astype(np.uint8)
                cols["level"] = pick["aux"].astype(np.int8)
                cols["pte"] = pick["value"]
            else:
                cols["pferr"] = pick["aux"]
            out[table] = _table(self.tables()[table], cols)
        return out

    def decode_tracefs(self, events: dict[str, np.ndarray]) -> dict[str, pa.Table]:
        parts = []
        for tp, kind, value, aux in (("kvmmmu:kvm_mmu_pagetable_walk", S.TK_WALK_START, "addr", "pferr"),
                                     ("kvmmmu:kvm_mmu_paging_element", S.TK_WALK_ELEMENT, "pte", "level"),
                                     ("kvmmmu:kvm_mmu_walker_error", S.TK_WALK_ERROR, None, "pferr")):
            ev = events.get(tp)
            if ev is None or not len(ev):
                continue
            rec = np.zeros(len(ev), S.WALK_EVENT_DTYPE)
            _fill_header(rec, ev, kind)
            if value:
                rec["value"] = ev[value]
            rec["aux"] = ev[aux]
            parts.append(rec)
        records = _concat_events(parts, S.WALK_EVENT_DTYPE)
        self.assign_walk_ids(records)
        kind = records["hdr"]["kind"]
        orphan = (kind != S.TK_WALK_START) & (records["walk_id"] == 0)
        too_long = (kind == S.TK_WALK_ELEMENT) & (records["index"] >= self.MAX_ELEMENTS)
        self._partial["walk_elements_without_start"] += int(orphan.sum())
        self._partial["walk_elements_beyond_limit"] += int((too_long & ~orphan).sum())
        drop = orphan | too_long
        if self.window_stop_ns is not None:  # walks that start after the window: not recorded, nor their elements
            late = (kind == S.TK_WALK_START) & (records["hdr"]["ts_ns"] > self.window_stop_ns)
            drop |= np.isin(records["walk_id"], records["walk_id"][late])
        return self.decode("walk_events", records[~drop])

    def assign_walk_ids(self, records: np.ndarray) -> None:
        """Give events sorted by (tid, ts) the walk_id/index the BPF program would have given.

        Open walks are carried per thread across batches: an element whose walk started in an
        earlier batch keeps that walk's id and continues its index. An element no walk can have next
        (:func:`impossible_elements`: its walk start was lost, the rest of another walk's) and those
        after it until the thread's next walk get walk id 0: orphans, not a malformed walk."""
        n = len(records)
        if n == 0:
            return
        tid = records["hdr"]["tid"].astype(np.int64)
        kind = records["hdr"]["kind"]
        is_start = kind == S.TK_WALK_START
        is_elem = kind == S.TK_WALK_ELEMENT
        new_ids = np.arange(self._next_id, self._next_id + int(is_start.sum()) + 1, dtype=np.uint64)
        self._next_id += int(is_start.sum())
        group_first = np.r_[0, np.flatnonzero(tid[1:] != tid[:-1]) + 1]
        group_last = np.r_[group_first[1:] - 1, n - 1]
        group_of = np.repeat(np.arange(len(group_first)), group_last - group_first + 1)
        elem_cum = np.cumsum(is_elem)
        before_group = np.r_[0, elem_cum][group_first][group_of]  # elements before the thread's rows
        last_start = np.maximum.accumulate(np.where(is_start, np.arange(n), -1))
        in_batch = last_start >= group_first[group_of]
        rank = np.maximum(np.cumsum(is_start) - 1, 0)
        carried = [self._open.get(int(tid[f]), (0, 0)) for f in group_first]
        carry_id = np.array([c[0] for c in carried], dtype=np.uint64)[group_of]
        carry_next = np.array([c[1] for c in carried], dtype=np.int64)[group_of]
        since_start = elem_cum - elem_cum[np.maximum(last_start, 0)]
        walk_id = np.where(in_batch, new_ids[rank], carry_id)
        next_index = np.where(in_batch, since_start, carry_next + elem_cum - before_group)
        next_index = np.where(walk_id == 0, 0, next_index)  # no open walk: index 0, as in the kernel
        index = np.where(is_elem & (walk_id != 0), next_index - 1, 0)
        elements = np.flatnonzero(is_elem & (walk_id != 0))
        broken, shape = impossible_elements(walk_id[elements], index[elements],
                                            records["aux"][elements].astype(np.int64), self._shape)
        records["walk_id"] = np.where(np.isin(np.arange(n), elements[broken]), 0, walk_id)
        index[elements[broken]] = 0
        records["index"] = index.astype(np.uint32)
        for row in group_last:  # a broken walk stays open: the thread's next elements are orphans too
            if walk_id[row]:
                self._open[int(tid[row])] = (int(walk_id[row]), int(next_index[row]))
        open_ids = {w for w, _ in self._open.values()}
        self._shape = {w: v for w, v in shape.items() if w in open_ids}


def impossible_elements(walk_id: np.ndarray, index: np.ndarray, level: np.ndarray,
                        carried: dict[int, tuple[int, int, bool]]) -> tuple[np.ndarray, dict]:
    """Which elements (rows in thread and time order, each walk's rows consecutive) cannot belong to their
    walk: ``FNAME(walk_addr_generic)`` reads one level lower each step, or starts again at the root level
    (``retry_walk``), so an element of any other level, and every later one of that walk, is flagged.
    ``carried`` gives the walks open from an earlier batch ``(last level, root level, broken)``; returns
    the flags and the same for every walk seen here (to carry)."""
    n = len(walk_id)
    if n == 0:
        return np.zeros(0, bool), dict(carried)
    first = np.r_[True, walk_id[1:] != walk_id[:-1]]
    run = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    state = [carried.get(int(w), (-1, -1, False)) for w in walk_id[starts].tolist()]
    carry_last = np.array([c[0] for c in state], np.int64)
    carry_root = np.array([c[1] for c in state], np.int64)
    carry_broken = np.array([c[2] for c in state], bool)
    root = np.where(index[starts] == 0, level[starts], carry_root)[run]
    previous = np.r_[-1, level[:-1]]
    previous = np.where(first, carry_last[run], previous)
    bad = (index > 0) & (level != previous - 1) & (level != root)
    bad_before = np.cumsum(bad) - bad
    broken = (bad_before - bad_before[starts][run] + bad > 0) | carry_broken[run]
    ends = np.r_[starts[1:], n] - 1
    out = dict(carried)
    for w, last, r, b in zip(walk_id[starts].tolist(), level[ends].tolist(), root[ends].tolist(), broken[ends].tolist()):
        out[int(w)] = (int(last), int(r), bool(b))
    return broken, out


# -------------------------------------------------------------------------------------------- ioctl

_IOCTL_TABLE, _IOCTL_SUMMARY = SCHEMAS["ioctl"], SCHEMAS["ioctl_summary"]

#: Commands whose argument structs ioctl.bpf.c copies at entry.
_DECODED_IOCTLS = ("KVM_SET_USER_MEMORY_REGION", "KVM_SET_USER_MEMORY_REGION2", "KVM_GET_DIRTY_LOG",
                   "KVM_CLEAR_DIRTY_LOG", "KVM_ENABLE_CAP")

#: Values of the ioctl table's ``partial`` column: the part of the call the window cut off.
IOCTL_PARTIAL = {0: "", S.TK_IOCTL_BEGAN_BEFORE: "began_before", S.TK_IOCTL_UNFINISHED: "unfinished",
                 S.TK_IOCTL_BEGAN_BEFORE | S.TK_IOCTL_UNFINISHED: "began_before,unfinished"}
_IOCTL_PARTIAL_BITS = S.TK_IOCTL_BEGAN_BEFORE | S.TK_IOCTL_UNFINISHED


class IoctlFamily(ProbeFamily):
    """syscalls:sys_enter_ioctl / sys_exit_ioctl on KVM commands, paired per thread."""

    name = "ioctl"
    description = "KVM ioctls: command, decoded arguments, duration, return value"
    #: The timer tick finds calls already running when the window opens (bcc; optional).
    tracepoints = ("syscalls:sys_enter_ioctl", "syscalls:sys_exit_ioctl", "timer:hrtimer_expire_entry")
    required = tracepoints[:2]
    tracepoint_fields = {"syscalls:sys_enter_ioctl": ("fd", "cmd", "arg"), "syscalls:sys_exit_ioctl": ("ret",)}

    def __init__(self, options=None):
        super().__init__(options)
        self.aggregated = tuple(c for c in self.options.aggregate_ioctls if c not in self.options.stream_ioctls)[:4]
        self._pending = np.empty(0, S.IOCTL_EVENT_DTYPE)  # tracefs: entries awaiting their exit
        self._agg: dict[tuple[int, int, int, int, int], list[int]] = {}
        self._args_probe: IoctlArgsProbe | None = None  # tracefs: the ioctl uprobe giving argument structs
        self._args_note = ""
        self._carried_args: dict[int, list[tuple]] = {}
        self._partial = {"ioctl_began_before": 0, "ioctl_unfinished": 0, "ioctl_exits_without_entry": 0,
                         "ioctl_in_flight_at_start": 0}
        self._in_flight = np.empty(0, S.IOCTL_EVENT_DTYPE)  # calls /proc showed blocked when the window opened
        self._active_tids: set[int] = set()  # bcc: threads with a streamed call in the window
        self._task_regs = False  # set by check(): the BPF helpers that read a thread's saved registers exist

    def partial_counts(self) -> dict[str, int]:
        return dict(self._partial)

    def open_in_flight(self, calls: list[BlockedCall], start_ns: int) -> None:
        """Calls blocked in a KVM ioctl when the window opened at ``start_ns`` (read from /proc): tracefs
        pairs each with its thread's first exit (an entry of the thread after it supersedes it); bcc
        counts one whose thread shows no call at all in the window as running through the whole window
        (its exit would have been recorded from the saved registers)."""
        self._in_flight = inflight_records(calls, start_ns)
        self._partial["ioctl_in_flight_at_start"] = len(calls)
        self._pending = _concat_events([self._pending, self._in_flight], S.IOCTL_EVENT_DTYPE)

    def tables(self) -> dict[str, pa.Schema]:
        return {"ioctl": _IOCTL_TABLE, "ioctl_summary": _IOCTL_SUMMARY}

    def bpf_source(self) -> str:
        return source_text("ioctl")

    def cflags(self, available: list[ProbeStatus], target_tgid: int) -> list[str]:
        cmds = list(self.aggregated) + [0] * (4 - len(self.aggregated))
        flags = [f"-DTK_IOCTL_AGG_CMD{i}={c:#x}" for i, c in enumerate(cmds)]
        if not self.aggregated:
            flags[0] = "-DTK_IOCTL_AGG_CMD0=0x1"  # no KVM command has number 1 (type 0)
        if self._task_regs:
            flags += ["-DTK_IOCTL_TASK_REGS=1", f"-DTK_NR_IOCTL={NR_IOCTL[platform.machine()]}"]
            if platform.machine() == "aarch64":
                flags.append("-DTK_ARCH_ARM64=1")
            if any(s.probe == self.tracepoints[2] and s.available for s in available):
                flags.append("-DTK_IOCTL_TICK=1")
        return flags + [f"-DTK_IOCTL_PAGES={self.rings()[0].pages}"] + ioctl_cflags(*_DECODED_IOCTLS)

    def rings(self) -> list[RingSpec]:
        return [RingSpec("ioctl_events", S.IOCTL_EVENT_DTYPE, self.options.ring_pages.get("ioctl_events", 256))]

    def lost_maps(self) -> dict[str, tuple[str, ...]]:
        return {"ioctl_lost": self.tracepoints[:2]}

    def check(self, host: Host) -> list[ProbeStatus]:
        """The tracepoints; and whether a call running when the window opens can be read from the thread's
        saved registers: BTF and the helpers bpf_get_current_task_btf (Linux 5.11) and bpf_task_pt_regs
        (5.15) in the kernel, on a machine whose ioctl syscall number is known."""
        self._task_regs = (host.has_btf() and platform.machine() in NR_IOCTL
                           and all(host.has_symbol(f) for f in ("bpf_get_current_task_btf", "bpf_task_pt_regs")))
        return super().check(host)

    def manifest_notes(self) -> dict[str, Any]:
        notes: dict[str, Any] = {"ioctl_aggregated": [ioctl_name(c) for c in self.aggregated]}
        if self._args_note:
            notes["ioctl_args"] = self._args_note
        return notes

    def tracefs_prepare(self, tracefs, available: list[ProbeStatus]) -> list[str]:
        """The syscall tracepoints (the timer tick serves the bcc program only) and the argument uprobe."""
        names = [name for name in super().tracefs_prepare(tracefs, available) if name in self.required]
        probe = IoctlArgsProbe(tracefs)
        if probe.define():
            self._args_probe = probe
            names.append(probe.event)
            self._args_note = f"argument structs from a {probe.note}"
        else:
            self._args_note = f"no argument structs (tracefs backend): {probe.note}"
        return names

    def tracefs_cleanup(self, tracefs) -> None:
        if self._args_probe is not None:
            self._args_probe.remove()

    def decode(self, map_name: str, records: np.ndarray) -> dict[str, pa.Table]:
        cols: dict[str, Any] = common_arrays(records["hdr"])
        decoded = records["decoded"]
        region = (decoded & S.TK_IOCTL_HAS_REGION) != 0
        has_slot = (decoded & (S.TK_IOCTL_HAS_REGION | S.TK_IOCTL_HAS_SLOT | S.TK_IOCTL_HAS_CLEAR)) != 0
        clear = (decoded & S.TK_IOCTL_HAS_CLEAR) != 0
        cap = (decoded & S.TK_IOCTL_HAS_CAP) != 0
        cmd = records["cmd"]
        cols.update(
            duration_ns=records["duration_ns"], fd=records["fd"], cmd=cmd, cmd_name=_labels(cmd, ioctl_name),
            ret=records["ret"],
            slot=_masked(records["slot"] & 0xFFFF, has_slot, pa.uint16()),
            as_id=_masked(records["slot"] >> 16, has_slot, pa.uint16()),
            flags=_masked(records["flags"], region | cap, pa.uint32()),
            guest_phys_addr=_masked(records["guest_phys_addr"], region, pa.uint64()),
            memory_size=_masked(records["memory_size"], region, pa.uint64()),
            userspace_addr=_masked(records["userspace_addr"], region, pa.uint64()),
            first_page=_masked(records["first_page"], clear, pa.uint64()),
            num_pages=_masked(records["num_pages"], clear, pa.uint32()),
            cap=_masked(records["cap"], cap, pa.uint32()),
            cap_arg0=_masked(records["cap_arg0"], cap, pa.uint64()),
            arg=records["arg"],
            partial=_labels(decoded & _IOCTL_PARTIAL_BITS, IOCTL_PARTIAL.__getitem__),
        )
        if "ret" in cols and np.any(decoded & S.TK_IOCTL_UNFINISHED):
            cols["ret"] = _masked(records["ret"], (decoded & S.TK_IOCTL_UNFINISHED) == 0, pa.int64())
        self._partial["ioctl_began_before"] += int(np.count_nonzero(decoded & S.TK_IOCTL_BEGAN_BEFORE))
        self._active_tids.update(np.unique(records["hdr"]["tid"]).tolist())
        return {"ioctl": _table(_IOCTL_TABLE, cols)}

    def finish(self, bpf: Any, stop_ns: int) -> dict[str, pa.Table]:
        agg: dict[tuple[int, ...], list[int]] = {}
        for key, val in bpf[b"ioctl_agg"].items():
            agg[(key.pid, key.tid, key.cmd, key.fd, key.err)] = [val.count, val.total_ns, val.max_ns, val.errors,
                                                                 val.partial]
            self._partial["ioctl_began_before"] += val.partial
        raw = b"".join(bytes(v) for v in bpf[b"ioctl_inflight"].values())
        unfinished = np.frombuffer(raw, S.IOCTL_EVENT_DTYPE).copy()
        exits_lost = int(read_percpu(bpf, "ioctl_lost", 2)[:, 1].sum())
        never_exited = self._never_exited(agg, unfinished, exits_lost)
        return self._close_unfinished(np.concatenate([unfinished, never_exited]), agg, stop_ns)

    def _never_exited(self, agg: dict[tuple[int, ...], list[int]], unfinished: np.ndarray,
                      exits_lost: int) -> np.ndarray:
        """bcc: the calls in flight at the window's start whose thread shows no call in the window (no
        exit, no entry, no tick): blocked through the whole window (a halted vCPU in KVM_RUN). Only where
        the program reads saved registers (else the exit of such a call leaves no trace), and for streamed
        commands only when no exit was lost on a full ring (it could have been theirs)."""
        if not self._task_regs:
            return self._in_flight[:0]
        active = self._active_tids | {key[1] for key in agg} | set(unfinished["hdr"]["tid"].tolist())
        keep = ~np.isin(self._in_flight["hdr"]["tid"], list(active))
        if exits_lost:
            keep &= np.isin(self._in_flight["cmd"], np.asarray(self.aggregated, dtype=np.uint32))
        return self._in_flight[keep]

    def _close_unfinished(self, calls: np.ndarray, agg: dict[tuple[int, ...], list[int]],
                          stop_ns: int) -> dict[str, pa.Table]:
        """The end-of-run tables: calls still running when the window closed at ``stop_ns`` counted up to
        it and marked ``unfinished`` (streamed ones as ioctl rows, aggregated ones in the summary), then
        the summary of the aggregated commands from ``agg`` ((pid, tid, cmd, fd, -errno or 0) -> count,
        total, max, errors, partial)."""
        calls = calls[calls["hdr"]["ts_ns"] <= stop_ns]
        calls["duration_ns"] = stop_ns - calls["hdr"]["ts_ns"].astype(np.int64)
        calls["decoded"] |= S.TK_IOCTL_UNFINISHED
        self._partial["ioctl_unfinished"] += len(calls)
        aggregated = np.isin(calls["cmd"], np.asarray(self.aggregated, dtype=np.uint32))
        self._partial["ioctl_began_before"] += int(np.count_nonzero(calls["decoded"][aggregated] & S.TK_IOCTL_BEGAN_BEFORE))
        for row in calls[aggregated]:
            key = (int(row["hdr"]["pid"]), int(row["hdr"]["tid"]), int(row["cmd"]), int(row["fd"]), 0)
            acc = agg.setdefault(key, [0, 0, 0, 0, 0])
            acc[0] += 1
            acc[1] += int(row["duration_ns"])
            acc[2] = max(acc[2], int(row["duration_ns"]))
            acc[4] += 1
        out = {"ioctl_summary": self._summary([(*key, *val) for key, val in agg.items()], stop_ns)}
        if np.any(~aggregated):
            out.update(self.decode("ioctl_events", calls[~aggregated]))
        return out

    def _summary(self, rows: list[tuple[int, ...]], stop_ns: int) -> pa.Table:
        """Rows of (pid, tid, cmd, fd, err, count, total, max, errors, partial), err the negative errno or 0."""
        rows.sort(key=lambda r: (r[1], r[2], r[3], -r[4]))
        cols: dict[str, Any] = {
            "ts_ns": [stop_ns] * len(rows), "cpu": [-1] * len(rows),
            "pid": [r[0] for r in rows], "tid": [r[1] for r in rows], "cmd": [r[2] for r in rows],
            "cmd_name": [ioctl_name(r[2]) for r in rows], "count": [r[5] for r in rows],
            "total_ns": [r[6] for r in rows], "max_ns": [r[7] for r in rows], "errors": [r[8] for r in rows],
            "fd": [r[3] for r in rows], "errno": [-r[4] for r in rows],
            "partial": [r[9] for r in rows],
        }
        return _table(_IOCTL_SUMMARY, cols)

    def decode_tracefs(self, events: dict[str, np.ndarray]) -> dict[str, pa.Table]:
        enter = events.get("syscalls:sys_enter_ioctl")
        exit_ = events.get("syscalls:sys_exit_ioctl")
        parts = [self._pending]
        if enter is not None and len(enter):  # every ioctl pairs; other commands are dropped after
            rec = np.zeros(len(enter), S.IOCTL_EVENT_DTYPE)
            _fill_header(rec, enter, 0)
            rec["fd"], rec["cmd"], rec["arg"] = enter["fd"], enter["cmd"], enter["arg"]
            if self._args_probe is not None:
                decode_args(rec, events.get(self._args_probe.event), self._carried_args)
            parts.append(rec)
        if exit_ is not None and len(exit_):
            rec = np.zeros(len(exit_), S.IOCTL_EVENT_DTYPE)
            _fill_header(rec, exit_, 1)
            rec["ret"] = exit_["ret"]
            parts.append(rec)
        records = _concat_events(parts, S.IOCTL_EVENT_DTYPE)
        pairs, self._pending = pair_enter_exit(records)
        self._partial["ioctl_exits_without_entry"] += int(np.count_nonzero(records["hdr"]["kind"] == 1)) - len(pairs)
        pairs = pairs[((records["cmd"][pairs[:, 0]] >> 8) & 0xFF) == KVMIO]
        calls = records[pairs[:, 0]].copy()
        calls["duration_ns"] = (records["hdr"]["ts_ns"][pairs[:, 1]] - calls["hdr"]["ts_ns"]).astype(np.int64)
        calls["ret"] = records["ret"][pairs[:, 1]]
        calls["hdr"]["kind"] = 0
        agg = np.isin(calls["cmd"], np.asarray(self.aggregated, dtype=np.uint32))
        for row in calls[agg]:  # aggregated commands: one dict update per call (tracefs backend only)
            ret = int(row["ret"])
            key = (int(row["hdr"]["pid"]), int(row["hdr"]["tid"]), int(row["cmd"]), int(row["fd"]), min(ret, 0))
            acc = self._agg.setdefault(key, [0, 0, 0, 0, 0])
            acc[0] += 1
            acc[1] += int(row["duration_ns"])
            acc[2] = max(acc[2], int(row["duration_ns"]))
            acc[3] += int(ret < 0)
            began_before = int(row["decoded"] & S.TK_IOCTL_BEGAN_BEFORE != 0)
            acc[4] += began_before
            self._partial["ioctl_began_before"] += began_before
        return self.decode("ioctl_events", calls[~agg])

    def finish_tracefs(self, stop_ns: int) -> dict[str, pa.Table]:
        pending, self._pending = self._pending, self._pending[:0]
        kvm = (pending["hdr"]["kind"] == 0) & (((pending["cmd"] >> 8) & 0xFF) == KVMIO)
        return self._close_unfinished(pending[kvm].copy(), self._agg, stop_ns)


def pair_enter_exit(records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pair begin (kind 0) and end (kind 1) records sorted by (tid, ts_ns).

    Returns (pairs of row indices [begin, end], begins still open at the end of their thread's rows,
    to carry into the next batch). An end whose previous row of the same thread is not a begin is
    dropped (its begin was before the recording started)."""
    kind = records["hdr"]["kind"]
    tid = records["hdr"]["tid"]
    n = len(records)
    if n == 0:
        return np.empty((0, 2), dtype=np.int64), records[:0]
    ends = np.flatnonzero(kind[1:] == 1) + 1
    ok = (kind[ends - 1] == 0) & (tid[ends - 1] == tid[ends])
    pairs = np.stack([ends[ok] - 1, ends[ok]], axis=1)
    last_of_tid = np.r_[tid[1:] != tid[:-1], True]
    open_begins = (kind == 0) & last_of_tid
    return pairs, records[open_begins].copy()


# --------------------------------------------------------------------------------------------- lock

#: lock:contention_begin flag bits (include/trace/events/lock.h).
LOCK_FLAG_NAMES = ((1, "SPIN"), (2, "READ"), (4, "WRITE"), (8, "RT"), (16, "PERCPU"), (32, "MUTEX"))

_LOCK_TABLE, _STACK_TABLE = SCHEMAS["lock"], SCHEMAS["stack"]


def lock_flags_name(flags: int) -> str:
    """``SPIN|WRITE`` style name of contention flags (``0`` when none is set)."""
    names = [name for bit, name in LOCK_FLAG_NAMES if flags & bit]
    rest = flags & ~sum(bit for bit, _ in LOCK_FLAG_NAMES)
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "0"


class LockFamily(ProbeFamily):
    """lock:contention_begin / contention_end of the target's threads, paired per task."""

    name = "lock"
    description = "lock contention of the target's threads: lock address, flags, wait time, kernel stack"
    tracepoints = ("lock:contention_begin", "lock:contention_end")
    required = tracepoints
    tracepoint_fields = {"lock:contention_begin": ("lock_addr", "flags"), "lock:contention_end": ("lock_addr", "ret")}

    def __init__(self, options=None):
        super().__init__(options)
        self._pending = np.empty(0, S.LOCK_EVENT_DTYPE)
        self._stack_ids: set[int] = set()
        self.nested = 0
        self._partial = {"lock_waits_began_before": 0, "lock_waits_unfinished": 0}

    def partial_counts(self) -> dict[str, int]:
        return dict(self._partial)

    def tables(self) -> dict[str, pa.Schema]:
        return {"lock": _LOCK_TABLE, "stack": _STACK_TABLE}

    def bpf_source(self) -> str:
        return source_text("lock")

    def cflags(self, available: list[ProbeStatus], target_tgid: int) -> list[str]:
        return [f"-DTK_LOCK_PAGES={self.rings()[0].pages}"]

    def rings(self) -> list[RingSpec]:
        return [RingSpec("lock_events", S.LOCK_EVENT_DTYPE, self.options.ring_pages.get("lock_events", 512))]

    def lost_maps(self) -> dict[str, tuple[str, ...]]:
        return {"lock_lost": self.tracepoints}

    def manifest_notes(self) -> dict[str, Any]:
        return {"lock_nested_ignored": self.nested}

    def decode(self, map_name: str, records: np.ndarray) -> dict[str, pa.Table]:
        self._stack_ids.update(int(s) for s in np.unique(records["stack_id"]) if s >= 0)
        cols: dict[str, Any] = common_arrays(records["hdr"])
        flags = records["flags"]
        cols.update(lock_addr=records["lock_addr"], flags=flags, flags_name=_labels(flags, lock_flags_name),
                    wait_ns=records["wait_ns"], ret=records["ret"], stack_id=records["stack_id"])
        return {"lock": _table(_LOCK_TABLE, cols)}

    def finish(self, bpf: Any, stop_ns: int) -> dict[str, pa.Table]:
        try:
            self.nested = int(sum(bpf[b"lock_nested"][0]))
        except (KeyError, IndexError, TypeError):
            pass
        self._partial = {"lock_waits_began_before": int(read_percpu(bpf, "lock_partial", 1).sum()),
                         "lock_waits_unfinished": len(bpf[b"lock_open_by_tid"])}
        stacks = bpf[b"lock_stacks"]
        ids, frames = [], []
        for stack_id in sorted(self._stack_ids):
            try:
                addresses = list(stacks.walk(stack_id))
            except KeyError:
                addresses = []
            ids.append(stack_id)
            frames.append([bpf.ksym(a, show_offset=True).decode(errors="replace") for a in addresses])
        n = len(ids)
        cols = {"ts_ns": [stop_ns] * n, "cpu": [-1] * n, "pid": [0] * n, "tid": [0] * n,
                "stack_id": ids, "frames": frames}
        return {"stack": _table(_STACK_TABLE, cols)}

    def decode_tracefs(self, events: dict[str, np.ndarray]) -> dict[str, pa.Table]:
        parts = [self._pending]
        for tp, kind in (("lock:contention_begin", 0), ("lock:contention_end", 1)):
            ev = events.get(tp)
            if ev is None or not len(ev):
                continue
            rec = np.zeros(len(ev), S.LOCK_EVENT_DTYPE)
            _fill_header(rec, ev, kind)
            rec["lock_addr"] = ev["lock_addr"]
            if kind == 0:
                rec["flags"] = ev["flags"]
            else:
                rec["ret"] = ev["ret"]
            parts.append(rec)
        records = _concat_events(parts, S.LOCK_EVENT_DTYPE)
        pairs, self._pending = pair_enter_exit(records)
        self._partial["lock_waits_began_before"] += int(np.count_nonzero(records["hdr"]["kind"] == 1)) - len(pairs)
        same = records["lock_addr"][pairs[:, 0]] == records["lock_addr"][pairs[:, 1]]
        pairs = pairs[same]
        out = records[pairs[:, 0]].copy()
        out["wait_ns"] = (records["hdr"]["ts_ns"][pairs[:, 1]] - out["hdr"]["ts_ns"]).astype(np.int64)
        out["ret"] = records["ret"][pairs[:, 1]]
        out["stack_id"] = -95  # -EOPNOTSUPP: tracefs records no stacks
        out["hdr"]["kind"] = 0
        return self.decode("lock_events", out)

    def finish_tracefs(self, stop_ns: int) -> dict[str, pa.Table]:
        self._partial["lock_waits_unfinished"] += int(np.count_nonzero(self._pending["hdr"]["kind"] == 0))
        return {}


# ---------------------------------------------------------------------------------------------- mmu

#: (kind, tracepoint, fields read) in TK_MMU_* order.
MMU_EVENTS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (S.TK_MMU_SET_SPTE, "kvmmmu:kvm_mmu_set_spte", ("gfn", "spte", "sptep", "level", "r", "x", "u")),
    (S.TK_MMU_SPTE_REQUESTED, "kvmmmu:kvm_mmu_spte_requested", ("gfn", "pfn", "level")),
    (S.TK_MMU_SET_ACCESSED_BIT, "kvmmmu:kvm_mmu_set_accessed_bit", ("gpa",)),
    (S.TK_MMU_SET_DIRTY_BIT, "kvmmmu:kvm_mmu_set_dirty_bit", ("gpa",)),
    (S.TK_MMU_GET_PAGE, "kvmmmu:kvm_mmu_get_page", ("mmu_valid_gen", "gfn", "role", "root_count", "unsync", "created")),
    (S.TK_MMU_PREPARE_ZAP_PAGE, "kvmmmu:kvm_mmu_prepare_zap_page", ("mmu_valid_gen", "gfn", "role", "root_count", "unsync")),
    (S.TK_MMU_SPLIT_HUGE_PAGE, "kvmmmu:kvm_mmu_split_huge_page", ("gfn", "spte", "level", "errno")),
    (S.TK_MMU_TDP_SPTE_CHANGED, "kvmmmu:kvm_tdp_mmu_spte_changed", ("gfn", "old_spte", "new_spte", "level", "as_id")),
    (S.TK_MMU_FAST_PAGE_FAULT, "kvmmmu:fast_page_fault",
     ("vcpu_id", "cr2_or_gpa", "error_code", "sptep", "old_spte", "new_spte", "ret")),
    (S.TK_MMU_KVM_PAGE_FAULT, "kvm:kvm_page_fault", ("vcpu_id", "fault_address", "error_code")),
    (S.TK_MMU_DIRTY_RING_PUSH, "kvm:kvm_dirty_ring_push", ("index", "dirty_index", "slot", "offset")),
    (S.TK_MMU_DIRTY_RING_RESET, "kvm:kvm_dirty_ring_reset", ("index", "dirty_index", "reset_index")),
    (S.TK_MMU_DIRTY_RING_EXIT, "kvm:kvm_dirty_ring_exit", ("vcpu_id",)),
    (S.TK_MMU_UNMAP_HVA_RANGE, "kvm:kvm_unmap_hva_range", ("start", "end")),
    (S.TK_MMU_AGE_HVA, "kvm:kvm_age_hva", ("start", "end")),
    (S.TK_MMU_ZAP_ALL_FAST, "kvmmmu:kvm_mmu_zap_all_fast", ("mmu_valid_gen", "mmu_used_pages")),
)
_MMU_NAMES = {kind: tp.split(":")[1] for kind, tp, _ in MMU_EVENTS}
_MMU_MACROS = {kind: name for name, kind in vars(S).items()
               if name.startswith("TK_MMU_") and not name.startswith("TK_MMU_F_") and name != "TK_MMU_NEVENTS"}

_MMU_TABLE = SCHEMAS["mmu"]
# (column, record field, validity bit)
_MMU_COLUMNS = (
    ("gfn", "gfn", S.TK_MMU_F_GFN), ("addr", "addr", S.TK_MMU_F_ADDR), ("addr_end", "addr_end", S.TK_MMU_F_ADDR_END),
    ("spte", "spte", S.TK_MMU_F_SPTE), ("old_spte", "old_spte", S.TK_MMU_F_OLD_SPTE),
    ("new_spte", "new_spte", S.TK_MMU_F_NEW_SPTE), ("pfn", "pfn", S.TK_MMU_F_PFN),
    ("error_code", "error_code", S.TK_MMU_F_ERROR_CODE), ("sptep", "sptep", S.TK_MMU_F_SPTEP),
    ("role", "role", S.TK_MMU_F_ROLE), ("count", "count", S.TK_MMU_F_COUNT), ("level", "level", S.TK_MMU_F_LEVEL),
    ("errno", "errno_", S.TK_MMU_F_ERRNO), ("vcpu_id", "vcpu_id", S.TK_MMU_F_VCPU_ID), ("ret", "ret", S.TK_MMU_F_RET),
    ("slot", "slot", S.TK_MMU_F_SLOT), ("as_id", "as_id", S.TK_MMU_F_AS_ID),
    ("mmu_valid_gen", "mmu_valid_gen", S.TK_MMU_F_GEN),
)


class MmuFamily(ProbeFamily):
    """The other kvmmmu/kvm tracepoints that describe MMU work, each where the host has it."""

    name = "mmu"
    description = "shadow/TDP MMU work: sptes set and changed, faults, shadow pages, dirty ring, hva ranges"
    tracepoints = tuple(tp for _, tp, _ in MMU_EVENTS)
    untimed = ("kvmmmu:kvm_mmu_set_spte",)  # its fault's kvm_mmu_spte_requested time
    required = ()
    tracepoint_fields = {tp: fields for _, tp, fields in MMU_EVENTS}

    def tables(self) -> dict[str, pa.Schema]:
        return {"mmu": _MMU_TABLE}

    def bpf_source(self) -> str:
        return source_text("mmu")

    def cflags(self, available: list[ProbeStatus], target_tgid: int) -> list[str]:
        ok = {s.probe for s in available if s.available}
        flags = [f"-DTK_MMU_PAGES={self.rings()[0].pages}", f"-DTK_BATCH_EVENTS={self.options.batch_events}"]
        for kind, tp, _ in MMU_EVENTS:
            if tp in ok:
                flags.append(f"-D{_MMU_MACROS[kind].replace('TK_MMU_', 'TK_MMU_HAVE_', 1)}")
        return flags

    def rings(self) -> list[RingSpec]:
        return [RingSpec("mmu_events", batch_dtype(S.MMU_EVENT_DTYPE, self.options.batch_events),
                         self.options.ring_pages.get("mmu_events", 2048))]

    def lost_maps(self) -> dict[str, tuple[str, ...]]:
        return {"mmu_lost": self.tracepoints}

    def staging_maps(self) -> dict[str, str]:
        return {"mmu_staging": "mmu_events"}

    def failure_maps(self) -> dict[str, tuple[str, str, tuple[str, ...]]]:
        return {"mmu_failures": ("mmu_failure_count", "mmu_events", self.tracepoints)}

    def decode(self, map_name: str, records: np.ndarray) -> dict[str, pa.Table]:
        if is_batched(records):
            records = unbatch(records)
        cols: dict[str, Any] = common_arrays(records["hdr"])
        kinds = records["hdr"]["kind"]
        cols["event"] = _labels(kinds, lambda k: _MMU_NAMES.get(k, f"kind_{k}"))
        valid = records["valid"]
        for column, fld, bit in _MMU_COLUMNS:
            cols[column] = _masked(records[fld], (valid & bit) != 0, _MMU_TABLE.field(column).type)
        flags = records["flags"]
        has_flags = (valid & S.TK_MMU_F_FLAGS) != 0
        set_spte = has_flags & (kinds == S.TK_MMU_SET_SPTE)
        page = has_flags & np.isin(kinds, (S.TK_MMU_GET_PAGE, S.TK_MMU_PREPARE_ZAP_PAGE))
        cols["r"] = _masked((flags & 1) != 0, set_spte, pa.bool_())
        cols["x"] = _masked((flags & 2) != 0, set_spte, pa.bool_())
        cols["u"] = _masked((flags & 0x20) != 0, set_spte & ((flags & 0x30) != 0), pa.bool_())
        cols["unsync"] = _masked((flags & 4) != 0, page, pa.bool_())
        cols["created"] = _masked((flags & 8) != 0, page & (kinds == S.TK_MMU_GET_PAGE), pa.bool_())
        return {"mmu": _table(_MMU_TABLE, cols)}

    def decode_tracefs(self, events: dict[str, np.ndarray]) -> dict[str, pa.Table]:
        parts = []
        for kind, tp, _ in MMU_EVENTS:
            ev = events.get(tp)
            if ev is None or not len(ev):
                continue
            rec = np.zeros(len(ev), S.MMU_EVENT_DTYPE)
            _fill_header(rec, ev, kind)
            _mmu_fill(rec, ev, kind)
            parts.append(rec)
        if not parts:
            return self.decode("mmu_events", np.empty(0, S.MMU_EVENT_DTYPE))
        records = np.concatenate(parts)
        return self.decode("mmu_events", records[np.argsort(records["hdr"]["ts_ns"], kind="stable")])


def _mmu_fill(rec: np.ndarray, ev: np.ndarray, kind: int) -> None:
    """The same field mapping as probes/mmu.bpf.c, for events decoded from tracefs."""
    if kind == S.TK_MMU_SET_SPTE:
        rec["gfn"], rec["spte"], rec["sptep"], rec["level"] = ev["gfn"], ev["spte"], ev["sptep"], ev["level"]
        u = ev["u"].astype(np.int8)
        rec["flags"] = (ev["r"] != 0) * 1 + (ev["x"] != 0) * 2 + np.where(u < 0, 0, np.where(u != 0, 0x20, 0x10))
        rec["valid"] = S.TK_MMU_F_GFN | S.TK_MMU_F_SPTE | S.TK_MMU_F_SPTEP | S.TK_MMU_F_LEVEL | S.TK_MMU_F_FLAGS
    elif kind == S.TK_MMU_SPTE_REQUESTED:
        rec["gfn"], rec["pfn"], rec["level"] = ev["gfn"], ev["pfn"], ev["level"]
        rec["valid"] = S.TK_MMU_F_GFN | S.TK_MMU_F_PFN | S.TK_MMU_F_LEVEL
    elif kind in (S.TK_MMU_SET_ACCESSED_BIT, S.TK_MMU_SET_DIRTY_BIT):
        rec["addr"], rec["valid"] = ev["gpa"], S.TK_MMU_F_ADDR
    elif kind in (S.TK_MMU_GET_PAGE, S.TK_MMU_PREPARE_ZAP_PAGE):
        rec["gfn"], rec["role"], rec["level"] = ev["gfn"], ev["role"], ev["role"] & 0xF
        rec["count"], rec["mmu_valid_gen"] = ev["root_count"], ev["mmu_valid_gen"]
        created = (ev["created"] != 0) * 8 if kind == S.TK_MMU_GET_PAGE else 0
        rec["flags"] = (ev["unsync"] != 0) * 4 + created
        rec["valid"] = (S.TK_MMU_F_GFN | S.TK_MMU_F_ROLE | S.TK_MMU_F_LEVEL | S.TK_MMU_F_COUNT | S.TK_MMU_F_GEN
                        | S.TK_MMU_F_FLAGS)
    elif kind == S.TK_MMU_SPLIT_HUGE_PAGE:
        rec["gfn"], rec["spte"], rec["level"], rec["errno_"] = ev["gfn"], ev["spte"], ev["level"], ev["errno"]
        rec["valid"] = S.TK_MMU_F_GFN | S.TK_MMU_F_SPTE | S.TK_MMU_F_LEVEL | S.TK_MMU_F_ERRNO
    elif kind == S.TK_MMU_TDP_SPTE_CHANGED:
        rec["gfn"], rec["old_spte"], rec["new_spte"] = ev["gfn"], ev["old_spte"], ev["new_spte"]
        rec["level"], rec["as_id"] = ev["level"], ev["as_id"]
        rec["valid"] = S.TK_MMU_F_GFN | S.TK_MMU_F_OLD_SPTE | S.TK_MMU_F_NEW_SPTE | S.TK_MMU_F_LEVEL | S.TK_MMU_F_AS_ID
    elif kind == S.TK_MMU_FAST_PAGE_FAULT:
        rec["vcpu_id"], rec["addr"], rec["error_code"] = ev["vcpu_id"], ev["cr2_or_gpa"], ev["error_code"]
        rec["sptep"], rec["old_spte"], rec["new_spte"], rec["ret"] = ev["sptep"], ev["old_spte"], ev["new_spte"], ev["ret"]
        rec["valid"] = (S.TK_MMU_F_VCPU_ID | S.TK_MMU_F_ADDR | S.TK_MMU_F_ERROR_CODE | S.TK_MMU_F_SPTEP
                        | S.TK_MMU_F_OLD_SPTE | S.TK_MMU_F_NEW_SPTE | S.TK_MMU_F_RET)
    elif kind == S.TK_MMU_KVM_PAGE_FAULT:
        rec["vcpu_id"], rec["addr"], rec["error_code"] = ev["vcpu_id"], ev["fault_address"], ev["error_code"]
        rec["valid"] = S.TK_MMU_F_VCPU_ID | S.TK_MMU_F_ADDR | S.TK_MMU_F_ERROR_CODE
    elif kind == S.TK_MMU_DIRTY_RING_PUSH:
        rec["vcpu_id"], rec["count"], rec["slot"], rec["gfn"] = ev["index"], ev["dirty_index"], ev["slot"], ev["offset"]
        rec["valid"] = S.TK_MMU_F_VCPU_ID | S.TK_MMU_F_COUNT | S.TK_MMU_F_SLOT | S.TK_MMU_F_GFN
    elif kind == S.TK_MMU_DIRTY_RING_RESET:
        rec["vcpu_id"], rec["count"], rec["ret"] = ev["index"], ev["dirty_index"], ev["reset_index"]
        rec["valid"] = S.TK_MMU_F_VCPU_ID | S.TK_MMU_F_COUNT | S.TK_MMU_F_RET
    elif kind == S.TK_MMU_DIRTY_RING_EXIT:
        rec["vcpu_id"], rec["valid"] = ev["vcpu_id"], S.TK_MMU_F_VCPU_ID
    elif kind in (S.TK_MMU_UNMAP_HVA_RANGE, S.TK_MMU_AGE_HVA):
        rec["addr"], rec["addr_end"] = ev["start"], ev["end"]
        rec["valid"] = S.TK_MMU_F_ADDR | S.TK_MMU_F_ADDR_END
    elif kind == S.TK_MMU_ZAP_ALL_FAST:
        rec["mmu_valid_gen"], rec["count"] = ev["mmu_valid_gen"], ev["mmu_used_pages"]
        rec["valid"] = S.TK_MMU_F_GEN | S.TK_MMU_F_COUNT

