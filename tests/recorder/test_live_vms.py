"""Attaching to QEMUs that already run: by ``--pid qemu``, by ``-name``, by pid, and two with ``--all-vms``.

Each QEMU runs the hand-made guest (tests/recorder/qemu_guest.py), started paused (``-S``): the QEMU
process, its KVM VM and vCPU already exist when the recorder resolves and attaches (what a user attaching
to a running VM meets); the monitor's ``cont`` then runs SeaBIOS and the guest's own start, which KVM
emulates here (guest page-table walks of its code at 1 MiB), until it drops to CPL3. The recording stops
once the monitor shows every guest at CPL3. Whether the CPL3 loop's writes then fault (walks in the test
region) varies between runs of this host's KVM backend (seen both ways with the probes attached or
not), so the checks rest on what every run has: walks, KVM_RUN and MMU events, each from the VM's own
threads.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.livecheck import skip_or_fail
from tests.recorder.test_live import _need
from tracekit.analysis.analyze import analyze_capture
from tracekit.analysis.vms import VmCapture, select_vm
from tracekit.capture import open_capture
from tracekit.errors import UsageError
from tracekit.recorder.kvm_ioctls import KVM_RUN
from tracekit.recorder.session import RecordConfig, record
from tracekit.recorder.target import kvm_fds, kvm_processes, resolve_target

pytestmark = [pytest.mark.live, pytest.mark.slow]

class Qemu:
    """A paused QEMU running the hand-made guest, with a monitor socket."""

    def __init__(self, directory: Path, name: str):
        from tests.recorder.qemu_guest import build_image

        qemu = shutil.which("qemu-system-x86_64")
        if qemu is None:
            skip_or_fail("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
        directory.mkdir(parents=True, exist_ok=True)
        image = directory / "guest.bin"
        image.write_bytes(build_image())
        self.name = name
        self.monitor = directory / "monitor.sock"
        self.proc = subprocess.Popen(
            [qemu, "-enable-kvm", "-cpu", "qemu64,-cx16", "-m", "128M", "-kernel", str(image), "-display", "none",
             "-nodefaults", "-no-reboot", "-name", f"guest={name},debug-threads=on", "-S",
             "-monitor", f"unix:{self.monitor},server,nowait"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and kvm_fds(self.pid) != (1, 1):  # its VM and its vCPU exist
            assert self.proc.poll() is None, "QEMU exited at start"
            time.sleep(0.05)

    @property
    def tids(self) -> set[int]:
        """Its threads now (QEMU still runs when the rows are checked)."""
        return {int(t) for t in os.listdir(f"/proc/{self.pid}/task")}

    def command(self, text: str) -> str:
        """Send one monitor command; its output (echo included)."""
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        sock.connect(str(self.monitor))
        try:
            sock.recv(4096)  # the banner
            sock.sendall(text.encode() + b"\n")
            time.sleep(0.3)
            return sock.recv(1 << 16).decode(errors="replace")
        finally:
            sock.close()

    def cont(self) -> None:
        self.command("cont")

    def at_cpl3(self) -> bool:
        return "CPL=3" in self.command("info registers")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def qemus(tmp_path):
    started: list[Qemu] = []

    def start(name: str) -> Qemu:
        vm = Qemu(tmp_path / name, name)
        started.append(vm)
        return vm

    yield start
    for vm in started:
        vm.stop()


def _check_vm_rows(cap, vm: Qemu) -> None:
    """Every row of ``vm``'s pid comes from one of its threads; its guest's start was walked (its code at
    1 MiB), on its vCPU thread, inside KVM_RUN calls of that thread."""
    from tests.recorder.qemu_guest import LOAD_ADDR

    tids = vm.tids
    for family in ("walk", "walk_element", "mmu", "ioctl_summary"):
        frame = cap.dataframe(family, ["pid", "tid"])
        mine = frame[frame.pid == vm.pid]
        assert set(mine.tid) <= tids, f"{family}: rows of pid {vm.pid} from threads that are not its own"
    vcpu = [t["tid"] for t in cap.manifest["target"]["threads"] if t["comm"] == "CPU 0/KVM" and t["tid"] in tids]
    assert len(vcpu) == 1
    walks = cap.dataframe("walk", ["pid", "tid", "addr"])
    walks = walks[walks.pid == vm.pid]
    assert set(walks.tid) == set(vcpu) and ((walks.addr >= LOAD_ADDR) & (walks.addr < LOAD_ADDR + 0x100000)).sum() > 0
    runs = cap.dataframe("ioctl_summary", ["pid", "tid", "cmd", "count"])
    assert runs[(runs.pid == vm.pid) & (runs.cmd == KVM_RUN) & (runs.tid == vcpu[0])]["count"].sum() > 0


def _record(out: Path, vms: list[Qemu], **config) -> object:
    """Record from before ``cont`` until every guest runs at CPL3 (then 1 s more; SIGINT, at most 150 s)."""
    done = threading.Event()

    def stop_at_cpl3() -> None:
        while not done.wait(0.5):
            if all(vm.at_cpl3() for vm in vms):
                time.sleep(1.0)
                break
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    def started() -> None:
        for vm in vms:
            vm.cont()
        threading.Thread(target=stop_at_cpl3, daemon=True).start()

    try:
        return record(RecordConfig(output=out, backend="bcc", duration=150, **config), stream=None, on_attached=started)
    finally:
        done.set()


@pytest.mark.parametrize("how", ["prefix", "guest name", "pid"])
def test_attach_to_a_running_qemu(qemus, tmp_path, how):
    _need("bcc")
    vm = qemus(f"tk-vms-{os.getpid()}-{how.replace(' ', '')}")
    spec = {"prefix": "qemu", "guest name": vm.name, "pid": str(vm.pid)}[how]
    if how == "prefix":
        others = [t for t in kvm_processes() if t.pid != vm.pid and t.comm.startswith("qemu")]
        if others:  # another QEMU with a KVM VM on this shared host: 'qemu' is ambiguous, as it should be
            with pytest.raises(UsageError, match=rf"processes match 'qemu'; choose one(.|\n)*pid {vm.pid} "
                                                 rf"qemu-system-x86 guest {vm.name}, 1 vCPU, 128 MiB"):
                resolve_target("qemu")
            pytest.skip(f"other QEMUs hold KVM VMs here ({', '.join(str(t.pid) for t in others)}): "
                        "'qemu' is ambiguous (the error listing ours was checked)")
    out = tmp_path / "qemu.tkcap"
    summary = _record(out, [vm], pid_specs=(spec,))
    assert summary.target["pids"] == [vm.pid] and summary.stop_reason == "SIGINT"  # the guest reached CPL3
    cap = open_capture(out)
    target = cap.manifest["target"]
    assert target["pids"] == [vm.pid] and target["name"] == vm.name
    assert target["vms"] == [{"pid": vm.pid, "comm": "qemu-system-x86", "name": vm.name, "vcpus": 1,
                              "memory": 128 << 20}]
    assert set(cap.dataframe("walk", ["pid"]).pid) == {vm.pid}
    _check_vm_rows(cap, vm)
    assert cap.lost_total() == 0


def test_all_vms_records_two_qemus_each_rows_its_own(qemus, tmp_path):
    _need("bcc")
    vms = [qemus(f"tk-vms-{os.getpid()}-{i}") for i in (1, 2)]
    out = tmp_path / "all.tkcap"
    summary = _record(out, vms, all_vms=True)
    assert {vm.pid for vm in vms} <= set(summary.target["pids"])
    cap = open_capture(out)
    listed = {vm["pid"]: vm for vm in cap.manifest["target"]["vms"]}
    for vm in vms:
        assert listed[vm.pid]["name"] == vm.name and listed[vm.pid]["vcpus"] == 1
        _check_vm_rows(cap, vm)
    for vm in vms:  # each VM cut out by its guest name: only its walks, all of its regions
        cut = VmCapture(cap, select_vm(cap.manifest, vm.name))
        assert set(cut.dataframe("walk", ["pid"]).pid) == {vm.pid}
        result = analyze_capture(cut)
        assert result.tables["walk_depth"]["walks"].sum() == cut.rows("walk")
    assert cap.lost_total() == 0


def test_a_process_without_a_kvm_vm_is_refused(tmp_path):
    with pytest.raises(UsageError, match=r"^pid 1 \(\S+\) holds no KVM VM"):
        record(RecordConfig(output=tmp_path / "init.tkcap", pid_specs=("1",), backend="bcc", duration=1), stream=None)
    assert not (tmp_path / "init.tkcap").exists()
