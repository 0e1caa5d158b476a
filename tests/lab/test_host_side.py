"""Host-side pieces of the lab without booting anything: initramfs, QEMU command, scenarios, CLI errors."""

from __future__ import annotations

import io
import json
import re
import tarfile

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from typer.testing import CliRunner

from tracekit.cli import app
from tracekit.errors import LabError, UsageError
from tracekit.lab import guest_run, machine, results, scenarios
from tracekit.lab.results import ProbeEvent
from tracekit.lab.initramfs import write_initramfs


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    """Minimal newc reader: name -> (mode, data)."""
    entries, pos = {}, 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, data[pos : pos + size])
        pos = (pos + size + 3) & ~3


def test_initramfs_holds_root_links_and_extra_files(tmp_path):
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "busybox").write_bytes(b"\x7fELF" + b"x" * 5)
    (root / "bin").symlink_to("usr/bin")
    (root / "usr" / "share" / "doc").mkdir(parents=True)
    (root / "usr" / "share" / "doc" / "README").write_text("skip me")
    out = tmp_path / "initrd.cpio"
    write_initramfs(out, root, {"init": b"#!/bin/sh\n", "opt/x/y.py": b"pass\n"}, exclude=("usr/share/doc",))
    entries = _read_newc(out.read_bytes())
    assert entries["usr/bin/busybox"][1] == b"\x7fELF" + b"x" * 5
    assert entries["bin"] == (0o120777, b"usr/bin")
    assert entries["init"][0] & 0o777 == 0o755 and entries["opt/x/y.py"][1] == b"pass\n"
    assert "opt" in entries and "opt/x" in entries
    assert not any(name.startswith("usr/share/doc") for name in entries)


def test_qemu_command_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "require_tool", lambda name, package: f"/usr/bin/{name}")
    arm = machine.qemu_command("arm64", tmp_path / "Image", tmp_path / "i", tmp_path / "c", tmp_path / "a", "tk.arch=arm64")
    assert "virt,virtualization=on,gic-version=3" in arm and "max,pauth-impdef=on" in arm
    assert f"virtserialport,chardev=tkout,name={machine.GUEST_PORT}" in arm
    x86 = machine.qemu_command("x86", tmp_path / "bz", tmp_path / "i", tmp_path / "c", tmp_path / "a", "")
    assert "qemu64,+svm,+npt,+pdpe1gb,-cx16" in x86 and x86[x86.index("-m") + 1] == "3072"


def test_scenarios_are_well_formed():
    for arch in ("arm64", "x86"):
        assert scenarios.smallest(arch).arch == arch
        for name in scenarios.names(arch):
            s = scenarios.get(name, arch)
            assert s.steps and s.memory_mib > 0
    with pytest.raises(UsageError, match="choose one of"):
        scenarios.get("nope", "arm64")


def test_unpack_rejects_empty_and_escaping_archives(tmp_path):
    with pytest.raises(LabError, match="no result archive"):
        results.unpack(tmp_path / "missing.tar", tmp_path / "out")
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(LabError, match="outside"):
        results.unpack(evil, tmp_path / "out2")


def test_cli_scenarios_json_and_bad_input(tmp_path):
    runner = CliRunner()
    listed = json.loads(runner.invoke(app, ["lab", "scenarios", "--arch", "arm64", "--json"]).output)
    assert {s["name"] for s in listed} == set(scenarios.names("arm64"))
    assert listed[0]["expected"] == {"stage2_split": 128} and listed[0]["model_counts"] == ["split_walker"]
    bad = runner.invoke(app, ["lab", "arm64", "--scenario", "nope", "-o", str(tmp_path / "x.tkcap")])
    assert bad.exit_code == 2 and "unknown arm64 lab scenario" in bad.output
    (tmp_path / "full.tkcap").mkdir()
    (tmp_path / "full.tkcap" / "f").write_text("x")
    busy = runner.invoke(app, ["lab", "x86", "-o", str(tmp_path / "full.tkcap")])
    assert busy.exit_code == 2 and "not empty" in busy.output


