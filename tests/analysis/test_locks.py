"""Lock contention: modes, operation attribution, mmu_lock identification, summaries."""

from __future__ import annotations

import pandas as pd

from tracekit.analysis.locks import (attribute_operations, contention_summary, contention_timeline,
                                     identify_mmu_lock, lock_mode)

MANIFEST = {"target": {"threads": [{"tid": 20, "vcpu": 0}, {"tid": 21, "vcpu": 1}]}}
MMU, RQ = 0xFFFF888104311000, 0xFFFF888627C2BA40
STACK = pd.DataFrame({"stack_id": [1, 2, 3], "frames": [
    ["queued_write_lock_slowpath+0x5c", "paging64_page_fault+0x3a1", "kvm_mmu_do_page_fault+0x1", "kvm_mmu_page_fault"],
    ["__pv_queued_spin_lock_slowpath+0x10e", "_raw_spin_lock+0x3b", "__schedule+0xad", "schedule",
     "xfer_to_guest_mode_handle_work", "kvm_arch_vcpu_ioctl_run"],
    ["__pv_queued_spin_lock_slowpath", "_raw_spin_lock", "__schedule", "irqentry_exit_to_user_mode",
     "asm_exc_page_fault"],
]})
LOCK = pd.DataFrame({
    "ts_ns": [100, 200, 300, 400, 500, 600],
    "tid": [20, 21, 20, 10, 10, 21],
    "lock_addr": [MMU, MMU, RQ, RQ, MMU, RQ],
    "flags": [5, 5, 1, 1, 3, 1],
    "wait_ns": [1000, 3000, 50, 70, 400, 60],
    "stack_id": [1, 1, 2, 3, -1, -1],
})
IOCTL = pd.DataFrame({"ts_ns": [450], "duration_ns": [100], "tid": [10], "cmd_name": ["KVM_CLEAR_DIRTY_LOG"]})


def test_lock_mode():
    assert lock_mode([1, 3, 5, 32, 8]).tolist() == ["spin", "read", "write", "mutex", "spin"]


def test_attribution_golden():
    """Stack 1 -> fault (taken by paging64_page_fault); stack 2 -> a scheduler lock in a vCPU thread;
    stack 3 is a host page fault, not KVM; the stackless read wait at 500 sits in a CLEAR ioctl."""
    waits = attribute_operations(LOCK, MANIFEST, STACK, IOCTL)
    assert waits["operation"].tolist() == ["fault", "fault", "vcpu-run", "other", "dirty-log-clear", "vcpu-run"]
    assert waits["op_source"].tolist() == ["stack", "stack", "thread", "none", "ioctl", "thread"]
    assert waits["vcpu"].tolist() == [0, 1, 0, -1, -1, 1]
    assert waits["kvm_taker"].tolist() == [True, True, False, False, False, False]


def test_mmu_lock_identified_from_stacks_not_scheduler_locks():
    waits = attribute_operations(LOCK, MANIFEST, STACK, IOCTL)
    mmu = identify_mmu_lock(waits)
    assert mmu["lock_addr"] == MMU and mmu["name"] == "mmu_lock"
    assert mmu["evidence"].startswith("2 waits taken by KVM MMU functions (stacks), 1 stackless rwlock waits")
    # Scheduler locks alone never become mmu_lock.
    assert identify_mmu_lock(waits[waits["lock_addr"] == RQ]) is None


def test_summary_and_timeline_golden():
    """mmu_lock rows first: fault by vCPU 0 (1 wait, 1000 ns) and vCPU 1 (3000 ns), a CLEAR read wait of 400."""
    waits = attribute_operations(LOCK, MANIFEST, STACK, IOCTL)
    table = contention_summary(waits, identify_mmu_lock(waits))
    mmu_rows = table[table["lock"] == "mmu_lock"]
    assert mmu_rows[["operation", "vcpu", "mode", "count", "total_ns", "max_ns"]].values.tolist() == [
        ["fault", 1, "write", 1, 3000, 3000], ["fault", 0, "write", 1, 1000, 1000],
        ["dirty-log-clear", -1, "read", 1, 400, 400]]
    assert table["lock"].tolist()[3:] == [f"{RQ:#x}"] * 3
    timeline = contention_timeline(waits, None, bin_ns=250)
    assert timeline[["t_ns", "waits", "wait_ns"]].values.tolist()[:2] == [[0, 2, 4000], [250, 2, 120]]


def test_recorded_mmu_lock_address_wins():
    """A manifest that records kvm->mmu_lock (the arm64 lab: struct kvm + offset) names it even without stacks."""
    from tracekit.analysis.locks import known_mmu_locks

    waits = attribute_operations(LOCK.assign(stack_id=-1), {}, None, None)
    assert identify_mmu_lock(waits) is None  # no stacks, no vCPU threads, no ioctls: nothing to go on
    known = known_mmu_locks({"lab": {"mmu_lock_addrs": [RQ]}})
    assert known == [RQ]
    named = identify_mmu_lock(waits, known)
    assert named["lock_addr"] == RQ and named["evidence"].startswith("3 waits on the address the capture records")
    assert identify_mmu_lock(waits, [12345]) is None  # a recorded address without waits names nothing


def test_waits_inside_memslot_ioctls_are_labelled_by_what_the_call_changed():
    """A memslot create, move and delete (memslot_perf_test) are not dirty-log enables; only a call that
    turns KVM_MEM_LOG_DIRTY_PAGES on is, and a stack inside kvm_set_memslot takes the call's change."""
    set2 = "KVM_SET_USER_MEMORY_REGION2"
    ioctl = pd.DataFrame({"ts_ns": [0, 100, 200, 300, 400], "duration_ns": [50] * 5, "tid": [10] * 5,
                          "cmd_name": [set2] * 5, "ret": [0] * 5, "slot": [1] * 5, "flags": [0, 0, 1, 0, 0],
                          "memory_size": [4096, 4096, 4096, 4096, 0],
                          "guest_phys_addr": [0x1000, 0x9000, 0x9000, 0x9000, 0x9000]})
    lock = pd.DataFrame({"ts_ns": [10, 110, 210, 310, 410, 120], "tid": [10] * 6, "lock_addr": [MMU] * 6,
                         "flags": [5] * 6, "wait_ns": [1] * 6, "stack_id": [-1, -1, -1, -1, -1, 4]})
    stack = pd.DataFrame({"stack_id": [4], "frames": [["queued_write_lock_slowpath", "kvm_set_memslot+0x1",
                                                       "kvm_vm_ioctl"]]})
    waits = attribute_operations(lock, MANIFEST, stack, ioctl)
    assert waits["operation"].tolist() == ["memslot-create", "memslot-move", "dirty-log-enable",
                                           "dirty-log-disable", "memslot-delete", "memslot-move"]
    assert waits["op_source"].tolist() == ["ioctl"] * 5 + ["stack"]
