"""KVM ioctls in flight when the window opens: /proc syscall text and their completion (no kernel)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tracekit import schema as S
from tracekit.recorder.tracepoint_families import IoctlFamily
from tracekit.recorder.inflight import BlockedCall, blocked_kvm_ioctls, calls_in_flight, parse_syscall
from tracekit.recorder.kvm_ioctls import KVM_GET_DIRTY_LOG, KVM_RUN

RUN_LINE = "16 0x5 0xae80 0x0 0x0 0x6f6c206f6f742074 0x6f63206f7420676e 0x7ffea3f0acd0 0x7fca4fd1bd6b\n"
ENTER_T = [("common_pid", "<i4"), ("fd", "<u8"), ("cmd", "<u8"), ("arg", "<u8")]
EXIT_T = [("common_pid", "<i4"), ("ret", "<i8")]


def _stat(tid: int, comm: str, flags: int, cpu: int) -> str:
    fields = ["S"] + ["0"] * 50
    fields[6], fields[36] = str(flags), str(cpu)
    return f"{tid} ({comm}) " + " ".join(fields) + "\n"


def _proc(root: Path, pid: int, threads: dict[int, tuple[str, str, int]]) -> Path:
    """A /proc tree: pid's threads as tid -> (syscall text, comm, flags); each last ran on CPU tid % 2."""
    for tid, (syscall, comm, flags) in threads.items():
        task = root / str(pid) / "task" / str(tid)
        task.mkdir(parents=True)
        (task / "syscall").write_text(syscall)
        (task / "stat").write_text(_stat(tid, comm, flags, tid % 2))
    return root


def test_parse_syscall_reads_the_number_and_arguments_in_hex():
    assert parse_syscall(RUN_LINE) == (16, [5, 0xAE80, 0, 0, 0x6F6C206F6F742074, 0x6F63206F7420676E])
    assert parse_syscall("running\n") is None
    assert parse_syscall("-1 0x7ffd3d6e1480 0x7f14a37e62d5\n") is None  # blocked outside a syscall
    assert parse_syscall("") is None and parse_syscall("16 0xzz") is None and parse_syscall("x 0x1") is None


def test_only_threads_blocked_in_a_kvm_ioctl_are_found(tmp_path):
    """A vCPU asleep in KVM_RUN (with a ") (" in its name) is found with fd, command and CPU; a thread on
    a CPU, one outside a syscall, in read(2), in a terminal ioctl, a kernel worker cloned from the vCPU
    (its file repeats the vCPU's registers) and an unreadable line are not."""
    proc = _proc(tmp_path, 40, {
        41: (RUN_LINE, "CPU 0/KVM) (x", 0x400000),
        42: ("running\n", "CPU 1/KVM", 0x400000),
        43: ("-1 0x7ffd 0x7f14\n", "main", 0x400000),
        44: ("0 0x3 0x7f00 0x1000 0x0 0x0 0x0 0x1 0x2\n", "io", 0x400000),
        45: ("16 0x1 0x5401 0x7ffd 0x0 0x0 0x0 0x1 0x2\n", "tty", 0x400000),
        46: (RUN_LINE, "kvm-nx-lpage-re", 0x404040),
        47: ("16 0x5", "short", 0x400000),
    })
    found = blocked_kvm_ioctls([40, 99], proc=proc, machine="x86_64")
    assert found == {41: BlockedCall(pid=40, tid=41, fd=5, cmd=KVM_RUN, arg=0, cpu=1)}
    assert blocked_kvm_ioctls([40], proc=proc, machine="aarch64") == {}  # ioctl is syscall 29 there
    arm = _proc(tmp_path / "arm", 50, {51: ("29 0x7 0xae80 0x0 0x0 0x0 0x0 0x1 0x2\n", "vcpu", 0)})
    assert blocked_kvm_ioctls([50], proc=arm, machine="aarch64")[51].fd == 7
    assert blocked_kvm_ioctls([40], proc=proc, machine="riscv64") == {}


