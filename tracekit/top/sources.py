"""Where ``tracekit top`` reads its counters: a bcc program counting in the kernel, or tracefs.

:func:`open_source` starts the source asked (``auto``: bcc when it loads here, else tracefs, the reason
kept in ``note``). :class:`BccTopSource` loads ``probes/top.bpf.c`` with the tracepoints this host has
and reads its two hash maps; :class:`TracefsTopSource` records through the recorder's tracefs backend
and counts in user space, so it costs what recording does. Readings are cumulative since the start.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tracekit.errors import MissingCapability, UsageError
from tracekit.host import Host
from tracekit.probes import PROBES_DIR, source_text
from tracekit.recorder.backend_bcc import _load, import_bcc
from tracekit.recorder.backend_tracefs import TracefsBackend
from tracekit.recorder.kvm_ioctls import KVM_RUN, ioctl_cflags
from tracekit.recorder.probe_family import RecordOptions
from tracekit.recorder.session import plan_families
from tracekit.recorder.target import list_threads
from tracekit.top.counters import (
    COUNTER_FIELDS, DEPTH_BUCKETS, EventAccumulator, IoctlCounters, LOG2_SLOTS, Reading, ThreadCounters,
)

__all__ = ["open_source", "BccTopSource", "TracefsTopSource", "TOP_TRACEPOINTS"]

#: cflag suffix -> (tracepoint, fields read); a missing one is left out of the program.
TOP_TRACEPOINTS = {
    "WALK": ("kvmmmu:kvm_mmu_pagetable_walk", {"pferr"}),
    "ELEMENT": ("kvmmmu:kvm_mmu_paging_element", set()),
    "SET_SPTE": ("kvmmmu:kvm_mmu_set_spte", set()),
    "SPTE_CHANGED": ("kvmmmu:kvm_tdp_mmu_spte_changed", {"new_spte"}),
    "SPLIT": ("kvmmmu:kvm_mmu_split_huge_page", set()),
    "ZAP": ("kvmmmu:kvm_mmu_prepare_zap_page", set()),
    "LOCK": ("lock:contention_begin", {"flags"}),
    "IOCTL": ("syscalls:sys_enter_ioctl", {"cmd"}),
    "USEREXIT": ("kvm:kvm_userspace_exit", set()),
}
_PAIRED = {"LOCK": "lock:contention_end", "IOCTL": "syscalls:sys_exit_ioctl", "USEREXIT": "syscalls:sys_exit_ioctl"}


class BccTopSource:
    """Counters of ``probes/top.bpf.c`` (see the module docstring)."""

    name = "bcc"

    def __init__(self, host: Host):
        self.host = host
        self.bpf: Any = None
        self.attached: list[str] = []
        self.missing: list[str] = []
        self.planned: set[str] = set()
        self.note: str | None = None
        self._watched: set[int] = set()

    def cflags(self) -> list[str]:
        flags = [f"-I{PROBES_DIR}", "-w", "-DTK_TARGETS_FAKE_FD=-1",
                 *ioctl_cflags("KVM_RUN", "KVM_GET_DIRTY_LOG", "KVM_CLEAR_DIRTY_LOG")]
        self.missing, self.planned = [], set()
        for suffix, (tracepoint, fields) in TOP_TRACEPOINTS.items():
            have = self.host.tracepoint_fields(tracepoint)
            paired = _PAIRED.get(suffix)
            if have is None or not fields <= have or (paired and self.host.tracepoint_fields(paired) is None):
                self.missing.append(tracepoint)
                continue
            flags.append(f"-DTK_TOP_HAVE_{suffix}")
            self.planned |= {tracepoint, paired} - {None}
        return flags

    def tracepoints(self) -> list[str]:
        """The tracepoints the program attaches on this host (nothing is loaded to say so)."""
        self.cflags()
        return sorted(self.planned)

    def start(self) -> None:
        bcc = import_bcc()
        self.bpf = _load(bcc, source_text("top"), self.cflags())
        self.attached = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in self.bpf.tracepoint_fds)
        config = self.bpf[b"top_config"]
        config[config.Key(0)] = config.Leaf(time.monotonic_ns())

    def watch(self, tgids: set[int]) -> None:
        targets = self.bpf[b"tk_targets"]
        for tgid in tgids - self._watched:
            targets[targets.Key(tgid)] = targets.Leaf(1)
        for tgid in self._watched - tgids:
            try:
                del targets[targets.Key(tgid)]
            except KeyError:
                pass
        self._watched = set(tgids)

    def read(self) -> Reading:
        t_ns = time.monotonic_ns()
        reading = Reading(t_ns)
        for key, v in self.bpf[b"top_threads"].items():
            reading.threads[int(key.value)] = ThreadCounters(
                tgid=v.tgid, run_start=v.run_start, depth_hist=[int(v.depth_hist[i]) for i in range(DEPTH_BUCKETS)],
                **{name: getattr(v, name) for name in COUNTER_FIELDS})
        for key, v in self.bpf[b"top_ioctls"].items():
            reading.ioctls[(int(key.tgid), int(key.kind))] = IoctlCounters(
                count=v.count, total_ns=v.total_ns, errors=v.errors, hist=[int(v.hist[i]) for i in range(LOG2_SLOTS)])
        return reading

    def close(self) -> None:
        if self.bpf is not None:
            bpf, self.bpf = self.bpf, None
            bpf.cleanup()


_COLUMNS = {"walk": ("tid", "pid", "pferr"), "walk_element": ("tid", "pid", "walk_id"),
            "mmu": ("tid", "pid", "event"), "lock": ("tid", "pid", "flags", "wait_ns"),
            "ioctl": ("tid", "pid", "cmd_name", "duration_ns", "ret", "ts_ns")}


class TracefsTopSource:
    """Counting from a tracefs instance's raw buffers (see the module docstring)."""

    name = "tracefs"

    def __init__(self, host: Host, tracefs: Path | None):
        self.host = host
        self.tracefs = tracefs
        self.backend: Any = None
        self.attached: list[str] = []
        self.missing: list[str] = []
        self.note: str | None = None
        self._acc = EventAccumulator()
        self._watched: set[int] = set()

    def watch(self, tgids: set[int]) -> None:
        if self.backend is None:
            self._start(tgids)
        elif tgids - self._watched:
            self.note = "tracefs: VMs started after top are not watched (restart top, or use the bcc backend)"

    def start(self) -> None:
        """Nothing to load before the VMs are known: the instance follows their threads (see watch)."""

    def _start(self, tgids: set[int]) -> None:
        options = RecordOptions(stream_ioctls=(KVM_RUN,), aggregate_ioctls=())
        plan, failed, _ = plan_families(("walk", "mmu", "lock", "ioctl"), self.host, options)
        plan = [(f, s) for f, s in plan if f.supports_tracefs()]
        if not plan:
            raise MissingCapability("tracekit top: none of the walk, mmu, lock, ioctl tracepoints can be "
                                    "enabled through tracefs here")
        self.missing = [f["probe"] for f in failed]
        pids = sorted(tgids)
        tids = sorted({t["tid"] for pid in pids for t in list_threads(pid)}) or pids
        self.backend = TracefsBackend(self.tracefs, plan, pids, tids)
        self.backend.start()
        self._acc.attach_ns = self.backend.arm()  # every event family from this instant
        self.attached = list(self.backend.attached)
        self._watched = set(tgids)

    def read(self) -> Reading:
        if self.backend is not None:
            for _family, tables in self.backend.poll():
                for name, table in tables.items():
                    columns = _COLUMNS.get(name)
                    if columns is None or not table.num_rows:
                        continue
                    self._acc.add(name, {c: table.column(c).to_numpy(zero_copy_only=False) for c in columns})
        return self._acc.reading(time.monotonic_ns())

    def close(self) -> None:
        if self.backend is not None:
            backend, self.backend = self.backend, None
            backend.close()


def open_source(backend: str, host: Host, tracefs: Path | None) -> BccTopSource | TracefsTopSource:
    """The counter source for ``backend`` (bcc, tracefs or auto), started (see the module docstring)."""
    if backend not in ("auto", "bcc", "tracefs"):
        raise UsageError(f"unknown backend {backend!r} (use bcc, tracefs or auto)")
    if backend in ("auto", "bcc"):
        source = BccTopSource(host)
        try:
            source.start()
            return source
        except MissingCapability as error:
            source.close()
            if backend == "bcc":
                raise
            fallback = TracefsTopSource(host, tracefs)
            fallback.note = f"bcc backend unavailable, counting from tracefs raw buffers: {error}"
            return fallback
    return TracefsTopSource(host, tracefs)
