"""The smallest scenario of each lab, end to end: fetch (cached), boot under QEMU, trace, decode, check.

On arm64 the smallest scenario and ``eager-clear`` both run the project's dirty-log workload through
its arm64 backend with ``eager_split_chunk`` = 2 MiB; their counts are checked per workload phase.
Each run takes about 30 s on a 2-core host once the cache (~/.cache/tracekit/lab, or
$TRACEKIT_LAB_CACHE) holds the kernels and userlands; the first fetch downloads about 150 MB.
Live tests: they skip with the reason when QEMU or the route to the Debian mirror is missing,
and fail instead under TRACEKIT_REQUIRE_LIVE=1.
"""

from __future__ import annotations

import pytest

from tests import livecheck
from tests.funcprobes.split_loop import check_split_loop
from tracekit.capture import open_capture
from tracekit.errors import LabError
from tracekit.lab import scenarios
from tracekit.lab.runner import run_lab


def _run(arch: str, tmp_path, scenario: str | None = None):
    return livecheck.run_lab_or_skip(arch, scenario or scenarios.smallest(arch).name, tmp_path / "lab.tkcap",
                                     timeout=300)


MiB = 1 << 20
#: The seed's setup: 256 MiB of THP faulted in as 2 MiB stage-2 blocks, eager split in 2 MiB chunks.
BLOCKS = 256 * MiB // (2 * MiB)  # 128
#: Each block: one visit of the level-2 block, then 512 visits of the level-3 table that replaces it.
SPLIT_VISITS = BLOCKS * (1 + 512)  # 65,664


def _by_step(run) -> dict[str, dict[str, int]]:
    return {step["op"]: step["counts"] for step in run.steps}


def _workload_record(run) -> dict:
    """What the guest's dirty-log workload reported (its --json document), from the capture's manifest."""
    (entry,) = open_capture(run.output).manifest["workload"]["ioctl_log"]
    assert entry["op"] == "dirty_log_workload"
    return entry["result"]


@pytest.mark.live
@pytest.mark.slow
def test_arm64_eager_split_at_enable(tmp_path):
    """The workload's arm64 backend with --eager-split-chunk 2M over 256 MiB of THP: the seed's figures,
    128 kvm_pgtable_stage2_split calls and 65,664 stage2_split_walker visits, all at dirty-log enable."""
    run = _run("arm64", tmp_path)
    assert run.scenario["steps"] == [["workload", 1]] and run.ok, run.checks
    assert run.counts["stage2_split"] == BLOCKS and run.counts["split_walker"] == SPLIT_VISITS
    assert run.kernel_histograms["split_walker"] == {"level:2 visit:1": BLOCKS, "level:3 visit:1": BLOCKS * 512}
    steps = _by_step(run)
    enable = steps["enable_dirty_logging"]
    assert (enable["stage2_split"], enable["split_walker"]) == (BLOCKS, SPLIT_VISITS)
    # Populating faulted the blocks in (one abort per 2 MiB, plus the workload's own 4 KiB system pages).
    assert steps["populate"].get("stage2_split", 0) == 0 and steps["populate"]["guest_abort"] >= BLOCKS
    # After the split every 4 KiB page of the pass takes one write fault that only relaxes permissions.
    assert steps["dirty_memory_1"]["relax_perms"] == 256 * MiB // 4096
    record = _workload_record(run)
    assert record["eager_split_chunk"] == 2 * MiB and record["log_mode"] == "get" and record["verified"]
    cap = open_capture(run.output)
    assert cap.manifest["source"]["kind"] == "lab" and cap.rows("split") == BLOCKS
    assert run.console_log.exists() and "tk-done rc=0" in run.console_log.read_text()
    assert "user_mem_abort" in {f["probe"] for f in run.probes["failed"]}  # inlined in Debian's 6.12


@pytest.mark.live
@pytest.mark.slow
def test_arm64_eager_split_moves_into_clear_with_initially_set(tmp_path):
    """Manual protect + initially-set: nothing at enable; the CLEAR splits, one call per 64-page mask word."""
    run = _run("arm64", tmp_path, "eager-clear")
    assert run.ok, run.checks
    steps = _by_step(run)
    assert steps["enable_dirty_logging"].get("stage2_split", 0) == 0
    assert steps["dirty_memory_1"].get("stage2_split", 0) == 0  # initially-set: the blocks stay writable
    clear = steps["clear_dirty_log_1"]
    words = 256 * MiB // (64 * 4096)  # 1,024 words of 64 pages, each a KVM_CLEAR_DIRTY_LOG mask word
    assert (clear["stage2_split"], clear["split_walker"]) == (words, SPLIT_VISITS)
    record = _workload_record(run)
    assert record["eager_split_chunk"] == 2 * MiB and record["log_mode"] == "clear" and record["initially_set"]


@pytest.mark.live
@pytest.mark.slow
def test_x86_tdp_eager_split(tmp_path):
    """64 MiB of THP: 32 kvmmmu:kvm_mmu_split_huge_page events when dirty logging is enabled."""
    run = _run("x86", tmp_path)
    assert run.ok, run.checks
    assert run.counts["kvm_mmu_split_huge_page"] == 32 == run.counts["split_huge_page"]
    assert "tdp_map" in run.probes["attached"]
    # exact splits per level; iterator steps = the model's 64/33/33 plus whole root restarts (kernel yields)
    check_split_loop(open_capture(run.output), 64 * MiB, 2 * MiB)


@pytest.mark.live
@pytest.mark.slow
def test_a_guest_that_does_not_finish_is_killed_and_its_console_kept(tmp_path):
    """A 3 s limit cannot fit a boot under TCG: QEMU is killed, the error names the kept console log."""
    livecheck.lab_kernel_or_skip("arm64")  # a cold cache: the download is not part of the 3 s
    with pytest.raises(LabError, match="did not finish within 3 s") as error:
        run_lab("arm64", "eager-enable", tmp_path / "hung.tkcap", timeout=3)
    assert str(tmp_path / "hung.tkcap.console.log") in str(error.value)
    assert (tmp_path / "hung.tkcap.console.log").exists()
    assert not (tmp_path / "hung.tkcap").exists()
