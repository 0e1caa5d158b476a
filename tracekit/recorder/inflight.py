"""KVM ioctls already running when the recording window opens, read from ``/proc``.

:func:`blocked_kvm_ioctls` lists the threads blocked inside a KVM ioctl, :func:`calls_in_flight` keeps
the calls seen identical before and after the window opened, and :func:`inflight_records` turns them
into ioctl records marked ``began_before``.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracekit import schema as S
from tracekit.recorder.kvm_ioctls import KVMIO

__all__ = ["NR_IOCTL", "BlockedCall", "parse_syscall", "blocked_kvm_ioctls", "calls_in_flight", "inflight_records"]

#: The ioctl syscall's number per machine (``uname -m``).
NR_IOCTL = {"x86_64": 16, "aarch64": 29}

_PF_KTHREAD, _PF_USER_WORKER = 0x00200000, 0x00004000  # include/linux/sched.h


@dataclass(frozen=True)
class BlockedCall:
    pid: int
    tid: int
    fd: int
    cmd: int
    arg: int
    cpu: int  # the CPU the thread last ran on


def parse_syscall(text: str) -> tuple[int, list[int]] | None:
    """``(nr, args)`` of a ``/proc/.../syscall`` line; None for ``running``, ``-1 ...`` (not in a
    syscall) or anything unreadable."""
    words = text.split()
    if not words or words[0] in ("running", "-1"):
        return None
    try:
        return int(words[0]), [int(w, 16) for w in words[1:7]]
    except ValueError:
        return None


def _stat_fields(text: str) -> list[str]:
    """The fields of a ``/proc/.../stat`` line after the command name (field 3, the state, first)."""
    return text.rsplit(")", 1)[-1].split()


def _blocked_in_kvm_ioctl(pid: int, tid: int, syscall_text: str, stat_text: str, nr_ioctl: int) -> BlockedCall | None:
    parsed = parse_syscall(syscall_text)
    if parsed is None or parsed[0] != nr_ioctl or len(parsed[1]) < 3:
        return None
    fd, cmd, arg = parsed[1][:3]
    fields = _stat_fields(stat_text)
    try:
        flags, cpu = int(fields[6]), int(fields[36])
    except (IndexError, ValueError):
        return None
    if flags & (_PF_KTHREAD | _PF_USER_WORKER) or (cmd >> 8) & 0xFF != KVMIO:
        return None
    fd &= 0xFFFFFFFF  # an unsigned int in the kernel, an int32 in the records
    return BlockedCall(pid, tid, fd - (1 << 32) if fd >> 31 else fd, cmd & 0xFFFFFFFF, arg, cpu)


def blocked_kvm_ioctls(pids: list[int], proc: Path = Path("/proc"),
                       machine: str | None = None) -> dict[int, BlockedCall]:
    """Threads of ``pids`` blocked in a KVM ioctl now, by tid (empty on a machine without a known ioctl
    number; threads that vanish while read are skipped)."""
    nr = NR_IOCTL.get(machine or platform.machine())
    found: dict[int, BlockedCall] = {}
    if nr is None:
        return found
    for pid in pids:
        task = proc / str(pid) / "task"
        try:
            tids = [int(e.name) for e in task.iterdir() if e.name.isdigit()]
        except OSError:
            continue
        for tid in tids:
            try:
                call = _blocked_in_kvm_ioctl(pid, tid, (task / str(tid) / "syscall").read_text(),
                                             (task / str(tid) / "stat").read_text(), nr)
            except OSError:
                continue
            if call is not None:
                found[tid] = call
    return found


def calls_in_flight(before: dict[int, BlockedCall], after: dict[int, BlockedCall]) -> list[BlockedCall]:
    """The calls of ``after`` (read once the window opened) that ``before`` (read just before) shows
    identical, by tid (the CPU may differ)."""
    return [call for tid, call in sorted(after.items())
            if tid in before and (before[tid].fd, before[tid].cmd, before[tid].arg) == (call.fd, call.cmd, call.arg)]


def inflight_records(calls: list[BlockedCall], start_ns: int) -> np.ndarray:
    """``struct ioctl_event`` records of ``calls``, entered at ``start_ns`` and marked began_before."""
    records = np.zeros(len(calls), S.IOCTL_EVENT_DTYPE)
    for i, call in enumerate(calls):
        records[i]["hdr"] = (start_ns, call.pid, call.tid, call.cpu, 0)
        records[i]["fd"], records[i]["cmd"], records[i]["arg"] = call.fd, call.cmd, call.arg
    records["decoded"] = S.TK_IOCTL_BEGAN_BEFORE
    return records
