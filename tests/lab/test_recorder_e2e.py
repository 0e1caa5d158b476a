"""The real ``tracekit record`` inside the arm64 lab, with bcc kprobes and with tracefs kprobe_events.

The smallest arm64 scenario (256 MiB of THP faulted in as 2 MiB blocks, eager split in 2 MiB chunks
when dirty logging is enabled) under ``tracekit lab arm64 --recorder bcc|tracefs``: the guest runs
``tracekit record --probes stage2 --backend ... -- tracekit workload dirty-log ...`` and the host
adopts its capture. Each test checks the split calls and the per-level split-walker visits against
the reference model and against the raw path's capture of the same scenario
(samples/lab-arm64-eager-enable.tkcap), per workload phase, and that the manifest names the backend
and what it attached, that nothing was lost, and that both backends report the same ``host_walks`` (walks
of host user page tables, counted in the kernel by bcc and from the kprobe events by tracefs); and x86
``tdp-eager`` with bcc (32 splits at level 2, as the tracepoint and as spans; the split loop's iterator
steps as the model's plus whole root restarts: tests/funcprobes/split_loop.py; no event lost: iterator
steps outside any span are visits of no walk, not losses). Warm cache, each: arm64 about 3 minutes, x86 about 2 (the emulated bcc compile included).
Cold cache: the recorder userland downloads about 200 MB per architecture (docs/lab.md).
Live tests: they skip with the reason where QEMU, mmdebstrap or the route to the mirrors is
missing, and fail instead under TRACEKIT_REQUIRE_LIVE=1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import livecheck
from tests.funcprobes.split_loop import check_split_loop
from tracekit.capture import open_capture
from tracekit.errors import LabError
from tracekit.lab import scenarios
from tracekit.lab.arm64_vm import DATA_IPA
from tracekit.model.accounting import WalkStats
from tracekit.model.split import EagerSplitter
from tracekit.model.stage2 import Stage2PageTable

MiB = 1 << 20
SLOT = 256 * MiB
RAW_SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "lab-arm64-eager-enable.tkcap"
#: backend -> host_walks of its arm64 run in this session (both backends must agree).
HOST_WALKS: dict[str, int] = {}


def _run(backend: str, tmp_path, arch: str = "arm64"):
    try:
        return livecheck.run_lab_or_skip(arch, scenarios.smallest(arch).name, tmp_path / f"{backend}.tkcap",
                                         recorder=backend)  # fmt: skip
    except LabError as error:
        if "wheel from PyPI" in str(error):
            livecheck.skip_or_fail(f"no route to PyPI for the recorder userland's pyarrow wheel: {error}")
        raise


def _split_walker_visits(cap) -> dict[tuple[int, str], int]:
    visits = cap.dataframe("stage2_visit")
    visits = visits[visits["visitor"] == "stage2_split_walker"]
    return {key: int(n) for key, n in visits.groupby(["level", "kind"], observed=True)["count"].sum().items()}


def _model() -> WalkStats:
    """The model's eager split of 256 MiB of 2 MiB blocks in 2 MiB chunks."""
    pgt = Stage2PageTable()
    pgt.populate(DATA_IPA, SLOT, 2 * MiB)
    stats = WalkStats()
    assert EagerSplitter(pgt, 2 * MiB).split_huge_pages(DATA_IPA, DATA_IPA + SLOT, stats) == 0
    return stats


