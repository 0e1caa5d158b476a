"""Target resolution, vCPU thread names and the gated command start (no root needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tracekit.errors import UsageError
from tracekit.recorder.target import list_threads, qemu_guest_name, resolve_target, spawn_gated, vcpu_index


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
    with pytest.raises(UsageError, match=r"2 processes match 'tk-test-sleep': pid \d+ \S+ guest g0; pid"):
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
        assert {"tid": thread.native_id, "comm": "tk-vcpu-7", "vcpu": 7} in threads
        assert threads[0]["tid"] == os.getpid()
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
