"""A vCPU asleep inside KVM_RUN for the whole window (a halted guest), recorded by pid on both backends.

It makes no exit and gets no timer tick, so only the /proc reading at the arming finds it: the capture
must still hold its KVM_RUN, counted from the window's start to its end, marked began_before and
unfinished, with its thread and vCPU fd.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.recorder.test_live import _need
from tracekit.capture import open_capture
from tracekit.recorder.inflight import blocked_kvm_ioctls
from tracekit.recorder.kvm_ioctls import KVM_RUN
from tracekit.recorder.session import RecordConfig, record

pytestmark = [pytest.mark.live, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _halted_guest() -> tuple[subprocess.Popen, int, int]:
    """The halted guest's process, vCPU fd and vCPU thread, once that thread sleeps in KVM_RUN."""
    guest = subprocess.Popen([sys.executable, "-m", "tests.recorder.kvm_guest", "halt"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    word, fd, tid = guest.stdout.readline().split()
    assert word == "ready", guest.stderr.read()
    deadline = time.monotonic() + 30
    while int(tid) not in blocked_kvm_ioctls([guest.pid]):
        assert guest.poll() is None and time.monotonic() < deadline, guest.stderr.read()
        time.sleep(0.02)
    return guest, int(fd), int(tid)


@pytest.mark.parametrize("backend", ["bcc", "tracefs"])
def test_a_halted_vcpu_in_kvm_run_is_recorded_through_the_window(backend, tmp_path):
    _need(backend)
    guest, fd, tid = _halted_guest()
    try:
        cap = _record(guest, tmp_path, backend)
        assert guest.poll() is None and tid in blocked_kvm_ioctls([guest.pid])  # it never left KVM_RUN
    finally:
        _stop(guest)
    window = cap.manifest["window"]
    assert _partial(cap) == (1, 1, 1)
    [run] = cap.dataframe("ioctl_summary").query(f"tid == {tid}").to_dict("records")
    assert (run["cmd"], run["fd"], run["count"], run["partial"], run["errors"]) == (KVM_RUN, fd, 1, 1, 0)
    assert run["total_ns"] == run["max_ns"] == window["stop_ns"] - window["start_ns"]
    assert not cap.rows("ioctl")  # no other call: the guest never exits
    assert {"pid": guest.pid, "fd": fd, "vcpu": 0} in cap.manifest["target"]["vcpu_fds"]["fds"]
    [thread] = [t for t in cap.manifest["target"]["threads"] if t["tid"] == tid]
    assert thread["vcpu"] == 0


@pytest.mark.parametrize("backend", ["bcc", "tracefs"])
def test_a_halted_vcpu_kicked_in_the_window_completes_its_call_with_its_command(backend, tmp_path):
    """Kicked once the window is open, the vCPU's KVM_RUN returns EINTR (an exit whose entry came before the
    window: KVM_RUN on its fd, began_before) and is entered again (then unfinished at the end)."""
    _need(backend)
    guest, fd, tid = _halted_guest()
    try:
        cap = _record(guest, tmp_path, backend, on_attached=lambda: os.kill(guest.pid, signal.SIGUSR1))
    finally:
        _stop(guest)
    window = cap.manifest["window"]
    assert _partial(cap) == (1, 1, 1)
    runs = cap.dataframe("ioctl_summary").query(f"tid == {tid}").sort_values("errno").to_dict("records")
    assert [(r["cmd"], r["fd"], r["errno"], r["count"], r["errors"], r["partial"]) for r in runs] == [
        (KVM_RUN, fd, 0, 1, 0, 1), (KVM_RUN, fd, errno.EINTR, 1, 1, 1)]
    assert sum(r["total_ns"] for r in runs) <= window["stop_ns"] - window["start_ns"]
    assert cap.manifest["partial"]["ioctl_exits_without_entry"] == 0


def _record(guest: subprocess.Popen, tmp_path: Path, backend: str, **kwargs):
    out = tmp_path / "halt.tkcap"
    record(RecordConfig(output=out, pid_spec=str(guest.pid), duration=1.0, backend=backend, families=("ioctl",)),
           stream=None, **kwargs)
    return open_capture(out)


def _partial(cap) -> tuple[int, int, int]:
    partial = cap.manifest["partial"]
    return partial["ioctl_in_flight_at_start"], partial["ioctl_began_before"], partial["ioctl_unfinished"]


def _stop(guest: subprocess.Popen) -> None:
    guest.kill()
    guest.wait(timeout=30)