def test_only_calls_seen_identical_on_both_sides_of_the_arming_are_in_flight():
    run = BlockedCall(1, 2, 5, KVM_RUN, 0, 0)
    moved = BlockedCall(1, 2, 5, KVM_RUN, 0, 1)
    other = BlockedCall(1, 3, 6, KVM_RUN, 0, 0)
    dirty = BlockedCall(1, 3, 4, KVM_GET_DIRTY_LOG, 0x10, 0)
    assert calls_in_flight({2: run, 3: other}, {2: moved, 3: dirty}) == [moved]  # tid 3 changed call
    assert calls_in_flight({}, {2: run}) == [] and calls_in_flight({2: run}, {}) == []


def _raw(names_types, rows):
    dtype = np.dtype(names_types + [("ts_ns", "<i8"), ("cpu", "<i4"), ("tgid", "<i4")])
    return np.array([tuple(r) for r in rows], dtype=dtype)


def test_tracefs_exit_completes_the_call_in_flight_with_its_command_and_fd():
    """Window opens at 100. Thread 5 was in KVM_RUN (fd 9): its exit at 400 completes it, began_before.
    Thread 6 was in GET_DIRTY_LOG but entered a new call in the window: its first /proc call is superseded
    (only the window's own call pairs). Thread 7 stays blocked: unfinished and began_before at the end.
    An exit of thread 8, not found in /proc, stays unknown."""
    family = IoctlFamily()
    family.open_in_flight([BlockedCall(1, 5, 9, KVM_RUN, 0, 0), BlockedCall(1, 6, 4, KVM_GET_DIRTY_LOG, 0x70, 1),
                           BlockedCall(1, 7, 11, KVM_RUN, 0, 1)], 100)
    out = family.decode_tracefs({
        "syscalls:sys_enter_ioctl": _raw(ENTER_T, [(6, 4, KVM_GET_DIRTY_LOG, 0x70, 200, 1, 1)]),
        "syscalls:sys_exit_ioctl": _raw(EXIT_T, [(5, 0, 400, 0, 1), (6, 0, 250, 1, 1), (8, 0, 300, 0, 1)]),
    })
    [dirty] = out["ioctl"].to_pylist()
    assert (dirty["tid"], dirty["cmd_name"], dirty["duration_ns"], dirty["partial"]) == (6, "KVM_GET_DIRTY_LOG", 50, "")
    summary = family.finish_tracefs(1000)["ioctl_summary"].to_pylist()
    assert [(r["tid"], r["fd"], r["count"], r["total_ns"], r["partial"]) for r in summary] == [
        (5, 9, 1, 300, 1), (7, 11, 1, 900, 1)]
    assert family.partial_counts() == {"ioctl_began_before": 2, "ioctl_unfinished": 1, "ioctl_exits_without_entry": 1,
                                       "ioctl_in_flight_at_start": 3}


def _bpf(agg: dict, inflight: list[np.ndarray], lost_exits: int = 0) -> dict:
    """The two maps finish() reads, as bcc shows them (agg items as ctypes-like key/value objects)."""
    items = [(SimpleNamespace(pid=k[0], tid=k[1], cmd=k[2], fd=k[3], err=k[4]),
              SimpleNamespace(count=v[0], total_ns=v[1], max_ns=v[2], errors=v[3], partial=v[4])) for k, v in agg.items()]
    return {b"ioctl_agg": SimpleNamespace(items=lambda: items),
            b"ioctl_inflight": {i: rec.tobytes() for i, rec in enumerate(inflight)},
            b"ioctl_lost": _PerCpu([[0, lost_exits], [0, 0]])}


class _PerCpu:
    """A bcc per-CPU array as read_percpu reads it: rows of CPUs, a value per index."""

    def __init__(self, rows: list[list[int]]):
        self.rows = rows

    def Key(self, index: int) -> int:  # noqa: N802 (bcc's name)
        return index

    def getvalue(self, index: int) -> list[int]:
        return [row[index] for row in self.rows]