def _check(run, backend: str) -> None:
    stats = _model()
    assert run.ok, run.checks
    assert run.recorder == backend
    assert run.counts["stage2_split"] == stats.walks == 128
    assert run.counts["split_walker"] == 65_664  # 128 x (1 block + 512 pages)
    enable = {step["op"]: step["counts"] for step in run.steps}["enable_dirty_logging"]
    assert (enable["stage2_split"], enable["split_walker"]) == (128, 65_664)
    assert run.visits_by_level["split_walker"] == {2: stats.get("leaf", 2), 3: stats.get("leaf", 3)} == {2: 128, 3: 65_536}
    cap = open_capture(run.output)
    measured = _split_walker_visits(cap)
    assert measured == {(2, "leaf:block"): 128, (3, "leaf:page"): 65_536}
    if RAW_SAMPLE.exists():  # the raw kprobe_events path's capture of the same scenario
        assert measured == _split_walker_visits(open_capture(RAW_SAMPLE))
        assert cap.rows("split") == open_capture(RAW_SAMPLE).rows("split")
    manifest = cap.manifest
    assert manifest["backend"] == backend and manifest["source"]["kind"] == "lab"
    assert manifest["lab"]["recorder_backend"] == backend and "timing_note" in manifest
    assert manifest["kernel_release"].endswith("-cloud-arm64")
    attached = manifest["probes"]["attached"]
    # which backend attached which probe: bcc names kprobes by symbol, tracefs by its private event group
    wanted = "kprobe:kvm_pgtable_stage2_split" if backend == "bcc" else "stage2_split"
    assert any(name == wanted or name.endswith(":" + wanted) for name in attached), attached
    assert "user_mem_abort" in {f["probe"] for f in manifest["probes"]["failed"]}  # inlined in Debian's 6.12
    workload = manifest["workload"]  # the workload's own record, stored by the recorder
    assert [p["name"] for p in workload["phases"]][:3] == ["setup", "populate", "enable_dirty_logging"]
    assert workload["verified"] and workload["eager_split_chunk"] == 2 * MiB and workload["log_mode"] == "get"
    assert run.console_log.exists() and "tk-done rc=0" in run.console_log.read_text()
    assert cap.lost_total() == 0, manifest.get("lost")
    notes = manifest["family_notes"]["stage2_probes"]
    # every THP fault looks up the host mapping size (a kvm_pgtable_walk of the host user page table)
    assert notes["host_walks"] > 0, notes  # (unpaired_returns: calls open when the probes attached, 0-2 here)
    HOST_WALKS[backend] = notes["host_walks"]
    assert len(set(HOST_WALKS.values())) == 1, HOST_WALKS


@pytest.mark.live
@pytest.mark.slow
def test_arm64_eager_split_under_tracekit_record_with_tracefs(tmp_path):
    _check(_run("tracefs", tmp_path), "tracefs")


@pytest.mark.live
@pytest.mark.slow
def test_arm64_eager_split_under_tracekit_record_with_bcc(tmp_path):
    _check(_run("bcc", tmp_path), "bcc")


def _check_x86(run, backend: str) -> None:
    """64 MiB of THP as 2 MiB SPTEs, eager split at enable: the model's 32 splits at level 2, seen both as
    the kvmmmu:kvm_mmu_split_huge_page tracepoint (mmu family) and as tdp_mmu_split_huge_page spans (tdp).
    check_split_loop builds the model and asserts its splits per level equal the spans'."""
    assert run.ok, run.checks
    enable = {step["op"]: step["counts"] for step in run.steps}["enable_dirty_logging"]
    assert enable["kvm_mmu_split_huge_page"] == enable["split_huge_page"] == 32
    cap = open_capture(run.output)
    spans = cap.dataframe("split")
    assert list(spans["level"].unique()) == [2] and len(spans) == 32
    mmu = cap.dataframe("mmu")
    tracepoint = mmu[mmu["event"] == "kvm_mmu_split_huge_page"]
    assert sorted(int(g) << 12 for g in tracepoint["gfn"]) == sorted(int(a) for a in spans["addr"])
    assert cap.manifest["backend"] == backend and cap.manifest["lab"]["recorder_backend"] == backend
    assert {"tdp", "mmu"} <= set(cap.manifest["probes"]["families"])
    assert cap.lost_total() == 0, cap.manifest.get("lost")
    check_split_loop(cap, 64 * MiB, 2 * MiB)  # asserts exact splits; steps = model + whole root restarts (bounded)


@pytest.mark.live
@pytest.mark.slow
def test_x86_tdp_eager_split_under_tracekit_record_with_bcc(tmp_path):
    """bcc on x86 compiles probes/tdp.bpf.c in the guest (--recorder tracefs gives the same counts: docs/lab.md)."""
    run = _run("bcc", tmp_path, "x86")
    _check_x86(run, "bcc")
    assert "kprobe:tdp_mmu_split_huge_page" in open_capture(run.output).manifest["probes"]["attached"]
