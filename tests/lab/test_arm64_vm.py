"""The lab's arm64 VMM on the workload's ioctl layer, without arm64 KVM: a fake /dev/kvm records the calls.

It runs for real in the arm64 lab (scenarios ``rebuild``, ``contention``, ``overhead``); here the order of the
VM-wide settings (eager-split chunk before the first memslot, as KVM requires), the registers a pass is
started with, the exit check and the clean-up are checked call by call.
"""

from __future__ import annotations

import ctypes

import pytest

from tracekit.errors import LabError, WorkloadError
from tracekit.lab import arm64_vm
from tracekit.lab.arm64_vm import CODE_IPA, DATA_IPA, MMIO_DONE_IPA, Arm64Vm
from tracekit.workload import uapi
from tracekit.workload.backend_arm64 import PC_REG, core_reg_id

MiB = 1 << 20
ARM64_BLOCK_SIZES = (1 << 12) | (1 << 21) | (1 << 30)


class _Recorder:
    """A fake /dev/kvm, VM and vCPUs sharing one call list; a vCPU "runs" by returning ``exit``."""

    def __init__(self, block_sizes: int = ARM64_BLOCK_SIZES) -> None:
        self.calls: list[tuple] = []
        self.block_sizes = block_sizes
        self.exit = uapi.KVM_EXIT_MMIO
        self.run_page = (ctypes.c_uint64 * 512)()
        self.run_page[uapi.RUN_UNION_OFFSET // 8] = MMIO_DONE_IPA
        recorder = self

        class Vcpu:
            def __init__(self, vm, index):
                self.vm, self.index, self.fd = vm, index, 100 + index
                self.run_address = ctypes.addressof(recorder.run_page)

            def call(self, request, arg=0, summary=None):
                recorder.calls.append((f"vcpu{self.index}", uapi.IOCTL_NAMES[request], summary))

            def run(self):
                recorder.calls.append((f"vcpu{self.index}", "KVM_RUN", None))
                return recorder.exit

            def close(self):
                recorder.calls.append((f"vcpu{self.index}", "close", None))

        class Log:
            def call(self, target, fd, request, arg=0, summary=None):
                recorder.calls.append((target, uapi.IOCTL_NAMES[request], summary))

        class Vm:
            fd, log = 4, Log()
            chunk = 0

            def check_extension(self, cap):
                return self.chunk if cap == uapi.KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE else 0

            def enable_cap(self, cap, *args):
                recorder.calls.append(("vm", "KVM_ENABLE_CAP", {"cap": cap, "args": list(args)}))
                self.chunk = args[0] if cap == uapi.KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE else self.chunk

            def set_user_memory_region(self, slot, flags, gpa, size, hva):
                recorder.calls.append(("vm", "KVM_SET_USER_MEMORY_REGION", {"slot": slot, "flags": flags}))

            def create_vcpu(self, index, ring_bytes=0):
                return Vcpu(self, index)

            def close(self):
                recorder.calls.append(("vm", "close", None))

        class Kvm:
            fd = 3

            def __init__(self, log):
                pass

            def check_extension(self, cap):
                caps = {uapi.KVM_CAP_ARM_VM_IPA_SIZE: 40, uapi.KVM_CAP_ARM_SUPPORTED_BLOCK_SIZES: recorder.block_sizes}
                return caps.get(cap, 0)

            def create_vm(self, vm_type=0):
                recorder.calls.append(("kvm", "KVM_CREATE_VM", {"type": vm_type}))
                return Vm()

            def close(self):
                recorder.calls.append(("kvm", "close", None))

        self.Kvm = Kvm

    def names(self) -> list[str]:
        return [f"{target} {name}" for target, name, _ in self.calls]


@pytest.fixture
def fake(monkeypatch):
    recorder = _Recorder()
    monkeypatch.setattr(arm64_vm, "Kvm", recorder.Kvm)
    return recorder


def test_chunk_and_manual_protect_precede_the_first_memslot(fake):
    vm = Arm64Vm(4 * MiB, backing="4k", eager_split_chunk=2 * MiB, manual_protect=True, vcpus=2)
    try:
        names = fake.names()
        assert names[0] == "kvm KVM_CREATE_VM" and fake.calls[0][2] == {"type": 40}
        caps = [c[2]["cap"] for c in fake.calls if c[1] == "KVM_ENABLE_CAP"]
        assert caps == [uapi.KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE, uapi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2]
        last_cap = max(i for i, c in enumerate(fake.calls) if c[1] == "KVM_ENABLE_CAP")
        assert last_cap < names.index("vm KVM_SET_USER_MEMORY_REGION")
        assert names.count("vm KVM_ARM_PREFERRED_TARGET") == 2 and "vcpu1 KVM_ARM_VCPU_INIT" in names
        assert [e["op"] for e in vm.log] == ["enable_cap", "enable_cap", "set_memory_region", "set_memory_region"]
    finally:
        vm.close()
    assert fake.names()[-4:] == ["vcpu0 close", "vcpu1 close", "vm close", "kvm close"]
    before = len(fake.calls)
    vm.close()  # twice is harmless
    assert len(fake.calls) == before


def test_touch_sets_the_loop_registers_and_checks_the_exit(fake):
    vm = Arm64Vm(4 * MiB, backing="4k")
    try:
        vm.touch(4096, start=MiB, length=MiB)
        regs = {c[2]["reg"]: c[2]["value"] for c in fake.calls if c[1] == "KVM_SET_ONE_REG"}
        assert regs[core_reg_id(0)] == DATA_IPA + MiB and regs[core_reg_id(1)] == DATA_IPA + 2 * MiB
        assert regs[core_reg_id(2)] == 4096 and regs[core_reg_id(4)] == MMIO_DONE_IPA
        assert regs[core_reg_id(PC_REG)] == CODE_IPA
        assert vm.log[-1] == {"op": "touch", "vcpu": 0, "start": MiB, "end": 2 * MiB, "stride": 4096}
        fake.exit = uapi.KVM_EXIT_SHUTDOWN
        with pytest.raises(LabError, match="stopped with exit"):
            vm.touch(4096)
    finally:
        vm.close()


def test_an_unsupported_chunk_is_refused_and_nothing_is_left_open(fake):
    with pytest.raises(WorkloadError, match="64K is not a stage-2 block size"):
        Arm64Vm(4 * MiB, backing="4k", eager_split_chunk=64 * 1024)
    assert fake.names() == ["kvm close"]  # refused before KVM_CREATE_VM