def test_cli_scenarios_text_fits_the_terminal():
    """At COLUMNS=80 every line fits, each scenario's text wrapped at words under its description's column
    (the list printed 250-column lines); the words are those of the unwrapped list."""
    runner = CliRunner()
    narrow = runner.invoke(app, ["lab", "scenarios"], env={"COLUMNS": "80"})
    wide = runner.invoke(app, ["lab", "scenarios"], env={"COLUMNS": "400"})
    assert narrow.exit_code == wide.exit_code == 0, narrow.output
    lines = narrow.output.splitlines()
    assert max(len(line) for line in lines) <= 80 < max(len(line) for line in wide.output.splitlines())
    assert narrow.output.split() == wide.output.split()
    starts = [line for line in lines if not line.startswith(" ")]
    assert len(starts) == len(scenarios.SCENARIOS) == len(wide.output.splitlines())
    column = starts[0].index(scenarios.SCENARIOS[0].description.split()[0])
    assert all(line[:column].isspace() and not line[column].isspace() for line in lines if line.startswith(" "))


def test_cli_probes_report_against_a_kallsyms_file(tmp_path):
    """An arm64 kallsyms with kprobes: stage2 probes attachable (the .isra clone too), user_mem_abort absent."""
    text = "ffff0001 T register_kprobe\nffff0002 T kvm_pgtable_walk\nffff0003 t stage2_split_walker\n"
    text += "ffff0004 t kvm_mmu_split_huge_pages.isra.0\n"
    (tmp_path / "kallsyms").write_text(text)
    result = CliRunner().invoke(app, ["lab", "probes", "--family", "stage2", "--kallsyms", str(tmp_path / "kallsyms"),
                                      "--machine", "aarch64", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    rows = {row["probe"]: row for row in report["families"]["stage2"]}
    assert report["kprobes"] is True and list(report["families"]) == ["stage2"]
    assert rows["split_walker"]["status"] == "attachable"
    assert rows["split_huge_pages"]["symbol"] == "kvm_mmu_split_huge_pages.isra.0"
    assert rows["user_mem_abort"]["status"] == "absent"
    bad = CliRunner().invoke(app, ["lab", "probes", "--family", "nope"])
    assert bad.exit_code == 2


def test_missing_pieces_are_one_line_errors_naming_the_fix(tmp_path, monkeypatch):
    """No QEMU -> the package to install; no mirror -> the route; too little disk -> what to free."""
    from collections import namedtuple

    from tracekit.errors import MissingCapability
    from tracekit.lab import fetch
    from tracekit.lab.runner import run_lab

    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(MissingCapability, match=r"qemu-system-aarch64 is not installed \(apt-get install qemu-system-arm\)"):
        run_lab("arm64", "eager-enable", tmp_path / "a.tkcap")

    def refuse(argv, what, env=None, timeout=900):
        raise LabError(f"{what} failed: Temporary failure resolving 'deb.debian.org'")

    monkeypatch.setattr(fetch, "run_tool", refuse)
    with pytest.raises(LabError, match="cannot read the Debian trixie package lists .* check the route"):
        fetch.PrivateApt(tmp_path / "apt").update()

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(fetch.shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 100 << 20))
    with pytest.raises(LabError, match="only 100 MiB free .* free 1436 MiB more or point TRACEKIT_LAB_CACHE elsewhere"):
        fetch.check_disk(tmp_path)


def test_work_dirs_of_dead_lab_runs_are_removed_and_live_ones_kept(tmp_path):
    """``tracekit-lab-PID-*``: kept while PID runs (this test's own process), removed once it is gone
    (a reaped child) or when the name holds no pid; other directories of the cache are untouched."""
    import os
    import subprocess

    from tracekit.lab.runner import _remove_stale_work_dirs

    child = subprocess.Popen(["true"])
    child.wait()
    names = [f"tracekit-lab-{os.getpid()}-live", f"tracekit-lab-{child.pid}-dead", "tracekit-lab-nopid-x", "kernel-6.12"]
    for name in names:
        (tmp_path / name).mkdir()
    _remove_stale_work_dirs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names[0], names[3]])


