"""Live runs of the dirty-log workload on this host's /dev/kvm.

Every run verifies itself (the dirty log must equal the pages the guest wrote); these tests also
check the arithmetic of the reported counts, the printed lines against dirty_log_perf_test's
regexes, the layout record and the vCPU thread names. Sizes are small (16-32 MiB per vCPU) so the
whole file runs in a few seconds.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.workload.livegate import need_log_mode, need_workload
from tracekit.workload import uapi
from tracekit.workload.dirtylog import TEST_GPA, TEST_GVA, DirtyLogResult, run_dirty_log
from tracekit.workload.options import DirtyLogOptions

pytestmark = pytest.mark.live

MIB = 1 << 20
ITERATION = re.compile(r"^(?:# )?Iteration (\d+) (dirty memory|get dirty log|clear dirty log) time: (\d+\.\d{9})s$")
TOTAL = re.compile(r"^(?:# )?(Get|Clear) dirty log over (\d+) iterations took (\S+)s\. \(Avg (\S+)s/iteration\)$")
PHASE = re.compile(r"^(Populate memory|Enabling dirty logging|Disabling dirty logging) time: (\d+)\.(\d{9})s$")


@pytest.fixture(autouse=True)
def _kvm():
    need_workload()


def _run(**changes) -> tuple[DirtyLogResult, list[str]]:
    lines: list[str] = []
    options = DirtyLogOptions(**{"bytes_per_vcpu": 16 * MIB, "iterations": 3, **changes})
    result = run_dirty_log(options, emit=lines.append)
    result.check()
    return result, lines


def _pages(result: DirtyLogResult) -> int:
    return result.options.total_bytes // 4096


@pytest.mark.parametrize("vcpus", [1, 2])
@pytest.mark.parametrize("mode", ["clear", "get", "ring"])
def test_every_mode_reports_exactly_the_written_pages(mode, vcpus):
    """100 % writes in order: every iteration dirties every page of the region."""
    need_log_mode(mode)
    result, lines = _run(log_mode=mode, vcpus=vcpus)
    assert result.log_mode == mode and result.verified
    assert [it.dirty_pages for it in result.iterations] == [_pages(result)] * 3
    clear_lines = [line for line in lines if "clear dirty log time" in line]
    assert len(clear_lines) == (0 if mode == "get" else 3)


def test_default_mode_is_manual_clear_with_initially_set():
    need_log_mode("clear")
    result, _ = _run()
    assert (result.log_mode, result.initially_set) == ("clear", True)
    assert [op["cap"] for op in (r.get("arg", {}) for r in result.layout["ioctls"]) if "args" in op] == [
        uapi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
    ]


@pytest.mark.parametrize("page_size", [4096, 2 * MIB])
def test_guest_page_sizes(page_size):
    result, lines = _run(guest_page_size=page_size, vcpus=2)
    assert result.layout["guest_paging"]["page_size"] == page_size
    assert f"{'4K' if page_size == 4096 else '2M'} pages" in lines[1]


def test_random_order_partial_writes_are_exact():
    """-a -w 30: each iteration's expected set is the pages the plan wrote (about 30 %), and in
    clear mode with initially-set the first iteration reports every page (the bitmap starts full)."""
    need_log_mode("clear")  # the default mode where offered; these counts assume it
    result, _ = _run(random_order=True, write_percent=30, seed=7, vcpus=2, iterations=4)
    pages = _pages(result)
    first, *rest = result.iterations
    assert first.expected_dirty_pages == first.dirty_pages == pages
    for it in rest:
        assert it.dirty_pages == it.expected_dirty_pages
        assert 0.25 * pages < it.dirty_pages < 0.35 * pages


def test_reads_dirty_nothing():
    """-w 0 in legacy mode: the guest only reads, so no iteration has a dirty page."""
    result, _ = _run(write_percent=0, log_mode="get")
    assert [it.dirty_pages for it in result.iterations] == [0, 0, 0]


def test_same_seed_same_plan():
    one, _ = _run(random_order=True, write_percent=50, seed=3, log_mode="get")
    two, _ = _run(random_order=True, write_percent=50, seed=3, log_mode="get")
    other, _ = _run(random_order=True, write_percent=50, seed=4, log_mode="get")
    counts = [[it.dirty_pages for it in r.iterations] for r in (one, two, other)]
    assert counts[0] == counts[1] != counts[2]


def test_two_memslots():
    need_log_mode("clear")  # the default mode where offered; these counts assume it
    result, _ = _run(memslots=2, vcpus=2)
    slots = result.layout["memslots"]
    assert [(s["slot"], s["role"]) for s in slots] == [(0, "system"), (1, "test"), (2, "test")]
    assert slots[1]["guest_phys_addr"] == TEST_GPA
    assert slots[2]["guest_phys_addr"] == TEST_GPA + 16 * MIB
    assert slots[2]["userspace_addr"] == slots[1]["userspace_addr"] + 16 * MIB
    names = [r["name"] for r in result.layout["ioctls"]]
    assert names.count("KVM_GET_DIRTY_LOG") == names.count("KVM_CLEAR_DIRTY_LOG") == 2 * 3


def test_printed_lines_parse_like_dirty_log_perf_test():
    need_log_mode("clear")  # the default mode where offered; these counts assume it
    result, lines = _run(iterations=2)
    iterations = [ITERATION.match(line).groups() for line in lines if ITERATION.match(line)]
    assert [(n, what) for n, what, _ in iterations] == [
        ("1", "dirty memory"), ("1", "get dirty log"), ("1", "clear dirty log"),
        ("2", "dirty memory"), ("2", "get dirty log"), ("2", "clear dirty log"),
    ]  # fmt: skip
    totals = [TOTAL.match(line).groups()[:2] for line in lines if TOTAL.match(line)]
    assert totals == [("Get", "2"), ("Clear", "2")]
    assert [PHASE.match(line).group(1) for line in lines if PHASE.match(line)] == [
        "Populate memory", "Enabling dirty logging", "Disabling dirty logging",
    ]  # fmt: skip
    assert lines[:3] == result.lines()[:3] and lines[0] == "Test iterations: 2"
    assert result.lines() == lines  # the streamed lines are the complete report


def test_layout_record():
    need_log_mode("clear")  # the default mode where offered; these counts assume it
    seen: dict[int, str] = {}

    def emit(line: str) -> None:
        if line.startswith("Populate"):  # vCPU threads are alive and parked between passes
            for task in Path("/proc/self/task").iterdir():
                seen[int(task.name)] = (task / "comm").read_text().strip()

    result = run_dirty_log(DirtyLogOptions(vcpus=2, bytes_per_vcpu=16 * MIB, iterations=2), emit=emit)
    layout = result.layout
    assert layout["pid"] == os.getpid() and layout["arch"] == "x86_64"
    for vcpu in layout["vcpus"]:
        assert seen[vcpu["tid"]] == vcpu["thread_name"] == f"tk-vcpu-{vcpu['index']}"
        assert vcpu["passes"] == 3 and vcpu["kvm_run_count"] >= 3
        # the thread's own CPU time: some in every pass (the populate pass faults 4,096 pages in), never
        # more than the pass's wall time (1 ms of slack for the two clocks' granularity)
        assert len(vcpu["pass_cpu_ns"]) == 3 and vcpu["pass_cpu_ns"][0] > 0
        assert all(0 <= cpu <= wall + 1_000_000 for cpu, wall in zip(vcpu["pass_cpu_ns"], vcpu["pass_ns"]))
        assert vcpu["gva_end"] - vcpu["gva_start"] == 16 * MIB
    assert layout["vcpus"][1]["gva_start"] == TEST_GVA + 16 * MIB
    assert seen[layout["main_tid"]] != "tk-vcpu-0"
    names = [r["name"] for r in layout["ioctls"]]
    assert names[:3] == ["KVM_GET_API_VERSION", "KVM_GET_VCPU_MMAP_SIZE", "KVM_CHECK_EXTENSION"]
    assert "KVM_CREATE_VM" in names and names.count("KVM_CREATE_VCPU") == 2
    assert names.count("KVM_SET_USER_MEMORY_REGION") == 2 + 2  # two slots, enable + disable of the test slot
    assert all(r["start_ns"] <= r["end_ns"] for r in layout["ioctls"])
    phases = [(p["name"], p["iteration"]) for p in layout["phases"]]
    assert phases[:3] == [("setup", None), ("populate", None), ("enable_dirty_logging", None)]
    assert phases[-1] == ("disable_dirty_logging", None)
    starts = [p["start_ns"] for p in layout["phases"]]
    assert starts == sorted(starts)
    assert layout["iterations"][0]["dirty_pages"] == 8192
    assert layout["ground_truth"]["test_region_write_faults"] == result.expected_write_faults == 8192 * 2
    assert layout["guest_paging"]["cr3"] in layout["guest_paging"]["table_gpas"]


def test_nothing_left_behind():
    before = set(os.listdir("/proc/self/fd"))
    threads = set(os.listdir("/proc/self/task"))
    need_log_mode("ring")
    _run(vcpus=2, log_mode="ring")
    assert set(os.listdir("/proc/self/fd")) <= before
    assert set(os.listdir("/proc/self/task")) <= threads


def test_interrupt_mid_run_leaves_nothing_behind():
    """An exception from the output callback (as Ctrl-C would raise) stops the run at once, cleanly."""
    need_workload()
    before = set(os.listdir("/proc/self/fd"))
    threads = set(os.listdir("/proc/self/task"))

    def emit(line: str) -> None:
        if line.startswith("Iteration 1 dirty"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_dirty_log(DirtyLogOptions(vcpus=2, bytes_per_vcpu=16 * MIB), emit=emit)
    assert set(os.listdir("/proc/self/fd")) <= before
    assert set(os.listdir("/proc/self/task")) <= threads


def test_full_dirty_ring_is_harvested_by_the_vcpu_mid_pass():
    """4,096 pages per vCPU through rings of 512 entries: KVM exits with DIRTY_RING_FULL, the vCPU
    thread harvests its ring and resets it, and the iteration's dirty set is still exact."""
    need_log_mode("ring")
    result, _ = _run(log_mode="ring", ring_entries=512, vcpus=2, iterations=2)
    assert result.layout["ring_bytes"] == 512 * 16
    assert [it.dirty_pages for it in result.iterations] == [8192, 8192]
    full_exits = [v["ring_full_exits"] for v in result.layout["vcpus"]]
    assert all(n >= 4096 // 512 for n in full_exits), full_exits
    vcpu_tids = {v["tid"] for v in result.layout["vcpus"]}
    resets_by_vcpus = [r for r in result.layout["ioctls"] if r["name"] == "KVM_RESET_DIRTY_RINGS" and r["tid"] in vcpu_tids]
    assert len(resets_by_vcpus) == sum(full_exits)
    assert result.layout["ring_foreign_entries"] == 0


def test_on_phase_brackets_every_recorded_phase():
    """on_phase sees a begin and an end for each entry of layout["phases"], in order, never nested."""
    calls: list[tuple] = []
    options = DirtyLogOptions(bytes_per_vcpu=16 * MIB, iterations=2, log_mode="clear")
    result = run_dirty_log(options, on_phase=lambda name, iteration, end: calls.append((name, iteration, end)))
    phases = [(p["name"], p["iteration"]) for p in result.layout["phases"]]
    assert calls[0::2] == [(name, it, False) for name, it in phases]
    assert calls[1::2] == [(name, it, True) for name, it in phases]
    assert phases[:3] == [("setup", None), ("populate", None), ("enable_dirty_logging", None)]
    assert phases[3:6] == [("dirty_memory", 1), ("get_dirty_log", 1), ("clear_dirty_log", 1)]
    assert phases[-1] == ("disable_dirty_logging", None) and len(phases) == 10
