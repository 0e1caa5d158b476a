"""Replay the real lab captures in samples/ and check them against the reference model, count for count.

The captures were made with ``tracekit lab`` on Debian's 6.12.107 cloud kernels under QEMU 7.2 TCG
(see samples/README.md). Counts under emulation are exact; these tests never look at durations.
Their tables came from the lab's former per-event decoder; the recorder's decoder that replaced it gives
the same tables on real guest pages (tests/funcprobes/test_lab_decode.py), but for the size of the x86
``split_huge_page`` spans (null here, the huge page's size now), which these tests do not read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tracekit.capture import open_capture
from tracekit.lab.arm64_vm import DATA_IPA
from tracekit.model.accounting import WalkStats
from tracekit.model.split import EagerSplitter
from tracekit.model.stage2 import Stage2PageTable
from tracekit.model.tdp import TdpPageTable

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
MiB = 1 << 20
SLOT = 256 * MiB


def _capture(name: str):
    path = SAMPLES / f"{name}.tkcap"
    if not path.exists():
        pytest.fail(f"sample {path.name} is missing from samples/")
    return open_capture(path)


def _visits(cap, visitor: str, initiator: str | None = None) -> dict[tuple[int, str], int]:
    visits = cap.dataframe("stage2_visit")
    visits = visits[visits["visitor"] == visitor]
    if initiator is not None:
        walks = cap.dataframe("stage2_walk")[["walk_id", "initiator"]]
        visits = visits.merge(walks, on="walk_id")
        visits = visits[visits["initiator"] == initiator]
    grouped = visits.groupby(["level", "kind"], observed=True)["count"].sum()
    return {key: int(n) for key, n in grouped.items()}


def _model_eager(chunk_ranges: list[tuple[int, int]]) -> WalkStats:
    pgt = Stage2PageTable()
    pgt.populate(DATA_IPA, SLOT, 2 * MiB)
    splitter, stats = EagerSplitter(pgt, 2 * MiB), WalkStats()
    for start, end in chunk_ranges:
        assert splitter.split_huge_pages(start, end, stats) == 0
    return stats


def test_arm64_eager_split_at_enable_matches_the_model():
    """256 MiB of 2 MiB blocks, chunk 2 MiB: 128 split walks; 128 block visits at level 2 + 128 x 512 pages at level 3."""
    cap = _capture("lab-arm64-eager-enable")
    assert cap.manifest["source"]["kind"] == "lab"
    stats = _model_eager([(DATA_IPA, DATA_IPA + SLOT)])
    splits = cap.dataframe("split")
    assert len(splits) == stats.walks == 128
    assert set(splits["size"]) == {2 * MiB} and set(splits["ret"]) == {0}
    measured = _visits(cap, "stage2_split_walker")
    assert measured == {(2, "leaf:block"): stats.get("leaf", 2), (3, "leaf:page"): stats.get("leaf", 3)}
    assert measured == {(2, "leaf:block"): 128, (3, "leaf:page"): 65_536}
    # the map walker inside kvm_pgtable_stage2_create_unlinked fills each new table: 512 invalid leaves
    built = _visits(cap, "stage2_map_walker", initiator="stage2_split_walker")
    assert built == {(3, "leaf:invalid"): stats.get("build", 3)} == {(3, "leaf:invalid"): 65_536}


def test_arm64_eager_split_at_clear_matches_the_model():
    """Manual protect + initially-set: one kvm_mmu_split_huge_pages per 64-page word (256 KiB) -> 1,024 split walks."""
    cap = _capture("lab-arm64-eager-clear")
    words = [(DATA_IPA + i * 256 * 1024, DATA_IPA + (i + 1) * 256 * 1024) for i in range(SLOT // (256 * 1024))]
    stats = _model_eager(words)
    assert len(cap.dataframe("split")) == stats.walks == 1024
    measured = _visits(cap, "stage2_split_walker")
    assert measured == {(2, "leaf:block"): stats.get("leaf", 2), (3, "leaf:page"): stats.get("leaf", 3)}
    assert sum(measured.values()) == 65_664


def test_arm64_block_rebuild_after_logging_stops():
    """After the split and logging off, each 2 MiB write fault maps a block over the level-3 table."""
    cap = _capture("lab-arm64-rebuild")
    assert len(cap.dataframe("split")) == 128
    walks = cap.dataframe("stage2_walk")
    big_maps = walks[(walks["initiator"] == "stage2_map_walker") & (walks["size"] == 2 * MiB)]
    visits = cap.dataframe("stage2_visit").merge(big_maps[["walk_id"]], on="walk_id")
    rebuilt = visits[(visits["level"] == 2) & (visits["kind"] == "table_pre:table")]["count"].sum()
    faults = cap.dataframe("fault")
    # every 2 MiB map after the split replaces a level-3 table by a block; the faults that did not
    # map (a racing or spurious fault) are the difference, never more rebuilds than faults
    assert 0 < rebuilt <= len(faults[faults["ts_ns"] > cap.dataframe("split")["ts_ns"].max()])
    assert rebuilt == 127


@pytest.mark.parametrize("name", ["lab-x86-tdp-eager", "lab-x86-tdp-lazy", "lab-x86-tdp-clear"])
def test_x86_tdp_splits_match_the_model(name):
    """64 MiB of THP as 2 MiB SPTEs: 32 kvm_mmu_split_huge_page at level 2, at enable (eager) or on fault (lazy)."""
    cap = _capture(name)
    pgt, stats = TdpPageTable(), WalkStats()
    pgt.populate(1 << 32, 64 * MiB, 2 * MiB)
    pgt.split_huge_pages(1 << 32, (1 << 32) + 64 * MiB, stats)
    splits = cap.dataframe("split")
    tracepoint = splits[splits["probe"] == "kvm_mmu_split_huge_page"]
    assert len(tracepoint) == stats.get("splits", 2) == 32
    assert set(tracepoint["level"]) == {2} and set(tracepoint["ret"]) == {0}
    spans = splits[splits["probe"] == "split_huge_page"]
    assert sorted(spans["addr"]) == sorted(tracepoint["addr"])


def test_x86_clear_path_global_symbol_that_never_fires():
    """Debian 6.12 inlines kvm_mmu_try_split_huge_pages into its CLEAR caller: attached, never hit, while
    kvm_tdp_mmu_try_split_huge_pages runs once per 64-page mask word (64 MiB / 256 KiB = 256)."""
    cap = _capture("lab-x86-tdp-clear")
    assert "mmu_try_split" in cap.manifest["probes"]["attached"]
    calls = cap.dataframe("func_call")
    names = calls["name"].astype(str)
    assert (names == "mmu_try_split").sum() == 0
    assert (names == "tdp_try_split").sum() == 256 == (names == "enable_log_dirty").sum()


@pytest.mark.slow
def test_arm64_1g_block_split_in_2m_chunks_matches_the_model():
    """A 1 GiB hugetlb page mapped as one level-1 block, split in 2 MiB chunks: the cache holds 2 tables, so the
    first chunk turns the block into a table of 2 MiB blocks (force_pte off) and every chunk then splits one of them:
    512 walks, 1 + 512 block visits, 262,144 page visits, and the tables built by the map walker."""
    cap = _capture("lab-arm64-hugetlb-1g")
    pgt = Stage2PageTable()
    pgt.populate(DATA_IPA, 1 << 30, 1 << 30)
    stats = WalkStats()
    assert EagerSplitter(pgt, 2 * MiB).split_huge_pages(DATA_IPA, DATA_IPA + (1 << 30), stats) == 0
    assert len(cap.dataframe("split")) == stats.walks == 512
    measured = _visits(cap, "stage2_split_walker")
    assert measured == {(1, "leaf:block"): stats.get("leaf", 1), (2, "leaf:block"): stats.get("leaf", 2),
                        (3, "leaf:page"): stats.get("leaf", 3)}  # fmt: skip
    assert measured[(3, "leaf:page")] == 262_144
    built = _visits(cap, "stage2_map_walker", initiator="stage2_split_walker")
    assert built == {(2, "leaf:invalid"): stats.get("build", 2), (3, "leaf:invalid"): stats.get("build", 3)}


@pytest.mark.parametrize("name,size,page", [("lab-x86-tdp-eager", 64 * MiB, 2 * MiB), ("lab-x86-tdp-1g", 1 << 30, 1 << 30)])
def test_x86_split_loop_iterator_steps_match_the_model(name, size, page):
    """tdp_iter_next steps inside tdp_mmu_split_huge_pages_root, per level, equal the model's iterator positions,
    including the restart from the root after each split's lock drop (64 MiB: 64/33/33 at levels 2/3/4;
    1 GiB: 1,024/514/514), and the splits per level (32 at level 2; 512 at level 2 + 1 at level 3)."""
    cap = _capture(name)
    pgt, stats = TdpPageTable(), WalkStats()
    pgt.populate(1 << 32, size, page)
    pgt.split_huge_pages(1 << 32, (1 << 32) + size, stats)
    walks = cap.dataframe("stage2_walk")
    loop = walks[walks["initiator"] == "tdp_mmu_split_huge_pages_root"]
    assert len(loop) == stats.walks == 1
    visits = cap.dataframe("stage2_visit").merge(loop[["walk_id"]], on="walk_id")
    measured = {int(level): int(n) for level, n in visits.groupby("level")["count"].sum().items()}
    assert measured == {level: stats.get("entries", level) for level in range(1, 6) if stats.get("entries", level)}
    splits = cap.dataframe("split")
    events = splits[splits["probe"] == "kvm_mmu_split_huge_page"]
    assert {int(k): int(n) for k, n in events.groupby("level").size().items()} == {
        level: stats.get("splits", level) for level in range(1, 6) if stats.get("splits", level)}


def test_arm64_mmu_lock_contention_between_vcpus_and_clear():
    """2 vCPUs write while the VMM clears the log: on the mmu_lock (struct kvm address from the dirty-log probe +
    offsetof(struct kvm, mmu_lock) from BTF) vCPU threads wait as readers (faults) and the VMM's main thread as
    writer (KVM_CLEAR_DIRTY_LOG), and only inside the CLEAR step."""
    cap = _capture("lab-arm64-contention")
    lab = cap.manifest["lab"]
    assert len(lab["mmu_lock_addrs"]) == 1
    locks = cap.dataframe("lock")
    mmu = locks[locks["lock_addr"].isin(lab["mmu_lock_addrs"])]
    main_tid = cap.manifest["target"]["pids"][0]
    readers = mmu[mmu["flags_name"] == "SPIN|READ"]
    writers = mmu[mmu["flags_name"] == "SPIN|WRITE"]
    assert len(readers) > 0 and len(writers) > 0 and len(readers) + len(writers) == len(mmu)
    assert set(writers["tid"]) == {main_tid} and main_tid not in set(readers["tid"])
    clear = next(step for step in lab["steps"] if step["op"] == "clear_while_touching")
    assert mmu["ts_ns"].between(clear["begin_ns"], clear["end_ns"]).all()
    assert lab["lock_contention"]["mmu_lock SPIN|WRITE"]["waits"] == len(writers)


def test_arm64_faulting_blocks_in_matches_the_model():
    """The 128 write faults that map 2 MiB blocks before any split: the first installs the level-2 table (one invalid
    level-1 leaf), the other 127 find it (TABLE_PRE); each visits its invalid level-2 entry, as model.map_range says."""
    from tracekit.model.stage2_ops import map_range

    cap = _capture("lab-arm64-eager-enable")
    stats = map_range(Stage2PageTable(), DATA_IPA, SLOT, 2 * MiB)
    walks = cap.dataframe("stage2_walk")
    maps = walks[(walks["initiator"] == "stage2_map_walker") & (walks["size"] == 2 * MiB)]
    assert len(maps) == stats.walks == 128
    visits = cap.dataframe("stage2_visit").merge(maps[["walk_id"]], on="walk_id")
    measured = {(int(lvl), kind): int(n) for (lvl, kind), n in visits.groupby(["level", "kind"], observed=True)["count"].sum().items()}
    assert measured == {(1, "leaf:invalid"): stats.get("leaf", 1), (1, "table_pre:table"): stats.get("table_pre", 1),
                        (2, "leaf:invalid"): stats.get("leaf", 2)}  # fmt: skip


@pytest.mark.parametrize("name,expected", [("lab-arm64-eager-enable", 65_664), ("lab-arm64-eager-clear", 65_664)])
def test_lab_check_of_split_visits_comes_from_the_model(name, expected):
    """The lab's split_walker expectation is the model's for the run's own split calls under the walk flags its
    kernel passed: Debian's kernel passes LEAF alone, so the no-skip model, 128 x (1 + 512)."""
    from tracekit.lab import runner, scenarios

    cap = _capture(name)
    scenario = scenarios.get(cap.manifest["workload"]["scenario"]["name"], "arm64")
    counts = {"stage2_split": len(cap.dataframe("split")), "split_walker": expected}
    checks = runner.scenario_checks(scenario, cap.manifest["kernel_release"], counts, {}, SAMPLES / f"{name}.tkcap")
    model = next(check for check in checks if check["count"] == "split_walker")
    assert model == {"count": "split_walker", "kind": "model", "expected": expected, "measured": expected, "ok": True,
                     "applicable": True, "reason": "", "model": "model_no_skip", "walk_flags": "LEAF"}  # fmt: skip
    assert all(check["ok"] for check in checks)