_EVENT_NAMES = st.sampled_from(["stage2_split", "stage2_split_ret", "split_walker", "fault"])


@settings(max_examples=50, deadline=None)
@given(
    stamps=st.lists(st.tuples(st.integers(0, 10), st.integers(0, 1), _EVENT_NAMES), max_size=40),
    bounds=st.lists(st.tuples(st.none() | st.integers(0, 10), st.none() | st.integers(0, 10)), max_size=4),
)
def test_step_counts_are_the_entry_events_between_the_markers(stamps, bounds):
    """Oracle: for each step, count every non-``_ret`` event with begin <= ts <= end by scanning all events
    (ties on the marker times included; a step with a missing marker counts nothing)."""
    events = sorted((ProbeEvent(ts, cpu, 1, name, {}) for ts, cpu, name in stamps), key=lambda e: (e.ts, e.cpu))
    steps = []
    for index, (begin, end) in enumerate(bounds):
        step = {"index": index, "op": "step"}
        if begin is not None:
            step["begin_ns"] = begin
        if end is not None:
            step["end_ns"] = end
        steps.append(step)
    trace = results.GuestTrace({}, events, steps, results.DecodeStats())
    for step, got in zip(steps, results.step_counts(trace), strict=True):
        expected: dict[str, int] = {}
        if "begin_ns" in step and "end_ns" in step:
            for ev in events:
                if step["begin_ns"] <= ev.ts <= step["end_ns"] and not ev.name.endswith("_ret"):
                    expected[ev.name] = expected.get(ev.name, 0) + 1
        assert got == {**step, "counts": expected}


def _fake_boots(monkeypatch, consoles: list[str]) -> list[int]:
    """machine.boot replaced by one that writes each console text in turn; returns the call log."""
    from tracekit.lab import runner as lab_runner

    calls: list[int] = []

    def fake_boot(command, console, archive, timeout):
        text = consoles[len(calls)]
        calls.append(1)
        console.write_text(text)
        done = re.search(r"tk-done rc=(\d+)", text)
        return machine.BootResult(text, archive, 1.0, int(done.group(1)) if done else None, command)

    monkeypatch.setattr(lab_runner.machine, "boot", fake_boot)
    return calls


def test_a_guest_kernel_that_died_before_init_is_booted_once_more(tmp_path, monkeypatch):
    from tracekit.lab.runner import _boot

    calls = _fake_boots(monkeypatch, ["Kernel panic - not syncing: int3\n", "tk-booted arch=x86\ntk-done rc=0\n"])
    log = tmp_path / "cap.tkcap.console.log"
    boot = _boot(["qemu"], tmp_path / "guest.log", tmp_path / "result.tar", 10, log)
    assert len(calls) == 2 and boot.guest_rc == 0
    assert "tk-done" in log.read_text()
    assert "Kernel panic" in (tmp_path / "cap.tkcap.console.attempt1.log").read_text()


def test_a_guest_whose_kernel_locks_up_is_killed_at_once_and_booted_once_more(tmp_path, monkeypatch):
    """An arm64 recorder run's guest kernel once reported a hard lockup (NMI watchdog) after /init started
    and the host waited out its 30 min timeout: QEMU is now killed as the console shows it, and the guest
    booted once more, the first console kept."""
    import time

    from tracekit.lab import runner as lab_runner
    from tracekit.lab.runner import _boot

    monkeypatch.setattr(machine, "WATCH_SECONDS", 0.05)
    guest = tmp_path / "guest.log"
    hang = ["sh", "-c", f"printf 'tk-booted arch=arm64\\n[  129.17] watchdog: Watchdog detected hard LOCKUP on cpu 1\\n' "
            f"> {guest}; sleep 60"]
    started = time.monotonic()
    with pytest.raises(machine.GuestLockup, match=r"locked up \('\[  129.17\] watchdog: Watchdog detected hard LOCKUP on cpu 1'\)"):
        machine.boot(hang, guest, tmp_path / "result.tar", timeout=60)
    assert time.monotonic() - started < 30  # not the timeout: killed as soon as seen

    real_boot, calls = machine.boot, []

    def hang_then_finish(command, console, archive, timeout):
        calls.append(1)
        if len(calls) == 1:
            return real_boot(hang, console, archive, timeout)
        console.write_text("tk-booted arch=arm64\ntk-done rc=0\n")
        return machine.BootResult(console.read_text(), archive, 1.0, 0, command)

    monkeypatch.setattr(lab_runner.machine, "boot", hang_then_finish)
    log = tmp_path / "cap.tkcap.console.log"
    boot = _boot(["qemu"], guest, tmp_path / "result.tar", 60, log)
    assert len(calls) == 2 and boot.guest_rc == 0 and "tk-done" in log.read_text()
    assert "hard LOCKUP" in (tmp_path / "cap.tkcap.console.attempt1.log").read_text()


