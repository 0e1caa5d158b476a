"""Live recordings on this host, checked against ground truth (root, /dev/kvm, tracefs; bcc for bcc).

The built-in workload (``tracekit workload dirty-log``) records every ioctl it issues with
CLOCK_MONOTONIC entry/exit times, its vCPU threads and the number of test-region write faults a
shadow-paging host takes; the recorder's capture must agree with that record.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.livecheck import interrupt_and_reap, need_bcc, need_kvm, need_tracefs, need_tracepoint
from tracekit.capture import open_capture
from tracekit.recorder.kvm_ioctls import KVM_RUN
from tracekit.recorder.session import RecordConfig, record
from tracekit.recorder.backend_tracefs import INSTANCE_PREFIX

pytestmark = [pytest.mark.live, pytest.mark.slow]  # each records a real workload (bcc compiles for 10-30 s)
TRACEKIT = str(Path(sys.executable).with_name("tracekit"))
INSTANCES = Path("/sys/kernel/tracing/instances")
WALK_TRACEPOINTS = ("kvmmmu:kvm_mmu_pagetable_walk", "kvmmmu:kvm_mmu_paging_element", "kvmmmu:kvm_mmu_walker_error")


def _need(backend: str) -> None:
    need_kvm()
    need_tracepoint("kvmmmu", "kvm_mmu_pagetable_walk")
    need_tracepoint("syscalls", "sys_enter_ioctl")
    need_tracepoint("lock", "contention_begin")
    if backend == "bcc":
        need_bcc()
        from tracekit.capabilities import check_kernel_headers

        headers = check_kernel_headers()
        if not headers.ok:
            from tests.livecheck import skip_or_fail

            skip_or_fail(f"bcc needs kernel headers: {headers.fix}")
    if not Path(TRACEKIT).exists():
        from tests.livecheck import skip_or_fail

        skip_or_fail("the tracekit console script is not installed next to this Python (pip install -e .)")


def _instances(pid: int | None = None) -> set[str]:
    """Names of the tracefs instances recorder ``pid`` (default: this process) owns."""
    prefix = f"{INSTANCE_PREFIX}{pid or os.getpid()}-"
    return {p.name for p in INSTANCES.iterdir() if p.name.startswith(prefix)} if INSTANCES.is_dir() else set()


def _uprobes(pid: int) -> set[str]:
    """``group/event`` names of the ioctl-argument uprobes recorder ``pid`` defined (tracefs backend)."""
    events = INSTANCES.parent / "uprobe_events"
    text = events.read_text() if events.is_file() else ""
    return {line.split()[0].split(":", 1)[1] for line in text.splitlines()
            if line.split() and line.split()[0].split(":", 1)[-1].startswith(f"tkio_{pid}/")}


@pytest.fixture(scope="module", params=["bcc", "tracefs"])
def workload_capture(request, tmp_path_factory):
    """One recording of a 16 MiB, 3-iteration workload run per backend."""
    backend = request.param
    _need(backend)
    out = tmp_path_factory.mktemp(backend) / "wl.tkcap"
    summary = record(RecordConfig(output=out, backend=backend, duration=60,
                                  command=[TRACEKIT, "workload", "dirty-log", "-i", "3", "-b", "16M"]),
                     stream=None)
    assert not _instances(), "the tracefs instance was left behind"
    return backend, summary, open_capture(out)


def test_stops_when_the_command_exits_cleanly(workload_capture):
    _, summary, cap = workload_capture
    assert summary.stop_reason == "command exited" and summary.command_exit == 0
    assert cap.manifest["status"] == "complete" and cap.manifest["workload"]["verified"] is not False


def test_ioctls_equal_the_workloads_own_log(workload_capture):
    """Every non-KVM_RUN ioctl of the layout, in order, with entry/exit inside the workload's own times."""
    _, _, cap = workload_capture
    layout = cap.manifest["workload"]
    issued = [i for i in layout["ioctls"] if i["request"] != KVM_RUN]
    got = cap.dataframe("ioctl").sort_values("ts_ns", kind="stable")
    assert list(got["cmd"]) == [i["request"] for i in issued]
    assert list(got["tid"]) == [i["tid"] for i in issued]
    assert list(got["ret"]) == [i["ret"] for i in issued]
    entry, exit_ = got["ts_ns"].to_numpy(), got["ts_ns"].to_numpy() + got["duration_ns"].to_numpy()
    assert np.all(entry >= [i["start_ns"] for i in issued]) and np.all(exit_ <= [i["end_ns"] for i in issued])
    assert np.all(got["duration_ns"] > 0)


