"""The documented kernel-matrix cases, replayed: each ``samples/matrix/CASE`` (real lab captures, trimmed to
the families the table reads) gives its committed ``matrix.md`` again, and the figures each case documents."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tracekit.lab import matrix

CASES = Path(__file__).resolve().parents[2] / "samples" / "matrix"


def _refuse(*args, **options):
    raise AssertionError("a sample matrix must not boot anything: a capture or outcome is missing")


def _replay(case: str, tmp_path: Path) -> tuple[dict, list[matrix.Table]]:
    folder = tmp_path / case
    shutil.copytree(CASES / case, folder)  # resuming may tidy a directory: never the committed one
    doc = json.loads((folder / "matrix.json").read_text())
    cells = matrix.plan(**doc["plan"], out=folder)
    outcomes = matrix.run_matrix(doc["plan"]["arch"], cells, run_lab=_refuse)
    return doc, matrix.build_tables(doc["plan"]["arch"], cells, outcomes)


def _values(table: matrix.Table) -> dict[str, list]:
    return {row["label"]: row["values"] for row in table.rows}


DOCS = Path(__file__).resolve().parents[2] / "docs" / "cases"


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if (p / "matrix.json").is_file()))
def test_sample_table_is_golden(case, tmp_path):
    """The table made again from the sample's captures is the committed one, and the case's page shows its
    first table (the summary of a matrix of several scenarios) as it is."""
    doc, tables = _replay(case, tmp_path)
    golden = (CASES / case / "matrix.md").read_text()
    assert matrix.render_markdown(tables, doc["command"]) == golden
    page = next((DOCS / f"{name}.md").read_text() for name in (case, case.rsplit("-", 1)[0])
                if (DOCS / f"{name}.md").is_file())  # one page may show a case per lab (NAME-x86, NAME-arm64)
    first = golden[golden.index("\n|"):].split("\n\n", 1)[0].strip().splitlines()
    assert first and [line for line in first if line not in page] == []


def test_x86_eager_split_where_the_splits_happen(tmp_path):
    """Seeds 3 and 4 (docs/cases/x86-eager-split.md): 64 MiB of THP = 32 huge pages. 5.10 has no eager split and
    6.1 no split on fault: every 4 KiB page of the pass is a full fault; 6.12 splits the 32 at enable (Y) or on
    their first write (N), and the rest of the pass takes the fast path. At CLEAR only Y splits."""
    _doc, (lazy, clear) = _replay("x86-eager-split", tmp_path)
    rows = _values(lazy)
    assert rows["kernel"][0].startswith("5.10.") and rows["kernel"][1].startswith("6.1.")
    assert rows["kvm.eager_page_split"] == ["absent", "N", "Y", "N"]
    split = "`kvmmmu:kvm_mmu_split_huge_page`"
    assert rows[f"enable_dirty_logging: {split}"] == ["n/a: not attached", 0, 32, 0]
    assert rows[f"dirty_memory_1: {split}"] == ["n/a: not attached", 0, 0, 32]
    assert rows["dirty_memory_1: page_fault (`kvm_mmu_page_fault`)"] == [16_384] * 4
    # zapped (5.10, 6.1): each page mapped anew; split (6.12): 32 maps on N, the rest fixed by the fast path
    assert rows["dirty_memory_1: tdp_map (`kvm_tdp_mmu_map`)"] == [16_384, 16_384, 0, 32]
    assert rows["dirty_memory_1: fast_page_fault (`fast_page_fault`)"] == ["n/a: not attached"] * 2 + [16_384] * 2
    assert rows["visits: tdp_iter_next level not read (probe without arguments) step"][0] == 82_941  # 5.10: no BTF
    rows = _values(clear)
    assert rows[f"clear_dirty_log_1: {split}"] == [None, 0, 32, 0]
    assert rows["clear_dirty_log_1: tdp_try_split (`kvm_tdp_mmu_try_split_huge_pages`)"] == [None, 0, 256, 0]
    assert clear.rows[0]["cells"][0].startswith("n/a: scenario tdp-clear is not applicable on 5.10")


def test_arm64_mmu_lock_waits_by_mode(tmp_path):
    """Seed 5 (docs/cases/arm64-mmu-lock.md): without eager splitting, 6.1's map faults wait on each other for
    the write lock and 6.12's (read-locked) never wait; 6.12 splitting at CLEAR makes vCPUs wait in read mode
    and the VMM in write mode; 5.10's spinlock, seen through the qspinlock slow path (no lock:contention_* before
    5.19), makes the vCPUs' faults spin on each other at 2 and 4 vCPUs and never at 1."""
    _doc, tables = _replay("arm64-mmu-lock", tmp_path)
    by_vcpus = {table.scenario: _values(table) for table in tables}
    assert list(by_vcpus) == ["contention@vcpus=1", "contention@vcpus=2", "contention@vcpus=4"]
    waits = [rows["mmu_lock waits"] for rows in by_vcpus.values()]
    assert waits == [[0, 0, 0, 288], [18_447, 3_907, 0, 284], [20_090, 3_449, 0, 282]]
    for rows in by_vcpus.values():
        assert rows["kernel"][0].startswith("5.10.") and rows["runs"][0] == "1 of 1"
    # a spinlock: every 5.10 wait is a spin, by the vCPUs (one at 2 vCPUs by another process); none at 1 vCPU,
    # where the row is left out (zero on every kernel)
    assert "mmu_lock waits, spin, by vCPU" not in by_vcpus["contention@vcpus=1"]
    assert [rows["mmu_lock waits, spin, by vCPU"][0] for rows in list(by_vcpus.values())[1:]] == [18_446, 20_090]
    stage2_map = "clear_while_touching: stage2_map (`kvm_pgtable_stage2_map`)"
    assert [rows[stage2_map][:2] for rows in by_vcpus.values()] == [[65_535] * 2, [65_534] * 2, [65_532] * 2]
    two, four = by_vcpus["contention@vcpus=2"], by_vcpus["contention@vcpus=4"]
    assert two["mmu_lock waits, write, by vCPU"] == [0, 3_907, 0, 0]
    assert four["mmu_lock waits, read, by vCPU"] == [0, 0, 0, 144]
    assert four["mmu_lock waits, write, by VMM in clear_while_touching"] == [0, 0, 0, 138]
    assert [rows["clear_while_touching: relax_perms (`kvm_pgtable_stage2_relax_perms`)"][3]
            for rows in by_vcpus.values()] == [65_535, 32_767, 16_383]
    assert two["clear_while_touching: guest_abort (`kvm_handle_guest_abort`)"][1:3] == [65_536, 65_536]


