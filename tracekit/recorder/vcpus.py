"""vCPU threads of any VMM, identified by the vCPU fd they issue KVM_RUN on.

KVM names a vCPU fd ``anon_inode:kvm-vcpu:N``. :class:`VcpuFds` learns fd -> vCPU index from
``/proc/PID/fd`` (:meth:`~VcpuFds.scan`) and from ``KVM_CREATE_VCPU`` results, notes which thread ran
``KVM_RUN`` on which fd (:meth:`~VcpuFds.observe`), and gives those threads their index
(:meth:`~VcpuFds.identify`); thread names (``CPU N/KVM``, ``tk-vcpu-N``) stay the fallback.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pyarrow.compute as pc

from tracekit.recorder.kvm_ioctls import KVM_CREATE_VCPU, KVM_RUN

__all__ = ["VcpuFds", "vcpu_fd_index"]

_VCPU_LINK = re.compile(r"^anon_inode:kvm-vcpu:(\d+)$")


def vcpu_fd_index(link: str) -> int | None:
    """The vCPU index of a ``/proc/PID/fd`` link target (``anon_inode:kvm-vcpu:3`` -> 3), else None."""
    match = _VCPU_LINK.match(link)
    return int(match.group(1)) if match else None


class VcpuFds:
    """The vCPU fds of processes ``pids`` and the threads that ran them (see the module docstring)."""

    def __init__(self, pids: list[int], proc: str = "/proc"):
        self.pids = list(pids)
        self._proc = proc
        self.fds: dict[tuple[int, int], int] = {}  # (pid, fd) -> vCPU index
        self.runs: set[tuple[int, int, int]] = set()  # (pid, tid, fd) seen issuing KVM_RUN
        self.conflicts = 0

    def _note(self, pid: int, fd: int, vcpu: int) -> None:
        old = self.fds.get((pid, fd))
        if old is not None and old != vcpu:
            self.conflicts += 1
        self.fds[(pid, fd)] = vcpu

    def scan(self) -> None:
        """Read the processes' vCPU fds from ``/proc`` (a process gone or unreadable adds nothing)."""
        for pid in self.pids:
            folder = f"{self._proc}/{pid}/fd"
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for name in names:
                try:
                    vcpu = vcpu_fd_index(os.readlink(f"{folder}/{name}"))
                except OSError:
                    continue
                if vcpu is not None and name.isdigit():
                    self._note(pid, int(name), vcpu)

    def observe(self, family: str, table: Any) -> None:
        """Learn from a batch of the ``ioctl`` (KVM_CREATE_VCPU results, streamed KVM_RUN calls) or the
        ``ioctl_summary`` family (aggregated KVM_RUN per thread and fd); other families are ignored. Only
        the distinct (pid, tid, fd) of a batch's KVM_RUN rows are read, not every call."""
        if family not in ("ioctl", "ioctl_summary") or not table.num_rows:
            return
        names = set(table.column_names)
        if not {"cmd", "pid", "tid", "fd"} <= names:
            return
        cmd = table.column("cmd")
        runs = table.filter(pc.equal(cmd, KVM_RUN))
        if runs.num_rows:
            distinct = runs.select(["pid", "tid", "fd"]).group_by(["pid", "tid", "fd"]).aggregate([])
            for pid, tid, fd in zip(*(distinct.column(c).to_pylist() for c in ("pid", "tid", "fd"))):
                if None not in (pid, tid, fd):
                    self.runs.add((int(pid), int(tid), int(fd)))
        if family == "ioctl" and {"ret", "arg"} <= names:
            created = table.filter(pc.equal(cmd, KVM_CREATE_VCPU))
            for pid, ret, arg in zip(*(created.column(c).to_pylist() for c in ("pid", "ret", "arg"))):
                if None not in (pid, ret, arg) and ret >= 0:
                    self._note(int(pid), int(ret), int(arg))

    def identify(self) -> dict[int, int]:
        """``{tid: vcpu index}`` for the threads seen issuing KVM_RUN on a known vCPU fd (a thread that ran
        several vCPUs keeps the lowest index)."""
        out: dict[int, int] = {}
        for pid, tid, fd in sorted(self.runs):
            vcpu = self.fds.get((pid, fd))
            if vcpu is not None and (tid not in out or vcpu < out[tid]):
                out[tid] = vcpu
        return out

    def mark_threads(self, threads: dict[int, dict]) -> None:
        """Give the identified threads of ``threads`` (``{tid: {"tid", "comm", "vcpu"}}``) their vCPU index
        and ``"vcpu_from": "KVM_RUN fd"``; threads named as vCPUs but not identified keep
        ``"vcpu_from": "thread name"``."""
        identified = self.identify()
        for thread in threads.values():
            if thread["tid"] in identified:
                thread.update(vcpu=identified[thread["tid"]], vcpu_from="KVM_RUN fd")
            elif thread.get("vcpu") is not None:
                thread.setdefault("vcpu_from", "thread name")

    def manifest(self) -> dict:
        """The manifest record: ``{"fds": [{"pid", "fd", "vcpu"}], "conflicts"}``."""
        return {"fds": [{"pid": pid, "fd": fd, "vcpu": vcpu} for (pid, fd), vcpu in sorted(self.fds.items())],
                "conflicts": self.conflicts}