def test_memslot_arguments_equal_the_workloads_own_log(workload_capture):
    """The region ioctls' slot, flags, guest_phys_addr and memory_size as the workload passed them: read in
    BPF by the bcc backend, by the libc ioctl uprobe under tracefs (which is gone after the recording)."""
    backend, _, cap = workload_capture
    issued = [i for i in cap.manifest["workload"]["ioctls"] if i["name"].startswith("KVM_SET_USER_MEMORY_REGION")]
    got = cap.dataframe("ioctl")
    got = got[got["cmd_name"].astype(str).str.startswith("KVM_SET_USER_MEMORY_REGION")].sort_values("ts_ns")
    columns = ["slot", "flags", "guest_phys_addr", "memory_size"]
    assert got[columns].astype("int64").values.tolist() == [[i["arg"][c] for c in columns] for i in issued]
    if backend == "tracefs":
        assert cap.manifest["family_notes"]["ioctl_args"].startswith("argument structs from a uprobe")
        assert f"tkio_{os.getpid()}/" not in Path("/sys/kernel/tracing/uprobe_events").read_text()


def test_kvm_run_is_aggregated_per_vcpu_thread(workload_capture):
    _, _, cap = workload_capture
    summary = cap.dataframe("ioctl_summary")
    vcpus = cap.manifest["workload"]["vcpus"]
    runs = summary[summary.cmd == KVM_RUN].groupby("tid")["count"].sum().to_dict()  # rows per (tid, fd, errno)
    assert runs == {v["tid"]: v["kvm_run_count"] for v in vcpus}


def test_vcpu_threads_are_named_in_the_manifest(workload_capture):
    _, _, cap = workload_capture
    threads = {t["tid"]: t for t in cap.manifest["target"]["threads"]}
    for v in cap.manifest["workload"]["vcpus"]:
        assert threads[v["tid"]]["vcpu"] == v["index"]


def test_the_threads_family_agrees_with_the_manifest(workload_capture):
    """The recorded ``threads`` family lists the manifest's threads (process, name, vCPU index and its source),
    the started command's main thread first seen before the window opened, held before its exec."""
    _, _, cap = workload_capture
    manifest = cap.manifest["target"]["threads"]
    assert cap.rows("threads") == len(manifest) > 0
    keys = ("tid", "pid", "comm", "vcpu", "vcpu_from")
    assert [tuple(t[k] for k in keys) for t in cap.threads()] == [tuple(t.get(k) for k in keys) for t in manifest]
    main = cap.manifest["target"]["pids"][0]
    threads = {t["tid"]: t for t in cap.threads()}
    assert [tid for tid, t in threads.items() if t["pre_exec"]] == [main]
    assert threads[main]["first_seen_ns"] < cap.manifest["window"]["start_ns"]
    for v in cap.manifest["workload"]["vcpus"]:
        seen = threads[v["tid"]]
        assert seen["vcpu"] == v["index"] and cap.manifest["window"]["start_ns"] < seen["first_seen_ns"]
        assert seen["first_seen_ns"] <= seen["last_seen_ns"] <= cap.manifest["stop_monotonic_ns"]


def test_walks_match_the_write_faults_of_the_test_region(workload_capture):
    """One 3-level software walk per test-region write fault (2 MiB guest pages: PML4, PDPT, PD)."""
    _, _, cap = workload_capture
    layout = cap.manifest["workload"]
    v = layout["vcpus"][0]
    walks = cap.dataframe("walk")
    mine = walks[(walks.addr >= v["gva_start"]) & (walks.addr < v["gva_end"])]
    assert len(mine) == layout["ground_truth"]["test_region_write_faults"]
    elements = cap.dataframe("walk_element")
    per_walk = elements[elements.walk_id.isin(mine.walk_id)].groupby("walk_id")
    assert per_walk.size().eq(3).all()
    assert set(per_walk["level"].apply(tuple)) == {(4, 3, 2)}
    assert set(per_walk["index"].apply(tuple)) == {(0, 1, 2)}


def test_mmu_events_cover_the_faults(workload_capture):
    _, _, cap = workload_capture
    mmu = cap.dataframe("mmu")
    requested = (mmu.event == "kvm_mmu_spte_requested").sum()
    assert requested >= cap.manifest["workload"]["ground_truth"]["test_region_write_faults"]


