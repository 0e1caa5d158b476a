"""Target resolution, vCPU thread names and the gated command start (no root needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.livecheck import ignores_sigterm
from tracekit.errors import UsageError
from tracekit.recorder import target as target_mod
from tracekit.recorder.target import (list_threads, qemu_guest_name, qemu_memory, resolve_target, resolve_targets,
                                      spawn_gated, vcpu_index)


@pytest.mark.parametrize("argv,name", [
    (["qemu-system-x86_64", "-name", "vm1", "-m", "64"], "vm1"),
    (["qemu-system-x86_64", "-name", "guest=db,debug-threads=on"], "db"),
    (["qemu-system-x86_64", "-name", "web,process=qemu-web"], "web"),
    (["qemu-system-x86_64", "--name=alpha"], "alpha"),
    (["qemu-system-x86_64", "-m", "64"], None),
])
def test_qemu_guest_name(argv, name):
    assert qemu_guest_name(argv) == name


@pytest.mark.parametrize("thread,index", [("CPU 0/KVM", 0), ("CPU 12/KVM", 12), ("tk-vcpu-3", 3),
                                          ("qemu-system-x86", None), ("CPU x/KVM", None)])
def test_vcpu_index(thread, index):
    assert vcpu_index(thread) == index


@pytest.fixture
def named_sleepers():
    """Two processes named tk-test-sleep (one of them also a QEMU-style -name guest)."""
    code = "import time; time.sleep(30)"
    procs = [subprocess.Popen(["bash", "-c", f"exec -a tk-test-sleep {sys.executable} -c '{code}' -name g{i}"])
             for i in range(2)]
    time.sleep(0.2)
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def test_resolve_by_pid_name_and_guest(named_sleepers):
    pid = named_sleepers[0].pid
    assert resolve_target(str(pid)).pid == pid
    target = resolve_target("g1")  # the -name value in its command line
    assert target.pid == named_sleepers[1].pid and target.guest == "g1"
    with pytest.raises(UsageError, match=r"2 processes match 'tk-test-sleep'; .*\n  pid \d+ \S+ guest g0, no KVM VM\n  pid"):
        resolve_target("tk-test-sleep")
    with pytest.raises(UsageError, match="no process named"):
        resolve_target("tk-no-such-process")
    with pytest.raises(UsageError, match="no process with pid"):
        resolve_target("999999999")


def test_a_thread_id_resolves_to_its_process():
    import threading

    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: (ready.set(), stop.wait()))
    thread.start()
    ready.wait()
    try:
        assert resolve_target(str(thread.native_id)).pid == os.getpid()
    finally:
        stop.set()
        thread.join()


def test_list_threads_marks_vcpus():
    import threading

    ready, stop = threading.Event(), threading.Event()

    def body():
        import ctypes

        ctypes.CDLL(None).prctl(15, b"tk-vcpu-7", 0, 0, 0)
        ready.set()
        stop.wait()

    thread = threading.Thread(target=body)
    thread.start()
    ready.wait()
    try:
        threads = list_threads(os.getpid())
        assert {"pid": os.getpid(), "tid": thread.native_id, "comm": "tk-vcpu-7", "vcpu": 7} in threads
        assert any(t["tid"] == os.getpid() for t in threads)  # listed by tid: thread ids wrap, the main one need not be first
    finally:
        stop.set()
        thread.join()


def test_gated_child_runs_only_after_release(tmp_path):
    marker = tmp_path / "ran"
    child = spawn_gated([sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"])
    time.sleep(0.3)
    assert not marker.exists() and child.poll() is None
    child.release()
    assert child.wait(10) == 0 and marker.exists()


def test_gated_child_never_runs_when_not_released(tmp_path):
    marker = tmp_path / "ran"
    child = spawn_gated([sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"])
    child.terminate()  # closes the gate without the go byte
    assert child.returncode == 125 and not marker.exists()


def test_gated_child_unknown_command():
    with pytest.raises(UsageError, match="command not found"):
        spawn_gated(["tk-no-such-command-xyz"])


def _fake_process(root, pid, comm, argv, fds=(), age_s=1000.0):
    """A /proc/PID directory: comm, cmdline, status, stat (started age_s before uptime 5000 s) and fd links."""
    d = root / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "comm").write_text(comm + "\n")
    (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    (d / "status").write_text(f"Name:\t{comm}\nTgid:\t{pid}\n")
    start_ticks = int((5000.0 - age_s) * os.sysconf("SC_CLK_TCK"))
    (d / "stat").write_text(f"{pid} ({comm}) S " + " ".join(["0"] * 18) + f" {start_ticks} 0 0\n")
    for number, link in enumerate(fds, start=3):
        os.symlink(link, d / "fd" / str(number))


def _vm_fds(vcpus):
    return ["/dev/kvm", "anon_inode:kvm-vm"] + [f"anon_inode:kvm-vcpu:{i}" for i in range(vcpus)]


@pytest.fixture
def fake_proc(tmp_path, monkeypatch):
    """A fake /proc: two QEMUs holding VMs, a QEMU guest agent, a kernel thread, init and a sleeper."""
    (tmp_path / "uptime").write_text("5000.00 9000.00\n")
    _fake_process(tmp_path, 1, "systemd", ["/sbin/init"], ["/dev/null"])
    _fake_process(tmp_path, 2, "kthreadd", [])
    _fake_process(tmp_path, 300, "qemu-ga", ["/usr/bin/qemu-ga"], ["/dev/vport0p1"])
    _fake_process(tmp_path, 410, "qemu-system-x86", ["/usr/bin/qemu-system-x86_64", "-name", "guest=db,debug-threads=on",
                                                     "-m", "2G"], _vm_fds(2))
    _fake_process(tmp_path, 420, "qemu-kvm", ["/usr/libexec/qemu-kvm", "-name", "web", "-m", "size=512M,maxmem=1G"],
                  _vm_fds(4))
    _fake_process(tmp_path, 500, "sleep", ["sleep", "100"])
    monkeypatch.setattr(target_mod, "PROC", tmp_path)
    return tmp_path


def test_a_unique_prefix_among_vm_holders_names_the_vm(fake_proc):
    (fake_proc / "420" / "fd" / "4").unlink()  # qemu-kvm closes its VM: only one VM holder is left
    assert resolve_target("qemu").pid == 410  # qemu-ga starts with "qemu" too but holds no VM
    assert resolve_target("qemu-system").pid == 410


def test_exact_and_guest_names_win_over_prefixes(fake_proc):
    assert resolve_target("qemu-system-x86_64").pid == 410  # argv[0]'s basename
    assert resolve_target("qemu-kvm").pid == 420
    assert resolve_target("db").pid == 410 and resolve_target("web").pid == 420
    assert resolve_target("qemu-ga").pid == 300  # an exact name that holds no VM is found, then refused
    with pytest.raises(UsageError, match=r"^pid 300 \(qemu-ga\) holds no KVM VM"):
        resolve_targets(["qemu-ga"])


def test_several_vms_are_listed_with_how_to_choose(fake_proc):
    with pytest.raises(UsageError) as error:
        resolve_target("qemu")
    lines = str(error.value).splitlines()
    assert lines[0].startswith("2 processes match 'qemu'; choose one with --pid PID") and "--all-vms" in lines[0]
    assert lines[1:] == ["  pid 410 qemu-system-x86 guest db, 2 vCPUs, 2 GiB",
                         "  pid 420 qemu-kvm guest web, 4 vCPUs, 512 MiB"]


def test_init_kernel_threads_and_plain_processes_hold_no_vm(fake_proc):
    with pytest.raises(UsageError, match=r"^pid 1 \(systemd\) holds no KVM VM \(a process "):
        resolve_targets(["1"])
    with pytest.raises(UsageError, match=r"^pid 2 \(kthreadd\) holds no KVM VM \(a kernel thread"):
        resolve_targets(["2"])
    with pytest.raises(UsageError, match="no process named 'nope'"):
        resolve_targets(["nope"])


def test_repeated_pids_and_all_vms(fake_proc):
    chosen = resolve_targets(["db", "410", "web"])
    assert [(t.pid, t.vcpus, t.memory) for t in chosen] == [(410, 2, 2 << 30), (420, 4, 512 << 20)]
    assert [t.pid for t in resolve_targets([], all_vms=True)] == [410, 420]
    assert [t.to_json() for t in resolve_targets(["web"])] == [
        {"pid": 420, "comm": "qemu-kvm", "name": "web", "vcpus": 4, "memory": 512 << 20}]


def test_all_vms_without_any_vm_says_so(fake_proc):
    for pid in (410, 420):
        (fake_proc / str(pid) / "fd" / "4").unlink()
    with pytest.raises(UsageError, match="--all-vms: no process holds a KVM VM"):
        resolve_targets([], all_vms=True)


def test_a_starting_vmm_gets_time_to_create_its_vm(fake_proc):
    import threading

    _fake_process(fake_proc, 600, "tracekit", ["tracekit", "workload", "dirty-log"], ["/dev/kvm"], age_s=0.5)
    timer = threading.Timer(0.3, os.symlink, ("anon_inode:kvm-vm", fake_proc / "600" / "fd" / "9"))
    timer.start()
    try:
        assert [t.pid for t in resolve_targets(["600"])] == [600]
    finally:
        timer.join()


@pytest.mark.parametrize("argv,size", [
    (["qemu-system-x86_64", "-m", "64"], 64 << 20),
    (["qemu-system-x86_64", "-m", "1G"], 1 << 30),
    (["qemu-system-x86_64", "-m", "size=3g,slots=2,maxmem=8G"], 3 << 30),
    (["qemu-system-x86_64", "-m=256M"], 256 << 20),
    (["qemu-system-x86_64"], 128 << 20),
    (["firecracker", "--api-sock", "x"], None),
    (["qemu-system-x86_64", "-m", "lots"], None),
])
def test_qemu_memory(argv, size):
    assert qemu_memory(argv) == size


_PARENT = """
import sys, time
from tracekit.recorder.target import spawn_gated
child = spawn_gated(["sleep", "60"])
if sys.argv[1] == "release":
    child.release()