@pytest.mark.parametrize("task_regs", [True, False])
def test_bcc_a_call_in_flight_whose_thread_shows_nothing_spans_the_window(task_regs):
    """Window 100..1000. Thread 5 (halted vCPU, KVM_RUN fd 9) shows no call at all: counted through the
    whole window, began_before and unfinished, with its fd. Thread 6's exit was aggregated by the kernel
    and thread 7's call was opened by the timer tick (in ioctl_inflight): both left as the kernel says.
    Without the saved-register reads the exit of such a call leaves no trace, so nothing is assumed."""
    family = IoctlFamily()
    family._task_regs = task_regs
    family.open_in_flight([BlockedCall(1, 5, 9, KVM_RUN, 0, 0), BlockedCall(1, 6, 10, KVM_RUN, 0, 1),
                           BlockedCall(1, 7, 11, KVM_RUN, 0, 1)], 100)
    ticked = np.zeros(1, S.IOCTL_EVENT_DTYPE)
    ticked["hdr"]["ts_ns"], ticked["hdr"]["pid"], ticked["hdr"]["tid"] = 100, 1, 7
    ticked["fd"], ticked["cmd"], ticked["decoded"] = 11, KVM_RUN, S.TK_IOCTL_BEGAN_BEFORE
    bpf = _bpf({(1, 6, KVM_RUN, 10, 0): [1, 50, 50, 0, 1]}, [ticked])
    summary = family.finish(bpf, 1000)["ioctl_summary"].to_pylist()
    rows = [(r["tid"], r["fd"], r["count"], r["total_ns"], r["partial"]) for r in summary]
    assert rows == ([(5, 9, 1, 900, 1)] if task_regs else []) + [(6, 10, 1, 50, 1), (7, 11, 1, 900, 1)]
    counts = family.partial_counts()
    assert counts["ioctl_in_flight_at_start"] == 3
    assert (counts["ioctl_began_before"], counts["ioctl_unfinished"]) == ((3, 2) if task_regs else (2, 1))


def test_bcc_a_streamed_call_of_the_thread_in_the_window_means_the_kernel_saw_its_exit():
    family = IoctlFamily()
    family._task_regs = True
    family.open_in_flight([BlockedCall(1, 6, 4, KVM_GET_DIRTY_LOG, 0x70, 0)], 100)
    rec = np.zeros(1, S.IOCTL_EVENT_DTYPE)
    rec["hdr"]["ts_ns"], rec["hdr"]["pid"], rec["hdr"]["tid"] = 100, 1, 6
    rec["cmd"], rec["fd"], rec["decoded"], rec["duration_ns"] = KVM_GET_DIRTY_LOG, 4, S.TK_IOCTL_BEGAN_BEFORE, 20
    assert family.decode("ioctl_events", rec)["ioctl"].to_pylist()[0]["partial"] == "began_before"
    final = family.finish(_bpf({}, []), 1000)
    assert "ioctl" not in final and final["ioctl_summary"].num_rows == 0
    assert family.partial_counts()["ioctl_unfinished"] == 0


def test_bcc_a_streamed_call_in_flight_is_not_assumed_when_exits_were_lost():
    """Exits lost on a full ring could be the streamed call's: only the aggregated KVM_RUN is assumed."""
    family = IoctlFamily()
    family._task_regs = True
    family.open_in_flight([BlockedCall(1, 5, 9, KVM_RUN, 0, 0), BlockedCall(1, 6, 4, KVM_GET_DIRTY_LOG, 0x70, 0)], 100)
    final = family.finish(_bpf({}, [], lost_exits=3), 1000)
    assert "ioctl" not in final
    assert [(r["tid"], r["partial"]) for r in final["ioctl_summary"].to_pylist()] == [(5, 1)]
    family = IoctlFamily()
    family._task_regs = True
    family.open_in_flight([BlockedCall(1, 6, 4, KVM_GET_DIRTY_LOG, 0x70, 0)], 100)
    [row] = family.finish(_bpf({}, []), 1000)["ioctl"].to_pylist()
    assert (row["tid"], row["fd"], row["cmd_name"], row["duration_ns"], row["partial"], row["ret"]) == (
        6, 4, "KVM_GET_DIRTY_LOG", 900, "began_before,unfinished", None)