def test_a_guest_that_reached_init_is_not_booted_again(tmp_path, monkeypatch):
    from tracekit.lab.runner import _boot

    calls = _fake_boots(monkeypatch, ["tk-booted arch=arm64\ntk-guest-error: boom\ntk-done rc=1\n", "unused"])
    boot = _boot(["qemu"], tmp_path / "guest.log", tmp_path / "result.tar", 10, tmp_path / "c.tkcap.console.log")
    assert len(calls) == 1 and boot.guest_rc == 1
    assert not (tmp_path / "c.tkcap.console.attempt1.log").exists()


def test_a_kernel_built_in_the_cache_is_described_without_this_machines_directories(tmp_path):
    """A path kernel (``--kernel IMAGE``, e.g. a ``lab kernel build`` image) names its file in spec, image and
    source alike: every one of them is written relative to the lab cache, as samples travel."""
    from tracekit.lab import runner
    from tracekit.lab.kernels import LabKernel

    cache = tmp_path / "cache"
    image = cache / "kbuild" / "arm64-6.12.117-x" / "tree" / "arch" / "arm64" / "boot" / "Image"
    kernel = LabKernel(spec=str(image), arch="arm64", release="6.12.117-tkx", image=image, config=None,
                       source=str(image))
    described = runner._portable_kernel(kernel, tmp_path / "work", cache, tmp_path / "out.tkcap")
    portable = "$TRACEKIT_LAB_CACHE/kbuild/arm64-6.12.117-x/tree/arch/arm64/boot/Image"
    assert (described["spec"], described["image"], described["source"]) == (portable,) * 3
    assert str(tmp_path) not in repr(described)


def test_before_5_19_a_spinlock_wait_is_a_call_of_the_qspinlock_slow_path(tmp_path):
    """Without lock:contention_* (5.10) the contention scenario probes queued_spin_lock_slowpath instead: its
    entries and returns pair per thread into spin waits, a nested one (an interrupt) closing first."""
    contention = scenarios.get("contention@eager_split_chunk=0", "arm64")
    assert contention.needs == ()  # boots on 5.10: the stand-in replaces the tracepoints
    assert guest_run.lock_standin(contention, tmp_path) == (scenarios.LOCK_STANDIN,)
    (tmp_path / "events/lock/contention_begin").mkdir(parents=True)
    assert guest_run.lock_standin(contention, tmp_path) == ()
    assert guest_run.lock_standin(scenarios.get("lazy", "arm64"), tmp_path / "none") == ()
    mmu = 0xFFFF000012340000
    events = [ProbeEvent(100, 0, 7, "spin_wait", {"lock_addr": mmu}), ProbeEvent(150, 0, 7, "spin_wait", {"lock_addr": 0x99}),
              ProbeEvent(160, 0, 7, "spin_wait_ret", {}), ProbeEvent(400, 0, 7, "spin_wait_ret", {}),
              ProbeEvent(500, 1, 8, "spin_wait_ret", {})]  # fmt: skip
    rows, summary = results.lock_rows(events, lambda tid: 5, {mmu})
    assert [(r["lock_addr"], r["wait_ns"], r["flags_name"]) for r in rows] == [(0x99, 10, "SPIN"), (mmu, 300, "SPIN")]
    assert summary == {"other SPIN": {"waits": 1, "wait_ns": 10}, "mmu_lock SPIN": {"waits": 1, "wait_ns": 300}}
