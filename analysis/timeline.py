"""A capture as a timeline: one process per VM, a track per thread with its layers, a track per phase.

:func:`timeline` yields :class:`Track` records and lists of events ``(kind, track, ts_ns, dur_ns, name,
category, args)``, every track before its first event, reading the families a batch at a time through
:mod:`.events`; docs/perfetto.md describes every track.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from tracekit.analysis import locks, spill
from tracekit.analysis.common import frame_of, load, timing_note
from tracekit.analysis.events import BATCH_ROWS, EventReader, phase_spans, vcpu_threads
from tracekit.analysis.phases import capture_phases, workload_phases
from tracekit.analysis.splits import SPLIT_EVENT
from tracekit.analysis.walkgroups import ShapeCodes
from tracekit.analysis.walks import level_path_text
from tracekit.analysis.walkstream import stream_walks
from tracekit.errors import AnalysisError

__all__ = ["Track", "Address", "Timeline", "timeline", "SLICE", "INSTANT", "COUNTER", "LAYERS", "RATES",
           "COUNTER_BIN_NS", "MMU_LAYERS", "PASS_PHASES", "Stage2Levels"]

SLICE, INSTANT, COUNTER = 0, 1, 2
COUNTER_BIN_NS = 10_000_000
#: The layer tracks under a thread, in display order.
LAYERS = ("guest walks", "stage-2 walks", "faults", "SPTE installs", "splits", "lock waits", "kernel calls",
          "MMU events")
#: ``mmu`` family events -> (layer, category); the others go to ``MMU events``.
MMU_LAYERS = {
    "kvm_page_fault": ("faults", "fault"), "fast_page_fault": ("faults", "fault"),
    "kvm_mmu_spte_requested": ("SPTE installs", "spte"), "kvm_mmu_set_spte": ("SPTE installs", "spte"),
    "kvm_tdp_mmu_spte_changed": ("SPTE installs", "spte"), SPLIT_EVENT: ("splits", "split"),
}
#: Counter name -> the family (and ``mmu`` events) it counts.
RATES = {"guest walks/s": "walk", "stage-2 walks/s": "stage2_walk", "faults/s": "fault",
         "SPTE installs/s": "kvm_mmu_set_spte", "splits/s": "split", "lock waits/s": "lock"}
#: The built-in workload's phases in which every vCPU runs one pass of guest code, in order.
PASS_PHASES = ("populate", "dirty-memory")
_MMU_ARGS = ("level", "gfn", "addr", "spte", "new_spte", "error_code", "vcpu_id", "count")
_ADDRESS_ARGS = {"addr", "gfn", "spte", "old_spte", "new_spte", "error_code", "lock_addr"}


class Address(int):
    """An integer shown in hex (an address, a PTE)."""


class Track(NamedTuple):
    """One track: ``kind`` is ``process``, ``thread``, ``layer``, ``phases`` (the group of the ``phase`` tracks,
    one per kind of phase) or ``counter``; ``parent`` the
    uuid of the enclosing track (0 for none); ``order`` sorts siblings; ``unit`` names a counter's unit;
    ``note`` (a process of a lab capture) why its durations are not the hardware's."""

    uuid: int
    kind: str
    name: str
    parent: int = 0
    pid: int | None = None
    tid: int | None = None
    order: int = 0
    unit: str | None = None
    note: str | None = None


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _args(names: Iterable[str], columns: list[list], row: int) -> dict:
    out = {}
    for name, column in zip(names, columns):
        value = column[row]
        if value is not None and value == value:  # not null, not NaN
            out[name] = Address(value) if name in _ADDRESS_ARGS and isinstance(value, int) and value >= 0 else value
    return out