def test_arm64_mmu_lock_run_again_varies_but_keeps_its_direction(tmp_path):
    """Seed 5 again (docs/cases/arm64-mmu-lock.md, "Run again"): 5.10 and 6.1 back to back, the same map faults;
    the wait counts moved far from the first matrix's (5.10 18,446 -> 33,453 at 2 vCPUs, 6.1 3,907 -> 20,978),
    but with 1 vCPU nothing waits and with 2 or 4 the spinlock's vCPUs wait more often than 6.1's writers."""
    _doc, tables = _replay("arm64-mmu-lock-rerun", tmp_path)
    by_vcpus = {table.scenario: _values(table) for table in tables}
    assert list(by_vcpus) == ["contention@vcpus=1", "contention@vcpus=2", "contention@vcpus=4"]
    stage2_map = "clear_while_touching: stage2_map (`kvm_pgtable_stage2_map`)"
    assert [rows[stage2_map] for rows in by_vcpus.values()] == [[65_535] * 2, [65_534] * 2, [65_532] * 2]
    assert [rows["mmu_lock waits"] for rows in by_vcpus.values()] == [[0, 0], [33_453, 20_978], [33_572, 7_613]]
    for rows in list(by_vcpus.values())[1:]:
        assert rows["kernel"][0].startswith("5.10.") and rows["kernel"][1].startswith("6.1.")
        assert rows["mmu_lock waits, spin, by vCPU"][1] == rows["mmu_lock waits, write, by vCPU"][0] == 0
        assert rows["mmu_lock waits, spin, by vCPU"][0] > rows["mmu_lock waits, write, by vCPU"][1]


def test_newest_kernel_runs_every_x86_scenario(tmp_path):
    """Seed 6 (docs/cases/newest-kernel.md), x86: trixie-backports 7.3 runs all six scenarios and meets every
    exact count; huge pages are recovered in place at disable (kvm_tdp_mmu_recover_huge_pages, 6.13+)."""
    _doc, tables = _replay("newest-kernel-x86", tmp_path)
    assert [t.scenario for t in tables] == ["tdp-eager", "tdp-clear", "tdp-lazy", "tdp-hugetlb-2m", "tdp-4k", "tdp-1g"]
    for table in tables:
        rows = _values(table)
        assert rows["runs"] == ["1 of 1"] and rows["kernel"][0].startswith("7.3.")
        checks = [row["cells"][0] for row in table.rows if row["kind"] == "check"]
        assert checks and all("not met" not in c and "never fired" not in c for c in checks), checks
        assert rows["disable_dirty_logging: recover_huge_pages (`kvm_tdp_mmu_recover_huge_pages`)"] == [1]
    one_gib = _values(tables[-1])
    assert one_gib["enable_dirty_logging: `kvmmmu:kvm_mmu_split_huge_page`"] == [513]