def test_set_spte_follows_its_faults_spte_requested(workload_capture):
    """Every kvm_mmu_set_spte comes after a kvm_mmu_spte_requested of the same thread on the same CPU
    (KVM traces both in one mmu_lock section); under bcc it carries that fault's time exactly."""
    backend, _, cap = workload_capture
    mmu = cap.dataframe("mmu")
    mmu = mmu[mmu.event.isin(["kvm_mmu_spte_requested", "kvm_mmu_set_spte"])]
    if backend == "tracefs":
        mmu = mmu.sort_values("ts_ns", kind="stable")
    sets = 0
    for _, rows in mmu.groupby(["cpu", "tid"], sort=False):
        fault_ts = None
        for event, ts in zip(rows.event, rows.ts_ns):
            if event == "kvm_mmu_spte_requested":
                fault_ts = ts
                continue
            sets += 1
            assert fault_ts is not None, "a set_spte before any spte_requested of its thread and CPU"
            if backend == "bcc":
                assert ts == fault_ts
            else:
                assert ts >= fault_ts
    assert sets >= cap.manifest["workload"]["ground_truth"]["test_region_write_faults"]


def test_only_the_targets_threads_and_nothing_lost(workload_capture):
    _, _, cap = workload_capture
    pid = cap.manifest["target"]["pids"][0]
    for family in ("walk", "ioctl", "lock", "mmu"):
        table = cap.dataframe(family)
        assert set(table["pid"]) <= {pid}, family
    locks = cap.dataframe("lock")
    assert set(locks["tid"]) <= {t["tid"] for t in cap.manifest["target"]["threads"]}
    assert (locks["wait_ns"] >= 0).all()
    assert cap.lost_total() == 0


