"""vCPU threads identified by the vCPU fd they issue KVM_RUN on (tracekit.recorder.vcpus)."""

from __future__ import annotations

import os

import pyarrow as pa

from tracekit.recorder.kvm_ioctls import KVM_CREATE_VCPU, KVM_GET_DIRTY_LOG, KVM_RUN
from tracekit.recorder.vcpus import VcpuFds, vcpu_fd_index


def test_vcpu_fd_links():
    assert vcpu_fd_index("anon_inode:kvm-vcpu:3") == 3
    assert vcpu_fd_index("anon_inode:kvm-vm") is None
    assert vcpu_fd_index("/dev/kvm") is None
    assert vcpu_fd_index("anon_inode:kvm-vcpu:x") is None


def test_scan_reads_the_fd_links_of_each_process(tmp_path):
    for pid, links in ((10, {"3": "/dev/kvm", "4": "anon_inode:kvm-vm", "5": "anon_inode:kvm-vcpu:0",
                             "9": "anon_inode:kvm-vcpu:1"}), (20, {"5": "anon_inode:kvm-vcpu:7"})):
        folder = tmp_path / str(pid) / "fd"
        folder.mkdir(parents=True)
        for fd, target in links.items():
            os.symlink(target, folder / fd)
    fds = VcpuFds([10, 20, 30], proc=str(tmp_path))  # 30: gone
    fds.scan()
    assert fds.fds == {(10, 5): 0, (10, 9): 1, (20, 5): 7}
    assert fds.manifest()["fds"][0] == {"pid": 10, "fd": 5, "vcpu": 0}


def _ioctl(rows: list[tuple]) -> pa.Table:
    names = ["pid", "tid", "cmd", "fd", "ret", "arg"]
    return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})


def test_kvm_run_names_the_thread_by_its_fd_whatever_the_thread_is_called(tmp_path):
    fds = VcpuFds([10], proc=str(tmp_path))
    fds.observe("ioctl", _ioctl([(10, 10, KVM_CREATE_VCPU, 4, 7, 0), (10, 10, KVM_CREATE_VCPU, 4, 8, 1),
                                 (10, 10, KVM_GET_DIRTY_LOG, 4, 0, 0), (10, 10, KVM_CREATE_VCPU, 4, -17, 2)]))
    summary = pa.table({"pid": [10, 10, 10, 10], "tid": [11, 11, 12, 13], "cmd": [KVM_RUN] * 4, "fd": [7, 7, 8, 9]})
    fds.observe("ioctl_summary", summary)
    fds.observe("walk", pa.table({"pid": [10], "tid": [14], "cmd": [KVM_RUN], "fd": [7]}))  # not an ioctl family
    assert fds.identify() == {11: 0, 12: 1}  # fd 9 was never seen as a vCPU fd
    threads = {t: {"tid": t, "comm": "dirty_log_perf_", "vcpu": None} for t in (10, 11, 12, 13)}
    threads[13]["vcpu"] = 5  # named as a vCPU (CPU 5/KVM): kept, as a fallback
    fds.mark_threads(threads)
    assert [(t["vcpu"], t.get("vcpu_from")) for t in threads.values()] == [
        (None, None), (0, "KVM_RUN fd"), (1, "KVM_RUN fd"), (5, "thread name")]


def test_a_reused_fd_keeps_the_newest_vcpu_and_counts_the_conflict(tmp_path):
    fds = VcpuFds([10], proc=str(tmp_path))
    fds.observe("ioctl", _ioctl([(10, 10, KVM_CREATE_VCPU, 4, 7, 0), (10, 10, KVM_CREATE_VCPU, 4, 7, 3)]))
    assert fds.fds == {(10, 7): 3} and fds.conflicts == 1


def test_scan_finds_this_process_vcpu_fd():
    """A real vCPU fd of this process, when /dev/kvm is usable (else nothing to find)."""
    import fcntl

    import pytest

    from tests.livecheck import need_kvm

    need_kvm()
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        vm = fcntl.ioctl(kvm, 0xAE01, 0)  # KVM_CREATE_VM
        try:
            vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 2)
            fds = VcpuFds([os.getpid()])
            fds.scan()
            assert fds.fds.get((os.getpid(), vcpu)) == 2
            os.close(vcpu)
        finally:
            os.close(vm)
    except OSError as error:
        pytest.skip(f"KVM refused a VM or vCPU here: {error}")
    finally:
        os.close(kvm)