print(child.pid, flush=True)
time.sleep(60)
"""


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` no longer runs (gone, or a zombie not yet reaped by init)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("released", ["release", "hold"])
def test_a_gated_child_dies_with_a_sigkilled_recorder(released):
    """The recorder's parent process is SIGKILLed (no cleanup runs): its command must not run on."""
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, released], stdout=subprocess.PIPE)
    child_pid = int(parent.stdout.readline())
    try:
        assert not _gone(child_pid, 0.3)
        parent.kill()
        parent.wait()
        assert _gone(child_pid), f"command {child_pid} still runs after its recorder was killed"
    finally:
        if not _gone(child_pid, 0):
            os.kill(child_pid, 9)


def test_terminate_kills_at_once_when_cut_short():
    child = spawn_gated([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                         "print(flush=True); time.sleep(60)"], stdout_to_stderr=False)
    child.release()
    deadline = time.monotonic() + 60
    while not ignores_sigterm(child.pid) and time.monotonic() < deadline:  # its SIGTERM set aside, however slow its start
        time.sleep(0.02)
    child.terminate(grace=30.0, cut_short=lambda: True)
    assert child.returncode == -9


def _task(proc, pid: int, tid: int, comm: str) -> None:
    folder = proc / str(pid) / "task" / str(tid)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comm").write_text(comm + "\n")


