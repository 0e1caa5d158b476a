"""``--eager-split-chunk`` without KVM: option plumbing, the x86 refusal, the arm64 block-size check, and
the order of the VM-wide settings (a fake ``/dev/kvm`` records every call: the chunk size and the
backend's ``configure_vm`` must come before the first memslot, because arm64 KVM refuses the chunk size
once a memslot exists)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.workload.test_options import _build
from tracekit.cli import app
from tracekit.errors import WorkloadError
from tracekit.workload import dirtylog, uapi
from tracekit.workload.backend_arm64 import Arm64Backend
from tracekit.workload.backend_x86 import X86Backend
from tracekit.workload.options import DirtyLogOptions

MIB = 1 << 20
#: What a 4 KiB-granule arm64 host reports for KVM_CAP_ARM_SUPPORTED_BLOCK_SIZES: 4K | 2M | 1G.
ARM64_BLOCK_SIZES = (1 << 12) | (1 << 21) | (1 << 30)


@pytest.mark.parametrize("text,value", [(None, None), ("0", 0), ("4k", 4096), ("2M", 2 * MIB), ("1g", 1 << 30)])
def test_option_is_parsed_and_recorded(text, value):
    options = _build(eager_split_chunk=text)
    assert options.eager_split_chunk == value
    assert options.as_dict()["eager_split_chunk"] == value  # the layout's "options" record


@pytest.mark.parametrize("text,message", [("3M", "power of two of at least 4K, got 3M"), ("2k", "got 2K"),
                                          ("2 MiB", "bad size")])  # fmt: skip
def test_bad_chunk_sizes_are_refused_before_kvm(text, message):
    with pytest.raises(WorkloadError, match=message):
        _build(eager_split_chunk=text)


def test_cli_error_is_one_line():
    result = CliRunner().invoke(app, ["workload", "dirty-log", "--eager-split-chunk", "96K"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "tracekit: error: --eager-split-chunk must be 0 (off) or a power of two of at least 4K, got 96K"
    ]
    assert "--eager-split-chunk" in CliRunner().invoke(app, ["workload", "dirty-log", "--help"]).output


@pytest.mark.parametrize("value", ["Y", "N"])
def test_x86_refuses_and_reports_the_module_parameter(tmp_path, value):
    param = tmp_path / "eager_page_split"
    param.write_text(f"{value}\n")
    with pytest.raises(WorkloadError) as error:
        X86Backend(eager_page_split_param=param).check_eager_split_chunk(None, 2 * MIB)
    message = str(error.value)
    assert "\n" not in message and "applies to arm64 only" in message
    assert f"kvm.eager_page_split module parameter (currently {value};" in message
    missing = tmp_path / "absent"
    with pytest.raises(WorkloadError, match="not readable here"):
        X86Backend(eager_page_split_param=missing).check_eager_split_chunk(None, 0)


class _FakeKvm:
    """A /dev/kvm stand-in: answers KVM_CHECK_EXTENSION from ``caps``; its VM records what the driver does."""

    caps: dict[int, int] = {}
    calls: list[tuple] = []

    def __init__(self, log) -> None:
        self.log, self.fd = log, -1

    def check_extension(self, cap: int) -> int:
        return self.caps.get(cap, 0)

    def create_vm(self, vm_type: int = 0) -> "_FakeVm":
        self.calls.append(("create_vm", vm_type))
        return _FakeVm(self)

    def close(self) -> None:
        pass


class _Stop(WorkloadError):
    """Raised at KVM_CREATE_VCPU: the fake has seen everything that must precede the vCPUs."""


class _FakeVm:
    def __init__(self, kvm: _FakeKvm) -> None:
        self.kvm, self.fd, self.chunk = kvm, -2, 0

    def check_extension(self, cap: int) -> int:
        return self.chunk if cap == uapi.KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE else self.kvm.check_extension(cap)

    def enable_cap(self, cap: int, *args: int) -> None:
        self.kvm.calls.append(("enable_cap", cap, *args))
        if cap == uapi.KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE:
            if any(call[0] == "set_user_memory_region" for call in self.kvm.calls):
                raise WorkloadError("KVM_ENABLE_CAP failed: Invalid argument (errno EINVAL)")  # as arm64 KVM does
            self.chunk = args[0]

    def set_user_memory_region(self, slot: int, flags: int, gpa: int, size: int, hva: int) -> None:
        self.kvm.calls.append(("set_user_memory_region", slot))

    def create_vcpu(self, index: int, ring_bytes: int = 0):
        raise _Stop("stop at KVM_CREATE_VCPU")

    def close(self) -> None:
        pass


@pytest.fixture
def fake_kvm(monkeypatch):
    monkeypatch.setattr(dirtylog, "Kvm", _FakeKvm)
    monkeypatch.setattr(_FakeKvm, "calls", [])
    monkeypatch.setattr(_FakeKvm, "caps", {uapi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: 3, uapi.KVM_CAP_ARM_VM_IPA_SIZE: 48})
    return _FakeKvm


def _options(chunk, **changes) -> DirtyLogOptions:
    return DirtyLogOptions(bytes_per_vcpu=4 * MIB, iterations=1, eager_split_chunk=chunk, **changes)


def test_arm64_sets_the_chunk_before_the_first_memslot(fake_kvm):
    fake_kvm.caps[uapi.KVM_CAP_ARM_SUPPORTED_BLOCK_SIZES] = ARM64_BLOCK_SIZES
    with pytest.raises(_Stop) as stopped:
        dirtylog.run_dirty_log(_options(2 * MIB, log_mode="get"), backend=Arm64Backend())
    calls = fake_kvm.calls
    eager = calls.index(("enable_cap", uapi.KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE, 2 * MIB))
    first_slot = next(i for i, call in enumerate(calls) if call[0] == "set_user_memory_region")
    assert eager < first_slot
    assert [call[1] for call in calls if call[0] == "set_user_memory_region"] == [0, 1]  # system slot, test slot
    layout = stopped.value.layout
    assert layout["eager_split_chunk"] == 2 * MIB  # read back from KVM_CHECK_EXTENSION on the VM
    assert layout["options"]["eager_split_chunk"] == 2 * MIB
    assert layout["kvm_caps"]["arm_supported_block_sizes"] == ARM64_BLOCK_SIZES


def test_arm64_zero_turns_eager_splitting_off_explicitly(fake_kvm):
    fake_kvm.caps[uapi.KVM_CAP_ARM_SUPPORTED_BLOCK_SIZES] = ARM64_BLOCK_SIZES
    with pytest.raises(_Stop) as stopped:
        dirtylog.run_dirty_log(_options(0), backend=Arm64Backend())
    assert ("enable_cap", uapi.KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE, 0) in fake_kvm.calls
    assert stopped.value.layout["eager_split_chunk"] == 0


def test_arm64_without_the_option_leaves_kvm_alone(fake_kvm):
    with pytest.raises(_Stop) as stopped:
        dirtylog.run_dirty_log(_options(None), backend=Arm64Backend())
    assert not any(call[1] == uapi.KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE for call in fake_kvm.calls if len(call) > 1)
    assert stopped.value.layout["eager_split_chunk"] is None


@pytest.mark.parametrize(
    "sizes,chunk,message",
    [
        (0, 2 * MIB, "does not offer KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE"),
        (ARM64_BLOCK_SIZES, 64 * 1024, r"64K is not a stage-2 block size .*: 4K, 2M, 1G; 0 turns"),
        ((1 << 16) | (1 << 29), 2 * MIB, r"2M is not a stage-2 block size .*: 64K, 512M;"),  # a 64 KiB-granule host
    ],
)
def test_arm64_refuses_unsupported_sizes_before_creating_the_vm(fake_kvm, sizes, chunk, message):
    fake_kvm.caps[uapi.KVM_CAP_ARM_SUPPORTED_BLOCK_SIZES] = sizes
    with pytest.raises(WorkloadError, match=message):
        dirtylog.run_dirty_log(_options(chunk), backend=Arm64Backend())
    assert fake_kvm.calls == []


def test_x86_refuses_before_creating_the_vm(fake_kvm, tmp_path):
    param = tmp_path / "eager_page_split"
    param.write_text("N\n")
    with pytest.raises(WorkloadError, match=r"kvm.eager_page_split module parameter \(currently N;"):
        dirtylog.run_dirty_log(_options(2 * MIB), backend=X86Backend(eager_page_split_param=param))
    assert fake_kvm.calls == []


def test_configure_vm_runs_before_the_first_memslot(fake_kvm):
    """The x86 path is otherwise unchanged: no chunk size, configure_vm (a no-op there) before any memslot."""

    class Recording(X86Backend):
        def configure_vm(self, vm, spec):
            fake_kvm.calls.append(("configure_vm",))

    with pytest.raises(_Stop):
        dirtylog.run_dirty_log(_options(None), backend=Recording())
    names = [call[0] for call in fake_kvm.calls]
    assert names[:2] == ["create_vm", "enable_cap"] and names.index("configure_vm") < names.index("set_user_memory_region")