#: The arm64 scenarios the newest-kernel-arm64 matrix has run, in its order (docs/cases/newest-kernel.md says
#: which are still to run).
ARM64_SCENARIOS = ["eager-enable", "eager-chunk-1g", "eager-clear", "lazy", "rebuild", "resplit", "rebuild-shared",
                   "contention", "overhead", "workload", "nvhe", "hugetlb-1g", "hugetlb-2m", "4k"]


def test_newest_kernel_arm64_scenarios_meet_their_counts(tmp_path):
    """Seed 6 (docs/cases/newest-kernel.md), arm64: on trixie-backports 7.3 every probe attached and each scenario
    run met its exact counts and the model's visits: the split walker's 128 + 65,536 per 256 MiB of blocks, at
    enable, in one 1 GiB chunk or at CLEAR; 65,536 more on resplit; none without eager splitting."""
    _doc, tables = _replay("newest-kernel-arm64", tmp_path)
    assert [t.scenario for t in tables] == ARM64_SCENARIOS
    by = {}
    for table in tables:
        rows = by[table.scenario] = _values(table)
        assert rows["runs"] == ["1 of 1"] and rows["kernel"][0].startswith("7.3.")
        assert rows["probes not attached"] == ["none"] and rows["events lost"] == [0]
        checks = [row["cells"][0] for row in table.rows if row["kind"] == "check"]
        assert checks and all("not met" not in c and "never fired" not in c for c in checks), checks
    walker = "visits: stage2_split_walker level {} leaf:{}"
    for name in ("eager-enable", "eager-chunk-1g", "eager-clear"):
        assert by[name]["check: split_walker (model)"] == ["65,664 (ok: expected 65,664)"]
        assert (by[name][walker.format(2, "block")], by[name][walker.format(3, "page")]) == ([128], [65_536])
    assert by["eager-enable"]["check: stage2_split (exact)"] == ["128 (ok: expected 128)"]
    assert by["eager-chunk-1g"]["check: stage2_split (exact)"] == ["1 (ok: expected 1)"]
    assert by["eager-clear"]["check: stage2_split (exact)"] == ["1,024 (ok: expected 1,024)"]
    assert by["resplit"]["check: split_walker (model)"] == ["131,200 (ok: expected 131,200)"]
    assert by["resplit"][walker.format(3, "page")] == [131_072]
    assert by["lazy"]["check: stage2_split (exact)"] == ["0 (ok: expected 0)"]
    assert by["lazy"]["dirty_memory_1: stage2_map (`kvm_pgtable_stage2_map`)"] == [65_536]
    assert by["rebuild"]["check: map_walker fired (evidence)"] == [66_049]
    assert by["rebuild-shared"]["check: map_walker fired (evidence)"] == [66_501]
    assert by["contention"]["mmu_lock waits, write, by VMM in clear_while_touching"] == [12]
    assert by["overhead"]["check: split_walker (exact)"] == ["65,664 (ok: expected 65,664)"]
    assert by["workload"]["check: stage2_map fired (evidence)"] == [16_454]
    # nVHE: the host kernel still splits a non-protected guest's stage-2, as with VHE
    assert by["nvhe"]["check: split_walker (model)"] == ["65,664 (ok: expected 65,664)"]
    assert by["nvhe"]["enable_dirty_logging: stage2_split (`kvm_pgtable_stage2_split`)"] == [128]
    # without huge pages every page faults in, and the 128 split calls at enable split nothing: 65,536 page visits
    assert by["4k"]["populate: guest_abort (`kvm_handle_guest_abort`)"] == [65_671]
    assert by["4k"]["check: split_walker (model)"] == ["65,536 (ok: expected 65,536)"]
    # 2 MiB hugetlb pages split at enable as THP blocks do
    assert by["hugetlb-2m"]["check: split_walker (model)"] == ["65,664 (ok: expected 65,664)"]
    assert by["hugetlb-2m"]["enable_dirty_logging: stage2_split (`kvm_pgtable_stage2_split`)"] == [128]
    # one 1 GiB block split in 2 MiB chunks: the block, the 512 blocks of its new table, their 262,144 pages
    one_gib = by["hugetlb-1g"]
    assert one_gib["check: stage2_split (exact)"] == ["512 (ok: expected 512)"]
    assert [one_gib[walker.format(level, kind)] for level, kind in ((1, "block"), (2, "block"), (3, "page"))] == [
        [1], [512], [262_144]]
