"""The per-VM table printed when ``tracekit record`` ends."""

from __future__ import annotations

import pyarrow as pa

from tracekit.recorder.tally import VmTally


def test_rows_and_kvm_run_are_counted_per_vm():
    tally = VmTally()
    tally.add("walk", pa.table({"pid": pa.array([1, 1, 2], pa.int32())}))
    tally.add("walk", pa.table({"pid": pa.array([2], pa.int32())}))
    tally.add("walk_element", pa.table({"pid": pa.array([1] * 6, pa.int32())}))
    tally.add("ioctl_summary", pa.table({"pid": pa.array([1, 1, 2], pa.int32()),
                                         "cmd_name": pa.array(["KVM_RUN", "KVM_RUN", "KVM_GET_REGS"]).dictionary_encode(),
                                         "count": [3, 4, 9], "total_ns": [10**9, 5 * 10**8, 7]}))
    tally.add("ioctl", pa.table({"pid": pa.array([2, 2], pa.int32()), "cmd_name": ["KVM_RUN", "KVM_GET_DIRTY_LOG"],
                                 "duration_ns": [2 * 10**9, 5]}))
    tally.add("stack", pa.table({"stack_id": [1]}))  # no pid: ignored
    assert tally.rows == {(1, "walk"): 2, (2, "walk"): 2, (1, "walk_element"): 6, (2, "ioctl"): 2}
    assert tally.runs == {1: [7, 1_500_000_000], 2: [1, 2_000_000_000]}
    lines = tally.render([{"pid": 1, "comm": "qemu-kvm", "name": "db"}, {"pid": 2, "comm": "qemu-kvm", "name": None},
                          {"pid": 3, "comm": "idle"}]).splitlines()
    assert lines[0].split() == ["VM", "walks", "elements", "mmu", "ioctls", "lock", "waits", "KVM_RUN"]
    assert lines[1].split() == ["1", "qemu-kvm", "(db)", "2", "6", "0", "0", "0", "7", "calls,", "1.50", "s"]
    assert lines[2].split() == ["2", "qemu-kvm", "2", "0", "0", "2", "0", "1", "calls,", "2.00", "s"]
    assert lines[3].split() == ["3", "idle", "0", "0", "0", "0", "0", "-"]