@pytest.mark.parametrize("backend", ["bcc", "tracefs"])
def test_sigkill_leaves_a_readable_capture_and_the_next_run_cleans_up(backend, tmp_path):
    _need(backend)
    workload = subprocess.Popen([TRACEKIT, "workload", "dirty-log", "-i", "100000", "-b", "8M"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "killed.tkcap"
    recorder = None
    try:
        time.sleep(1.0)
        recorder = subprocess.Popen([TRACEKIT, "record", "-q", "--backend", backend, "-p", str(workload.pid),
                                     "-o", str(out), "--segment-seconds", "0.3"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 180  # bcc compiles for tens of seconds on a loaded host
        while time.monotonic() < deadline and not list(out.glob("walk/part-*.parquet")):
            assert recorder.poll() is None, recorder.stderr.read().decode()
            time.sleep(0.1)
        time.sleep(0.5)
        recorder.send_signal(signal.SIGKILL)
        recorder.wait()
        cap = open_capture(out)
        assert cap.manifest["status"] != "complete"
        assert cap.rows("walk") > 0 and cap.rows("walk_element") >= cap.rows("walk")
        left = _instances(recorder.pid) | _uprobes(recorder.pid)
        if backend == "bcc":
            assert not left, "a SIGKILLed bcc recorder leaves nothing in tracefs"
        else:
            assert _instances(recorder.pid), "a SIGKILLed tracefs recorder leaves its instance (cleaned by the next run)"
        summary = record(RecordConfig(output=tmp_path / "next.tkcap", backend="tracefs", duration=0.3,
                                      pid_spec=str(workload.pid), families=("ioctl",)), stream=None)
        assert summary.rows["ioctl_summary"] > 0, "the next run records the still running workload's ioctls"
        assert not _instances(recorder.pid) and not _uprobes(recorder.pid)
        manifest = open_capture(tmp_path / "next.tkcap").manifest
        assert sorted(left) == sorted(manifest["recorder"]["stale_tracefs_instances_removed"])
    finally:
        if recorder is not None and recorder.poll() is None:
            recorder.kill()
        interrupt_and_reap(workload, 10)


@pytest.mark.parametrize("backend", ["bcc", "tracefs"])
def test_sigterm_stops_cleanly(backend, tmp_path):
    _need(backend)
    out = tmp_path / "term.tkcap"
    recorder = subprocess.Popen([TRACEKIT, "record", "-q", "--backend", backend, "-o", str(out), "--json", "--",
                                 TRACEKIT, "workload", "dirty-log", "-i", "100000", "-b", "8M"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180  # bcc compiles for tens of seconds on a loaded host
    while time.monotonic() < deadline and not list(out.glob("walk/part-*.parquet")):
        time.sleep(0.1)
    recorder.send_signal(signal.SIGTERM)
    stdout, stderr = recorder.communicate(timeout=60)
    assert recorder.returncode == 0, stderr.decode()
    cap = open_capture(out)
    assert cap.manifest["status"] == "complete" and cap.manifest["stop_reason"] == "SIGTERM"
    assert cap.rows("walk") > 0
    assert not _instances(recorder.pid)
    import json

    summary = json.loads(stdout)
    assert summary["stop_reason"] == "SIGTERM" and summary["command_exit"] is not None


def test_record_a_qemu_guest_by_name(tmp_path):
    """QEMU from the distribution runs the hand-made CPL3 guest; record it by its -name, then check
    KVM_RUN on its vCPU thread (named "CPU 0/KVM") and 3-level walks covering every 2 MiB guest page the
    guest wrote: one walk per 4 KiB page when QEMU's RAM is backed by small host pages, one per 2 MiB
    guest page when transparent huge pages back it (QEMU asks for them), so at least one per region."""
    import shutil
    import socket
    import threading

    from tests.recorder.qemu_guest import TOUCH_BASE, TOUCH_PAGES, build_image

    _need("bcc")
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        from tests.livecheck import skip_or_fail

        skip_or_fail("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    TOUCH_END = TOUCH_BASE + TOUCH_PAGES * 4096
    image = tmp_path / "guest.bin"
    image.write_bytes(build_image())
    monitor = tmp_path / "monitor.sock"
    name = f"tk-qemu-test-{os.getpid()}"
    vm = subprocess.Popen([qemu, "-enable-kvm", "-cpu", "qemu64,-cx16", "-m", "128M", "-kernel", str(image),
                           "-display", "none", "-nodefaults", "-no-reboot", "-name", f"{name},debug-threads=on", "-S",
                           "-monitor", f"unix:{monitor},server,nowait"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "qemu.tkcap"
    done = threading.Event()

    def start_guest() -> None:  # called once the probes are attached
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(monitor))
        sock.settimeout(5)
        sock.recv(4096)  # the monitor's banner
        sock.sendall(b"cont\n")
        time.sleep(0.5)
        sock.close()
        threading.Thread(target=stop_when_touched, daemon=True).start()

    def stop_when_touched() -> None:
        import pyarrow.parquet as pq

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not done.is_set():
            regions = set()
            for part in out.glob("walk/part-*.parquet"):
                addr = pq.read_table(part, columns=["addr"]).column("addr").to_numpy()
                regions |= set((addr[(addr >= TOUCH_BASE) & (addr < TOUCH_END)] >> 21).tolist())
            if len(regions) == TOUCH_END // (2 << 20) - TOUCH_BASE // (2 << 20):
                time.sleep(1.0)
                break
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGINT)

    try:
        deadline = time.monotonic() + 10
        while not monitor.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        summary = record(RecordConfig(output=out, pid_spec=name, backend="bcc", duration=150), stream=None,
                         on_attached=start_guest)
    finally:
        done.set()
        vm.kill()
        vm.wait()
    assert summary.stop_reason == "SIGINT"
    cap = open_capture(out)
    assert cap.manifest["target"]["name"] == name and cap.manifest["target"]["pids"] == [vm.pid]
    vcpus = [t for t in cap.manifest["target"]["threads"] if t["vcpu"] == 0]
    assert [t["comm"] for t in vcpus] == ["CPU 0/KVM"]
    runs = cap.dataframe("ioctl_summary")
    assert (runs[runs.cmd == KVM_RUN].tid == vcpus[0]["tid"]).any()
    assert cap.rows("ioctl") > 0  # QEMU's register set-up around `cont`
    walks = cap.dataframe("walk")
    touched = walks[(walks.addr >= TOUCH_BASE) & (walks.addr < TOUCH_END)]
    regions = set(range(TOUCH_BASE >> 21, TOUCH_END >> 21))
    assert set((touched.addr.to_numpy() >> 21).tolist()) == regions
    assert len(regions) <= touched.addr.nunique() <= TOUCH_PAGES
    elements = cap.dataframe("walk_element")
    levels = elements[elements.walk_id.isin(touched.walk_id)].groupby("walk_id")["level"].apply(tuple)
    assert set(levels) == {(4, 3, 2)}  # PML4, PDPT, then the 2 MiB PD entry
    mmu = cap.dataframe("mmu")
    requested = mmu[mmu.event == "kvm_mmu_spte_requested"].gfn.dropna().to_numpy().astype("uint64")
    assert set(((requested << 12) >> 21).tolist()) >= regions
    assert cap.lost_total() == 0


def _children() -> list[int]:
    """Pids of this process's children (every thread's list) still running this interpreter: the command
    forked and held before its exec, not a helper another test started for the session (Spark's JVM)."""
    pids: list[int] = []
    me = os.readlink("/proc/self/exe")
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    mine = []
    for pid in pids:
        try:
            if os.readlink(f"/proc/{pid}/exe") == me:
                mine.append(pid)
        except OSError:
            pass
    return mine


def _record_beside_a_counter(out: Path, options=None, poll_interval: float = 0.02) -> tuple:
    """Record walk and mmu of a 64 MiB, 3-iteration workload with a count-only program attached beside the
    recorder (before the workload is released, detached after the recorder stopped) that counts the hits
    of every walk and mmu tracepoint for the workload's tgid: (summary, hits by tracepoint)."""
    _need("bcc")
    from tracekit.host import Host, tracefs_root
    from tracekit.recorder.tracepoint_families import MmuFamily, WalkFamily
    from tracekit.recorder.probe_family import RecordOptions
    from tracekit.recorder.hitcount import HitCounter

    host = Host(tracefs_root())
    tps = [s.probe for family in (WalkFamily(), MmuFamily()) for s in family.check(host) if s.available]
    counter: dict = {}

    def attach() -> None:
        [pid] = _children()  # the workload, held before exec until this returns
        # the counter reads the clock where the recorder does, so its clocked programs are checked too
        counter["bpf"] = HitCounter(tps, pid, clocked=set(tps) - set(WalkFamily.untimed + MmuFamily.untimed))

    try:
        summary = record(RecordConfig(output=out, backend="bcc", duration=60, families=("walk", "mmu"),
                                      options=options or RecordOptions(), poll_interval=poll_interval,
                                      command=[TRACEKIT, "workload", "dirty-log", "-i", "3", "-b", "64M"]),
                         stream=None, on_attached=attach)
        hits = counter["bpf"].hits()
    finally:
        if "bpf" in counter:
            counter["bpf"].close()
    assert summary.stop_reason == "command exited"
    assert hits["kvmmmu:kvm_mmu_pagetable_walk"] > 40_000  # 16,384 first touches + 2 x 16,384 write faults
    return summary, hits


def test_recorded_events_equal_hits_counted_beside_the_recorder(tmp_path):
    """The capture holds exactly as many rows of each walk and mmu event as the counter saw hits, with
    nothing lost: a batch lost or left unread in the kernel (the per-CPU staging arrays) would show."""
    summary, hits = _record_beside_a_counter(tmp_path / "count.tkcap")
    assert summary.lost == 0
    cap = open_capture(tmp_path / "count.tkcap")
    assert cap.manifest["ring_failures"] == [] and cap.manifest["ring_failures_total"] == 0
    assert cap.rows("walk") == hits["kvmmmu:kvm_mmu_pagetable_walk"]
    assert cap.rows("walk_element") == hits["kvmmmu:kvm_mmu_paging_element"]
    assert cap.rows("walk_error") == hits.get("kvmmmu:kvm_mmu_walker_error", 0)
    mmu = cap.dataframe("mmu")["event"].astype(str).value_counts().to_dict()
    expected = {tp.split(":")[1]: n for tp, n in hits.items() if n and tp.startswith(("kvmmmu:", "kvm:"))
                and tp not in WALK_TRACEPOINTS}
    assert mmu == expected


def test_a_failed_batch_output_counts_every_event_lost(tmp_path):
    """A one-page walk ring read every 0.5 s: most 64-event batches (3,096-byte records) find it full.
    Every hit is then either a row or counted lost under its own probe, and the failures name the ring
    (its size, read with bpf_ringbuf_query through bcc's map number) and hold whole batches."""
    from tracekit.recorder.probe_family import RecordOptions

    options = RecordOptions(ring_pages={"walk_events": 1})
    summary, hits = _record_beside_a_counter(tmp_path / "tiny.tkcap", options, poll_interval=0.5)
    cap = open_capture(tmp_path / "tiny.tkcap")
    lost: dict[str, int] = {}
    for entry in cap.manifest["lost"]:
        lost[entry["probe"]] = lost.get(entry["probe"], 0) + int(entry["count"])
    assert lost.get("kvmmmu:kvm_mmu_paging_element", 0) > 10_000
    assert cap.rows("walk") + lost.get("kvmmmu:kvm_mmu_pagetable_walk", 0) == hits["kvmmmu:kvm_mmu_pagetable_walk"]
    assert (cap.rows("walk_element") + lost.get("kvmmmu:kvm_mmu_paging_element", 0)
            == hits["kvmmmu:kvm_mmu_paging_element"])
    failures = [f for f in cap.manifest["ring_failures"] if f["ring"] == "walk_events"]
    assert failures and all(f["ring_size"] == f["ring_size_expected"] == 4096 for f in failures)
    assert all(1 <= f["events"] <= 64 for f in failures)
    full = [f for f in failures if f["avail_data"] + 3096 > 4095]  # no room (the query runs a moment later,
    assert 2 * len(full) >= len(failures)                            # when the reader may just have emptied it)


def _passes(path: tuple) -> bool:
    """True when ``path`` is one or more whole 4-level walks to a 2 MiB or 4 KiB leaf, one after the other."""
    while path:
        for leaf in ((4, 3, 2, 1), (4, 3, 2)):
            if path[:len(leaf)] == leaf:
                path = path[len(leaf):]
                break
        else:
            return False
    return True


def test_walk_passes_accept_whole_retried_walks_only():
    assert _passes((4, 3, 2)) and _passes((4, 3, 2, 1)) and _passes((4, 3, 2, 1, 4, 3, 2, 1))
    assert _passes((4, 3, 2, 4, 3, 2)) and _passes((4, 3, 2, 1, 4, 3, 2))
    assert not _passes((4, 3)) and not _passes((3, 2, 1)) and not _passes((4, 3, 2, 1, 3))


def test_walk_state_falls_back_to_the_hash_when_the_slot_is_taken(tmp_path, monkeypatch):
    """With one direct-mapped walk-state slot (TK_WALK_SLOTS=1) and two vCPU threads, the first thread to walk
    owns the slot and the other keeps its state in the hash: every walk of both still has its elements
    from the root down (levels 4, 3, 2 and, for 4 KiB guest pages, 1) at indexes 0, 1, 2, ..."""
    _need("bcc")
    from tracekit.recorder.tracepoint_families import WalkFamily

    plain = WalkFamily.cflags
    monkeypatch.setattr(WalkFamily, "cflags", lambda self, *a: plain(self, *a) + ["-DTK_WALK_SLOTS=1"])
    out = tmp_path / "slots.tkcap"
    summary = record(RecordConfig(output=out, backend="bcc", duration=60, families=("walk",),
                                  command=[TRACEKIT, "workload", "dirty-log", "-v", "2", "-i", "2", "-b", "16M"]),
                     stream=None)
    assert summary.stop_reason == "command exited" and summary.lost == 0
    cap = open_capture(out)
    vcpus = {v["tid"] for v in cap.manifest["workload"]["vcpus"]}
    walks = cap.dataframe("walk")
    walks = walks[walks.tid.isin(vcpus)]
    assert set(walks.tid) == vcpus and len(vcpus) == 2
    elements = cap.dataframe("walk_element")
    per_walk = elements[elements.walk_id.isin(walks.walk_id)].groupby("walk_id")
    assert len(per_walk) == len(walks)
    levels = per_walk["level"].apply(tuple)
    # A walk whose accessed/dirty-bit update lost a race with the other vCPU is retried from the root by
    # walk_addr_generic under the same walk (the pagetable_walk tracepoint fires before its retry label):
    # its elements are whole root-to-leaf passes, one after the other.
    assert all(_passes(path) for path in set(levels)), set(levels)
    assert (levels == (4, 3, 2)).sum() > 10_000
    assert all(index == tuple(range(len(index))) for index in set(per_walk["index"].apply(tuple)))
    for tid in vcpus:  # both threads' walks are whole, the slot owner's and the hash user's
        mine = elements[elements.walk_id.isin(walks[walks.tid == tid].walk_id)]
        assert len(mine) >= 3 * (walks.tid == tid).sum() > 0