def test_a_thread_watch_reads_new_threads_and_renames_but_not_every_name_every_time(tmp_path):
    from tracekit.recorder.target import ThreadWatch

    _task(tmp_path, 10, 10, "qemu-system-x86")
    _task(tmp_path, 10, 11, "CPU 0/KVM")
    watch = ThreadWatch([10], recheck_s=3600, proc=tmp_path)
    seen, settling = watch.refresh()
    assert [t["tid"] for t in seen] == [10, 11] and settling
    _task(tmp_path, 10, 10, "renamed")
    seen, settling = watch.refresh()  # new at the refresh before: read once more, named just after they start
    assert [(t["tid"], t["comm"]) for t in seen] == [(10, "renamed"), (11, "CPU 0/KVM")] and settling
    _task(tmp_path, 10, 10, "again")
    assert watch.refresh() == ([], False)  # nothing new: no name read
    _task(tmp_path, 10, 12, "worker")  # a thread created later (after attach) is seen at the next refresh
    _task(tmp_path, 10, 11, "not a vcpu name")
    seen, settling = watch.refresh()
    assert [(t["tid"], t["comm"]) for t in seen] == [(12, "worker")] and settling
    watch.refresh()
    seen, _ = watch.refresh(full=True)  # every name that gives no vCPU index; a vCPU's stays
    assert [(t["tid"], t["comm"]) for t in seen] == [(10, "again"), (12, "worker")]
    assert watch.vcpus() == {10: None, 11: 0, 12: None}
    import shutil

    last_of_12 = watch.seen[12][1]
    shutil.rmtree(tmp_path / "10" / "task" / "12")
    watch.refresh()
    assert watch.vcpus() == {10: None, 11: 0}  # gone threads leave
    assert watch.seen[12][1] == last_of_12 < watch.seen[10][1]  # its last listing kept
    assert watch.seen[10][0] < watch.seen[12][0] <= last_of_12  # first listings: 10 at the first refresh
    watch.follow([10, 20])
    _task(tmp_path, 20, 20, "tk-vcpu-3")
    assert [t["tid"] for t in watch.refresh()[0]] == [20] and watch.vcpus()[20] == 3


def test_a_thread_watch_rereads_names_at_its_slower_cadence(tmp_path):
    from tracekit.recorder.target import ThreadWatch

    _task(tmp_path, 10, 10, "tracekit")
    watch = ThreadWatch([10], recheck_s=0.0, proc=tmp_path)
    watch.refresh()
    watch.refresh()
    _task(tmp_path, 10, 10, "dirty_log_perf_")  # exec'd: renamed without a new thread
    assert [t["comm"] for t in watch.refresh()[0]] == ["dirty_log_perf_"]