class Timeline:
    """The tracks made so far and what was skipped; :meth:`events` is the generator :func:`timeline` runs."""

    def __init__(self, cap: Any):
        self.cap = cap
        self.manifest = cap.manifest
        self.reader = EventReader(cap)
        self.families = self.reader.families
        self._lock_skipped = 0
        self._uuids: dict[tuple, int] = {}
        self._new: list[Track] = []
        self._process_names = self._name_processes()
        self._threads: dict[int, str] = {}
        self._vcpus: dict[int, int] = {}
        self._rates: dict[tuple[int, str], dict[int, int]] = {}

    @property
    def skipped(self) -> int:
        """Events before the clock's zero, left out."""
        return self.reader.skipped + self._lock_skipped

    # -- names ---------------------------------------------------------------------------------------
    def _name_processes(self) -> dict[int, str]:
        target = self.manifest.get("target") or {}
        names: dict[int, str] = {}
        for vm in target.get("vms") or []:
            if isinstance(vm.get("pid"), int):
                names[vm["pid"]] = str(vm.get("name") or vm.get("comm") or f"pid {vm['pid']}")
        label = target.get("name") or target.get("guest") or target.get("comm")
        workload = self.manifest.get("workload") or {}
        for pid in target.get("pids") or []:
            if isinstance(pid, int) and pid not in names:
                if workload.get("pid") == pid and workload.get("workload"):
                    names[pid] = f"tracekit workload {workload['workload']}"
                else:
                    names[pid] = str(label) if label else f"pid {pid}"
        return names

    def _name_threads(self, pairs: set[tuple[int, int]], vcpus: dict[int, int]) -> None:
        """Thread names: ``vCPU N`` for the vCPU threads (:func:`.events.vcpu_threads`), else the manifest's comm."""
        target = self.manifest.get("target") or {}
        comms = {t["tid"]: str(t["comm"]) for t in target.get("threads") or []
                 if isinstance(t.get("tid"), int) and t.get("comm")}
        for pid, tid in pairs:
            if tid in vcpus:
                self._threads[tid] = f"vCPU {vcpus[tid]} (tid {tid})"
            elif tid in comms:
                self._threads[tid] = f"{comms[tid]} (tid {tid})"
            elif tid == pid and target.get("comm") and pid in self._process_names:
                self._threads[tid] = f"{target['comm']} (tid {tid})"
            else:
                self._threads[tid] = f"thread {tid}"
        self._vcpus = vcpus

    # -- tracks --------------------------------------------------------------------------------------
    def _track(self, key: tuple, make: Any) -> int:
        uuid = self._uuids.get(key)
        if uuid is None:
            uuid = self._uuids[key] = len(self._uuids) + 1
            track = make(uuid)
            self._new.append(track._replace(name=_text(track.name)))
        return uuid

    def process(self, pid: int) -> int:
        if pid in self._process_names:
            name, order = self._process_names[pid], 0
        else:
            name, order = "not a traced VM", 1
        note = timing_note(self.manifest)
        return self._track(("p", pid), lambda u: Track(u, "process", name, pid=pid, order=order, note=note))

    def thread(self, pid: int, tid: int) -> int:
        parent = self.process(pid)
        name = self._threads.get(tid, f"thread {tid}")
        order = self._vcpus.get(tid, 1 << 20)
        return self._track(("t", pid, tid), lambda u: Track(u, "thread", name, parent, pid, tid, order))

    def layer(self, pid: int, tid: int, layer: str) -> int:
        parent = self.thread(pid, tid)
        return self._track(("l", pid, tid, layer),
                           lambda u: Track(u, "layer", layer, parent, pid, tid, LAYERS.index(layer)))

    def _process_child(self, pid: int, kind: str, name: str, order: int, unit: str | None = None) -> int:
        parent = self.process(pid)
        return self._track(("c", pid, name), lambda u: Track(u, kind, name, parent, pid, None, order, unit))

    def _thread_tracks(self, pid: np.ndarray, tid: np.ndarray, layer: str | None) -> np.ndarray:
        """The uuid of each row's thread (``layer`` None) or layer track."""
        keys = (pid.astype(np.int64) << 32) | (tid.astype(np.int64) & 0xFFFFFFFF)
        unique, inverse = np.unique(keys, return_inverse=True)
        pairs = [(k >> 32, ((k & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000) for k in unique.tolist()]
        uuids = np.array([self.thread(p, t) if layer is None else self.layer(p, t, layer) for p, t in pairs], np.int64)
        return uuids[inverse.reshape(-1)] if len(unique) else np.zeros(0, np.int64)

    def new_tracks(self) -> list[Track]:
        tracks, self._new = self._new, []
        return tracks

    # -- reading -------------------------------------------------------------------------------------
    def _count(self, counter: str, pid: np.ndarray, ts: np.ndarray) -> None:
        """Add events at ``ts`` of processes ``pid`` to ``counter``'s 10 ms bins."""
        bins = ts // COUNTER_BIN_NS
        for p in np.unique(pid).tolist():
            busy, counts = np.unique(bins[pid == p], return_counts=True)
            per_bin = self._rates.setdefault((p, counter), {})
            for b, c in zip(busy.tolist(), counts.tolist()):
                per_bin[b] = per_bin.get(b, 0) + c

    def _threads_seen(self) -> None:
        """One pass over every event family's thread columns: the threads there are, named and declared
        (the ``threads`` family lists threads with no event too: they get no track)."""
        pairs: set[tuple[int, int]] = set()
        for family in sorted(self.families - {"stack", "threads"}):
            if not {"pid", "tid"} <= set(self.cap.schema(family).names):
                continue
            for batch in self.cap.iter_batches(family, ["pid", "tid"]):
                distinct = pa.Table.from_batches([batch]).group_by(["pid", "tid"]).aggregate([])
                pairs.update((int(p or 0), int(t or 0)) for p, t in zip(distinct.column("pid").to_pylist(),
                                                                      distinct.column("tid").to_pylist()))
        self._name_threads(pairs, vcpu_threads(self.cap))
        for pid in sorted({p for p, _ in pairs} | set(self._process_names)):
            self.process(pid)
        for pid, tid in sorted(pairs, key=lambda pt: (pt[0], self._vcpus.get(pt[1], 1 << 20), pt[1])):
            self.thread(pid, tid)

    def events(self) -> Iterator[Track | list[tuple]]:
        self._threads_seen()
        yield from self.new_tracks()
        for part in (self._phases(), self._passes(), self._ioctls(), self._walks(), self._stage2_walks(), self._faults(),
                     self._splits(), self._mmu(), self._locks(), self._calls(), self._counters()):
            for events in part:
                yield from self.new_tracks()
                if events:
                    events.sort(key=_start_then_longest)
                    yield events

    # -- families ------------------------------------------------------------------------------------
    def _main_pid(self) -> int:
        """The workload's process when the target holds it, else the target's first process (else 0)."""
        pids = (self.manifest.get("target") or {}).get("pids") or []
        workload = (self.manifest.get("workload") or {}).get("pid")
        return workload if workload in pids else pids[0] if pids else 0

    def _phases(self) -> Iterator[list[tuple]]:
        """A ``phases`` track under the main process with a child track per kind of phase (``populate``,
        ``dirty-memory``, ...) in order of first start, each holding that kind's phases as slices."""
        try:
            phases = capture_phases(self.cap, None)
        except AnalysisError:  # a command output that does not fit the capture: no phases from it
            phases = workload_phases(self.manifest)
        phases, category = phase_spans(phases, self.manifest)
        if phases.empty:
            return
        group = "phases" if category == "phase" else "lab steps"
        pid = self._main_pid()
        parent = self._process_child(pid, "phases", group, -1)
        kinds = list(dict.fromkeys(phases["name"].map(_text)))
        events = []
        for label, kind, iteration, start, end in zip(phases["phase"], phases["name"], phases["iteration"],
                                                      phases["start_ns"], phases["end_ns"]):
            kind = _text(kind)
            track = self._track(("phase", pid, kind), lambda u, k=kind: Track(u, "phase", k, parent, pid, None,
                                                                             kinds.index(k)))
            args = {"iteration": int(iteration)} if iteration else {}
            events.append((SLICE, track, int(start), int(end) - int(start), _text(label), category, args))
        yield events

    def _passes(self) -> Iterator[list[tuple]]:
        """The built-in workload's vCPU passes on their vCPU threads, a slice per pass spanning its phase
        (``populate``, ``dirty-memory#N``: the pass ran inside it; its own start is not recorded) with the
        pass's time and its time in KVM_RUN as the workload measured them (``workload.vcpus``)."""
        workload = self.manifest.get("workload") or {}
        vcpus, pid = workload.get("vcpus"), workload.get("pid")
        if not isinstance(vcpus, list) or not isinstance(pid, int):
            return
        phases = workload_phases(self.manifest)
        runs = phases[phases["name"].isin(PASS_PHASES) & (phases["start_ns"] >= 0) & (phases["end_ns"] >= phases["start_ns"])]
        events = []
        for vcpu in vcpus:
            tid, total, in_run = (vcpu.get(k) if isinstance(vcpu, dict) else None
                                  for k in ("tid", "pass_ns", "pass_run_ns"))
            if not isinstance(tid, int) or not isinstance(total, list):
                continue
            if tid not in self._threads:  # a vCPU thread with no event: named as the others
                self._name_threads({(pid, tid)}, self._vcpus)
            track = self.thread(pid, tid)
            in_run = in_run if isinstance(in_run, list) and len(in_run) == len(total) else [None] * len(total)
            for label, start, end, pass_ns, run_ns in zip(runs["phase"], runs["start_ns"], runs["end_ns"], total, in_run):
                args: dict[str, Any] = {"phase": label, "span": "the phase's: the pass ran inside it"}
                if isinstance(pass_ns, int):
                    args["pass_ns"] = pass_ns
                if isinstance(run_ns, int):
                    args["kvm_run_ns"] = run_ns
                events.append((SLICE, track, int(start), int(end) - int(start), "guest pass", "workload", args))
        yield events

    def _ioctls(self) -> Iterator[list[tuple]]:
        stop = (self.manifest.get("window") or {}).get("stop_ns") or self.manifest.get("stop_monotonic_ns")
        names = ("fd", "ret", "slot", "flags", "partial")
        for b in self.reader.batches("ioctl", ["duration_ns", "cmd_name", "cmd", *names]):
            tracks = self._thread_tracks(b.pid, b.tid, None)
            columns = [b.values(n) for n in names]
            cmd_name, cmd, duration = b.values("cmd_name"), b.values("cmd"), b.values("duration_ns")
            events = []
            for i, (ts, track) in enumerate(zip(b.ts_ns.tolist(), tracks.tolist())):
                name = cmd_name[i] or (f"ioctl {cmd[i]:#x}" if cmd[i] is not None else "ioctl")
                args = _args(names, columns, i)
                dur = duration[i]
                if dur is None and isinstance(stop, int) and stop > ts:
                    dur, args["unfinished"] = stop - ts, "still running when the recording stopped"
                events.append((SLICE, track, ts, max(int(dur or 0), 0), name, "ioctl", args))
            yield events
        names = ("count", "total_ns", "max_ns", "errors", "fd")
        for b in self.reader.batches("ioctl_summary", ["cmd_name", *names]):
            tracks = self._thread_tracks(b.pid, b.tid, None)
            columns, cmd_name = [b.values(n) for n in names], b.values("cmd_name")
            yield [(INSTANT, track, ts, 0, f"{cmd_name[i] or 'ioctl'} (aggregated)", "ioctl", _args(names, columns, i))
                   for i, (ts, track) in enumerate(zip(b.ts_ns.tolist(), tracks.tolist()))]

    def _walks(self) -> Iterator[list[tuple]]:
        if "walk" not in self.families:
            return
        # each walk's shape as a byte or two, in a file once large (spill): memory does not grow with walks
        shapes = stream_walks(self.cap, ShapeCodes).shapes if "walk_element" in self.families else None
        for b in self.reader.batches("walk", ["walk_id", "addr", "pferr"]):
            self._count("guest walks/s", b.pid, b.ts_ns)
            tracks = self._thread_tracks(b.pid, b.tid, "guest walks")
            n = b.n
            if shapes is not None:
                depth, leaf, path = (part.tolist() for part in shapes.decode(shapes.codes.codes[b.rows]))
                spill.trim()
            else:
                depth, leaf, path = [None] * n, [-1] * n, [0] * n
            addr, pferr, walk_id = b.values("addr"), b.values("pferr"), b.values("walk_id")
            events = []
            for i, (ts, track) in enumerate(zip(b.ts_ns.tolist(), tracks.tolist())):
                args: dict[str, Any] = {}
                if depth[i] is not None:
                    args["depth"], args["levels"] = depth[i], level_path_text(path[i])
                    if leaf[i] >= 0:
                        args["leaf_level"] = leaf[i]
                if addr[i] is not None:
                    args["addr"] = Address(addr[i])
                if pferr[i] is not None:
                    args["pferr"] = Address(pferr[i])
                if walk_id[i] is not None:
                    args["walk_id"] = walk_id[i]
                events.append((INSTANT, track, ts, 0, "guest walk", "walk", args))
            yield events

    def _stage2_walks(self) -> Iterator[list[tuple]]:
        if "stage2_walk" not in self.families:
            return
        levels = Stage2Levels(self.cap) if "stage2_visit" in self.families else None
        names = ("start_level", "addr", "size", "flags", "ret", "walk_id")
        for b, labels in self.reader.calls("stage2_walk", names):
            self._count("stage-2 walks/s", b.pid, b.ts_ns)
            tracks = self._thread_tracks(b.pid, b.tid, "stage-2 walks")
            columns, durations, walk_ids = [b.values(n) for n in names], b.durations().tolist(), b.values("walk_id")
            events = []
            for i, (ts, track) in enumerate(zip(b.ts_ns.tolist(), tracks.tolist())):
                args = _args(names, columns, i)
                visited = levels.get(walk_ids[i]) if levels is not None else None
                if visited is not None:
                    args["levels"], args["visits"] = visited
                events.append(_call(track, ts, durations[i], labels[i], "stage2_walk", args))
            yield events

    def _probe_slices(self, family: str, layer: str, category: str, names: tuple[str, ...],
                      counter: str | None) -> Iterator[list[tuple]]:
        """The function-probe family ``family`` as slices named by their calls on ``layer``."""
        for b, labels in self.reader.calls(family, names):
            if counter:
                self._count(counter, b.pid, b.ts_ns)
            tracks = self._thread_tracks(b.pid, b.tid, layer)
            columns, durations = [b.values(n) for n in names], b.durations().tolist()
            yield [_call(track, ts, durations[i], labels[i], category, _args(names, columns, i))
                   for i, (ts, track) in enumerate(zip(b.ts_ns.tolist(), tracks.tolist()))]

    def _faults(self) -> Iterator[list[tuple]]:
        return self._probe_slices("fault", "faults", "fault", ("vcpu_id", "addr", "ret"), "faults/s")

    def _splits(self) -> Iterator[list[tuple]]:
        return self._probe_slices("split", "splits", "split", ("level", "addr", "size", "ret"), "splits/s")

    def _calls(self) -> Iterator[list[tuple]]:
        return self._probe_slices("func_call", "kernel calls", "call", ("ret", "args"), None)

    def _mmu(self) -> Iterator[list[tuple]]:
        for b in self.reader.batches("mmu", ["event", *_MMU_ARGS]):
            columns = [b.values(n) for n in _MMU_ARGS]
            event = b.values("event")
            layers = [MMU_LAYERS.get(e or "", ("MMU events", "mmu")) for e in event]
            kinds = np.array([LAYERS.index(layer) for layer, _ in layers], np.int64)
            tracks = np.zeros(b.n, np.int64)
            for kind in np.unique(kinds).tolist():
                rows = kinds == kind
                tracks[rows] = self._thread_tracks(b.pid[rows], b.tid[rows], LAYERS[kind])
            installs = np.array([e == "kvm_mmu_set_spte" for e in event], bool)
            splits = np.array([e == SPLIT_EVENT for e in event], bool)
            self._count("SPTE installs/s", b.pid[installs], b.ts_ns[installs])
            self._count("splits/s", b.pid[splits], b.ts_ns[splits])
            yield [(INSTANT, track, ts, 0, event[i] or "mmu event", layers[i][1], _args(_MMU_ARGS, columns, i))
                   for i, (ts, track) in enumerate(zip(b.ts_ns.tolist(), tracks.tolist()))]

    def _locks(self) -> Iterator[list[tuple]]:
        if "lock" not in self.families:
            return
        stack = load(self.cap, "stack", ["stack_id", "frames"]) if "stack" in self.families else None
        ioctl = None
        if "ioctl" in self.families:
            ioctl = load(self.cap, "ioctl", ["ts_ns", "tid", "duration_ns", "cmd_name"],
                         optional_columns=["slot", "flags", "memory_size", "guest_phys_addr"],
                         where=("cmd_name", list(locks.IOCTL_OPERATIONS)))
        wanted = ["ts_ns", "pid", "tid", "lock_addr", "flags", "wait_ns"]
        missing = [c for c in wanted if c not in self.cap.schema("lock").names]
        if missing:
            raise AnalysisError(f"{self.cap.path}: family 'lock' lacks column(s) {', '.join(missing)}")

        def waits(count: bool) -> Iterator[pd.DataFrame]:
            schema = self.cap.schema("lock")
            columns = wanted + [c for c in ("stack_id", "flags_name") if c in schema.names]
            for batch in self.cap.iter_batches("lock", columns, BATCH_ROWS):
                frame = frame_of([pa.Table.from_batches([batch])], batch.num_rows, schema, columns)  # uint64 exact
                frame = frame[frame["ts_ns"] >= 0]
                self._lock_skipped += (batch.num_rows - len(frame)) if count else 0
                frame = frame.assign(flags=frame["flags"].fillna(0))
                if len(frame):
                    yield locks.attribute_operations(frame.reset_index(drop=True), self.manifest, stack, ioctl)

        scores = [locks.lock_scores(frame) for frame in waits(False)]
        mmu = locks.mmu_lock_of(pd.concat(scores).groupby(level=0).sum(), locks.known_mmu_locks(self.manifest)) \
            if scores else None
        for frame in waits(True):
            ts = frame["ts_ns"].to_numpy(np.int64)
            pid = frame["pid"].to_numpy(np.int64)
            self._count("lock waits/s", pid, ts)
            tracks = self._thread_tracks(pid, frame["tid"].to_numpy(np.int64), "lock waits")
            names = locks.lock_names(frame, mmu).tolist()
            addr = frame["lock_addr"].tolist()
            wait = frame["wait_ns"].tolist()
            mode, operation = frame["mode"].astype(object).tolist(), frame["operation"].astype(object).tolist()
            flag_names = frame["flags_name"].tolist() if "flags_name" in frame else [None] * len(frame)
            events = []
            for i, (t, track) in enumerate(zip(ts.tolist(), tracks.tolist())):
                args: dict[str, Any] = {"mode": mode[i], "operation": operation[i]}
                if not pd.isna(addr[i]):
                    args["lock_addr"] = Address(int(addr[i]))
                if isinstance(flag_names[i], str) and flag_names[i]:
                    args["flags"] = flag_names[i]
                dur = 0 if pd.isna(wait[i]) else max(int(wait[i]), 0)
                events.append((SLICE, track, t, dur, names[i], "lock", args))
            yield events

    def _counters(self) -> Iterator[list[tuple]]:
        order = list(RATES)
        for (pid, name), per_bin in sorted(self._rates.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]))):
            track = self._process_child(pid, "counter", name, order.index(name), name.split("/")[0] + " per second")
            events = []
            busy = sorted(per_bin)
            for i, b in enumerate(busy):
                events.append((COUNTER, track, b * COUNTER_BIN_NS, 0, name, None, per_bin[b] * (10**9 // COUNTER_BIN_NS)))
                if i + 1 == len(busy) or busy[i + 1] != b + 1:  # back to 0 after each run of busy bins
                    events.append((COUNTER, track, (b + 1) * COUNTER_BIN_NS, 0, name, None, 0))
            yield events


class Stage2Levels:
    """Per stage-2 walk, the levels it visited (``1>2>3``) and its visits, from ``stage2_visit`` read a batch
    at a time: sorted walk ids with a bit per level and a visit count (24 bytes a walk, no Python object)."""

    def __init__(self, cap: Any):
        ids, levels, counts = [], [], []
        for batch in cap.iter_batches("stage2_visit", ["walk_id", "level", "count"]):
            table = pa.Table.from_batches([batch]).drop_null()
            if table.num_rows:
                table = table.group_by(["walk_id", "level"]).aggregate([("count", "sum")])
                ids.append(table.column("walk_id").to_numpy().astype(np.int64))
                levels.append(table.column("level").to_numpy().astype(np.int64))
                counts.append(table.column("count_sum").to_numpy().astype(np.int64))
        walk_ids, level, count = (np.concatenate(part) if part else np.zeros(0, np.int64)
                                  for part in (ids, levels, counts))
        del ids, levels, counts
        self.ids, rows = np.unique(walk_ids, return_inverse=True)
        self.visits = np.zeros(len(self.ids), np.int64)
        np.add.at(self.visits, rows, count)
        usual = (level >= -1) & (level <= 62)  # a bit each; other levels (a damaged capture) kept aside
        self.bits = np.zeros(len(self.ids), np.uint64)
        np.bitwise_or.at(self.bits, rows[usual], np.left_shift(np.uint64(1), (level[usual] + 1).astype(np.uint64)))
        self._odd: dict[int, set[int]] = {}
        for row, value in zip(rows[~usual].tolist(), level[~usual].tolist()):
            self._odd.setdefault(row, set()).add(value)
        self._texts: dict[int, str] = {}

    def get(self, walk_id: int | None) -> tuple[str, int] | None:
        """``(levels, visits)`` of stage-2 walk ``walk_id``, None when it has no visit."""
        if walk_id is None or not len(self.ids):
            return None
        row = int(np.searchsorted(self.ids, walk_id))
        if row == len(self.ids) or self.ids[row] != walk_id:
            return None
        bits = int(self.bits[row])
        if row in self._odd:
            levels = sorted(self._odd[row] | {b - 1 for b in range(64) if bits >> b & 1})
            return ">".join(map(str, levels)), int(self.visits[row])
        text = self._texts.get(bits)
        if text is None:
            text = self._texts[bits] = ">".join(str(b - 1) for b in range(64) if bits >> b & 1)
        return text, int(self.visits[row])


def _text(value: Any) -> str:
    """``value`` as text that encodes as UTF-8 (a manifest's lone surrogates become ``?``)."""
    return str(value).encode("utf-8", "replace").decode("utf-8")


def _start_then_longest(event: tuple) -> tuple[int, int]:
    """Events of one batch in time order, a slice before the slices it encloses that start with it."""
    return event[2], -event[3]


def _call(track: int, ts: int, duration: Any, name: str, category: str, args: dict) -> tuple:
    """A function-probe call: a slice, or an instant when its return was not seen (duration null or -1)."""
    if duration is None or duration < 0:
        args["return"] = "not seen"
        return (INSTANT, track, ts, 0, name, category, args)
    return (SLICE, track, ts, int(duration), name, category, args)


def timeline(cap: Any) -> tuple[Timeline, Iterator[Track | list[tuple]]]:
    """The :class:`Timeline` of ``cap`` and the generator of its tracks and event lists (see the module
    docstring); ``Timeline.skipped`` is final once the generator is exhausted."""
    line = Timeline(cap)
    return line, line.events()
