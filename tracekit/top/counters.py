"""The counters ``tracekit top`` reads once per interval, and how decoded events add to them.

A :class:`Reading` is a cumulative snapshot of per-thread and per-ioctl counters (the fields of
``probes/top.bpf.c``); :class:`EventAccumulator` adds decoded events to them by the BPF program's rules,
for the tracefs backend.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ThreadCounters", "IoctlCounters", "Reading", "EventAccumulator", "DEPTH_BUCKETS", "LOG2_SLOTS",
           "IOCTL_KINDS", "log2_slot"]

DEPTH_BUCKETS = 8  # walks of depth 0..6, then 7 and more
LOG2_SLOTS = 40
IOCTL_KINDS = {1: "KVM_GET_DIRTY_LOG", 2: "KVM_CLEAR_DIRTY_LOG"}
LOCK_SPIN, LOCK_READ, LOCK_WRITE = 1, 2, 4

COUNTER_FIELDS = ("walks", "elements", "wp_faults", "spte_installs", "splits", "zaps", "lock_read_waits",
                  "lock_read_ns", "lock_write_waits", "lock_write_ns", "run_ns", "runs")


@dataclass
class ThreadCounters:
    tgid: int
    walks: int = 0
    elements: int = 0
    wp_faults: int = 0
    spte_installs: int = 0
    splits: int = 0
    zaps: int = 0
    lock_read_waits: int = 0
    lock_read_ns: int = 0
    lock_write_waits: int = 0
    lock_write_ns: int = 0
    run_ns: int = 0  # finished KVM_RUN calls
    runs: int = 0
    run_start: int = 0  # CLOCK_MONOTONIC start of the KVM_RUN in flight, 0 when none
    depth_hist: list[int] = field(default_factory=lambda: [0] * DEPTH_BUCKETS)

    def run_total(self, t_ns: int) -> int:
        """KVM_RUN time up to ``t_ns``, the call in flight included."""
        return self.run_ns + (max(0, t_ns - self.run_start) if self.run_start else 0)


@dataclass
class IoctlCounters:
    count: int = 0
    total_ns: int = 0
    errors: int = 0
    hist: list[int] = field(default_factory=lambda: [0] * LOG2_SLOTS)


@dataclass
class Reading:
    t_ns: int
    threads: dict[int, ThreadCounters] = field(default_factory=dict)
    ioctls: dict[tuple[int, int], IoctlCounters] = field(default_factory=dict)


def log2_slot(ns: int) -> int:
    """The histogram slot of a duration (``floor(log2(ns))``, 0 for 0 and 1 ns, capped)."""
    return min(max(int(ns), 1).bit_length() - 1, LOG2_SLOTS - 1)


_IOCTL_KIND_OF = {name: kind for kind, name in IOCTL_KINDS.items()}
#: mmu events counted, and the counter each adds to (TDP SPTE changes are installs too).
_MMU_FIELD = {"kvm_mmu_set_spte": "spte_installs", "kvm_tdp_mmu_spte_changed": "spte_installs",
              "kvm_mmu_split_huge_page": "splits", "kvm_mmu_prepare_zap_page": "zaps"}


class EventAccumulator:
    """Running counters fed with decoded event tables (see the module docstring)."""

    def __init__(self, attach_ns: int = 0) -> None:
        self.attach_ns = attach_ns
        self._ioctl_seen: set[int] = set()
        self._threads: dict[int, ThreadCounters] = {}
        self._ioctls: dict[tuple[int, int], IoctlCounters] = {}

    def _thread(self, tid: int, tgid: int) -> ThreadCounters:
        counters = self._threads.get(tid)
        if counters is None:
            counters = self._threads[tid] = ThreadCounters(tgid)
        return counters

    def add(self, family_table: str, frame: dict[str, np.ndarray]) -> None:
        """Add the rows of one decoded table (columns as numpy arrays, in time order per thread)."""
        if not len(frame.get("tid", ())):
            return
        handler = getattr(self, f"_add_{family_table}", None)
        if handler is not None:
            handler(frame)

    def _add_walk(self, f: dict[str, np.ndarray]) -> None:
        # Walks and their elements arrive in separate tables: the depth of a walk is counted from
        # the elements (see _add_walk_element), the walk rows give counts and error codes.
        for tid, tgid, pferr in zip(f["tid"].tolist(), f["pid"].tolist(), f["pferr"].tolist()):
            t = self._thread(tid, tgid)
            t.walks += 1
            t.wp_faults += (pferr & 3) == 3
            if tid not in self._ioctl_seen and not t.run_start and self.attach_ns:
                t.run_start = self.attach_ns

    def _add_walk_element(self, f: dict[str, np.ndarray]) -> None:
        tids, walk_ids = f["tid"], f["walk_id"]
        for tid in np.unique(tids).tolist():
            mine = walk_ids[tids == tid]
            t = self._thread(tid, int(f["pid"][tids == tid][0]))
            t.elements += len(mine)
            _, depths = np.unique(mine, return_counts=True)
            for d in depths.tolist():
                t.depth_hist[min(d, DEPTH_BUCKETS - 1)] += 1

    def _add_mmu(self, f: dict[str, np.ndarray]) -> None:
        for tid, tgid, event in zip(f["tid"].tolist(), f["pid"].tolist(), f["event"].tolist()):
            name = _MMU_FIELD.get(str(event))
            if name is not None:
                t = self._thread(tid, tgid)
                setattr(t, name, getattr(t, name) + 1)

    def _add_lock(self, f: dict[str, np.ndarray]) -> None:
        for tid, tgid, flags, wait in zip(f["tid"].tolist(), f["pid"].tolist(), f["flags"].tolist(),
                                          f["wait_ns"].tolist()):
            if not flags & LOCK_SPIN or not flags & (LOCK_READ | LOCK_WRITE):
                continue
            t = self._thread(tid, tgid)
            if flags & LOCK_WRITE:
                t.lock_write_waits += 1
                t.lock_write_ns += wait
            else:
                t.lock_read_waits += 1
                t.lock_read_ns += wait

    def _add_ioctl(self, f: dict[str, np.ndarray]) -> None:
        for tid, tgid, name, took, ret, ts in zip(f["tid"].tolist(), f["pid"].tolist(), f["cmd_name"].tolist(),
                                                 f["duration_ns"].tolist(), f["ret"].tolist(), f["ts_ns"].tolist()):
            name = str(name)
            self._ioctl_seen.add(tid)
            t = self._thread(tid, tgid)
            if t.run_start:  # the KVM_RUN in flight at attach ended before this call began
                t.run_ns += max(0, ts - t.run_start)
                t.runs += 1
                t.run_start = 0
            if name == "KVM_RUN":
                t.run_ns += took
                t.runs += 1
            elif name in _IOCTL_KIND_OF:
                s = self._ioctls.setdefault((tgid, _IOCTL_KIND_OF[name]), IoctlCounters())
                s.count += 1
                s.total_ns += took
                s.errors += ret < 0
                s.hist[log2_slot(took)] += 1

    def reading(self, t_ns: int) -> Reading:
        """A snapshot of the counters (copied: later events do not change it)."""
        return Reading(t_ns, copy.deepcopy(self._threads), copy.deepcopy(self._ioctls))