def test_resplit_walks_already_split_memory_as_the_model_says():
    """Debian's 6.12: the second enable's 128 split calls find every block already split to 4 KiB pages and visit
    their 65,536 level-3 entries (nothing to split): the lab's check is the no-skip model's 131,200 in all."""
    from tracekit.lab import runner, scenarios

    cap = _capture("lab-arm64-resplit")
    counts = {"stage2_split": len(cap.dataframe("split")), "split_walker": 131_200}
    checks = runner.scenario_checks(scenarios.get("resplit", "arm64"), cap.manifest["kernel_release"], counts, {},
                                    SAMPLES / "lab-arm64-resplit.tkcap")  # fmt: skip
    assert [(c["count"], c["expected"], c["ok"]) for c in checks] == [("stage2_split", 256, True), ("split_walker", 131_200, True)]
    second = cap.dataframe("stage2_walk").sort_values("ts_ns")
    second = second[second["initiator"] == "stage2_split_walker"].iloc[128:]
    assert _visits_of(cap, second) == {(3, "leaf:page"): 65_536}


def _visits_of(cap, walks) -> dict[tuple[int, str], int]:
    visits = cap.dataframe("stage2_visit").merge(walks[["walk_id"]], on="walk_id")
    visits = visits[visits["visitor"] == "stage2_split_walker"]
    return {(int(level), kind): int(n) for (level, kind), n in visits.groupby(["level", "kind"], observed=True)["count"].sum().items()}


def test_rebuild_with_two_vcpus_meets_the_invalid_window():
    """Debian's 6.12 installs the block first: 128 replacements, 2 steps each unmapped in the model; the other
    vCPU's map walks that found the entry invalid during a replacement are counted (racy, recorded here)."""
    from tracekit.analysis.coalescing import coalesce_summary

    cap = _capture("lab-arm64-rebuild-shared")
    summary = coalesce_summary(cap.dataframe("stage2_walk"), cap.dataframe("stage2_visit"))
    assert (summary["rebuilds"], summary["window_hits"], summary["rebuilds_hit"]) == (128, 241, 14)
    assert summary["model"]["new"]["unmapped_steps"] == 256 and summary["model"]["old"]["unmapped_steps"] == 128 * 515
