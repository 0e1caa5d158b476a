"""Function probes by register on a real kernel without BTF argument names: Debian bookworm's 6.1 in the labs.

6.1's ``kprobe_events`` refuses every BTF-argument fetch ("Invalid fetch argument"), so the guest
writes the same fields by register and the BTF offsets of that kernel (``+80(%di):s32``); the
runs check that each probe attached as resolved and that the fields carry the values the scenario
implies. About 1.5 minutes per lab with a warm cache. Live and slow: they skip with the reason when
QEMU or the route to the Debian mirror is missing, and fail instead under TRACEKIT_REQUIRE_LIVE=1.
"""

from __future__ import annotations

import json

import pytest

from tests import livecheck
from tests.funcprobes.split_loop import restart_excess
from tracekit.capture import open_capture

MiB = 1 << 20


def _run(arch: str, scenario: str, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"bookworm-{arch}") / "lab.tkcap"
    run = livecheck.run_lab_or_skip(arch, scenario, out, kernel="debian:bookworm", timeout=600)
    return run, open_capture(run.output)


def _modes(run) -> dict[str, str]:
    """Each probe's resolution mode, once the run is known to be 6.1's and to have passed its checks."""
    assert run.kernel_release.startswith("6.1.") and run.ok, run.checks
    return {row["probe"]: row["mode"] for row in run.probes["resolution"]}


def _fetch(run, probe: str) -> list[str]:
    (row,) = [r for r in run.probes["resolution"] if r["probe"] == probe]
    return row["fetch"]


@pytest.fixture(scope="module")
def x86_run(tmp_path_factory):
    return _run("x86", "tdp-eager", tmp_path_factory)


@pytest.fixture(scope="module")
def arm64_run(tmp_path_factory):
    return _run("arm64", "lazy", tmp_path_factory)


@pytest.mark.live
@pytest.mark.slow
def test_x86_tdp_probes_attach_by_register_and_read_6_1s_structs(x86_run):
    run, capture = x86_run
    modes = _modes(run)
    assert {p for p, m in modes.items() if m == "register"} == {
        "page_fault", "npf", "tdp_map", "slot_try_split", "mmu_try_split", "tdp_try_split", "split_root",
        "wrprot_slot", "enable_log_dirty", "clear_dirty_masked", "iter_next"}  # fmt: skip
    assert {p for p, m in modes.items() if m == "absent"} >= {"split_huge_page", "recover_huge_pages"}
    assert set(run.probes["attached"]) == {p for p, m in modes.items() if m in ("register", "no-args")}
    assert _fetch(run, "iter_next") == ["level=+80(%di):s32"] and _fetch(run, "tdp_map")[0] == "gfn=+24(%si):u64"
    assert capture.manifest["probes"]["resolution"] == run.probes["resolution"]
    # The eager split's one iterator loop over the 64 MiB slot: 32 huge SPTEs at level 2 under one 1 GiB and one
    # 512 GiB entry, read from struct tdp_iter.level at 6.1's offset. 6.1 allocates under the lock (no restart per
    # split), but a tdp_mmu_iter_cond_resched yield on a busy host restarts the loop from the root: whole restarts
    # on top of the 32/1/1 are the kernel's, anything else is a misread level.
    walks = capture.table("stage2_walk").to_pandas()
    (root,) = walks.index[walks["initiator"] == "tdp_mmu_split_huge_pages_root"]
    assert walks["size"][root] == 64 * MiB
    visits = capture.table("stage2_visit").to_pandas()
    in_root = visits[visits["walk_id"] == walks["walk_id"][root]].groupby("level")["count"].sum().to_dict()
    restart_excess(in_root, {2: 32, 3: 1, 4: 1}, root_level=4)
    assert set(visits["level"]) <= {1, 2, 3, 4}
    calls = capture.table("func_call").to_pandas()
    (split,) = [json.loads(a) for a in calls["args"][calls["name"] == "tdp_try_split"]]
    assert (split["end"] - split["start"], split["target_level"]) == (64 * MiB // 4096, 1)
    goals = {json.loads(a)["goal_level"] for a in calls["args"][calls["name"] == "tdp_map"]}
    assert goals and goals <= {1, 2}


@pytest.mark.live
@pytest.mark.slow
def test_arm64_visitor_of_6_1_by_register(arm64_run):
    """6.1's stage2_map_walker(addr, end, level, ptep, flag, arg): level from x2, the old PTE through x3."""
    run, capture = arm64_run
    modes = _modes(run)
    assert modes["map_walker"] == modes["pgtable_walk"] == modes["stage2_map"] == "register"
    assert modes["split_walker"] == modes["stage2_split"] == "absent"
    assert _fetch(run, "map_walker") == ["level=%x2:u32", "addr=%x0:u64", "old=+0(%x3):u64", "visit=%x4:u32"]
    pass_counts = {step["op"]: step["counts"] for step in run.steps}["dirty_memory_1"]
    assert pass_counts["stage2_map"] == 256 * MiB // 4096  # every first write maps one 4 KiB page
    visits = capture.table("stage2_visit").to_pandas()
    mapped = visits[visits["visitor"] == "stage2_map_walker"].groupby(["level", "kind"])["count"].sum().to_dict()
    assert set(level for level, _kind in mapped) == {1, 2, 3}
    # each 2 MiB block, mapped at populate, is met as a block leaf once (the first write breaks it into a table),
    # then every page of the pass is installed where level 3 held nothing: old PTEs read through x3 (ptep)
    assert mapped[(2, "leaf:block")] == 128 and mapped[(3, "leaf:invalid")] >= 256 * MiB // 4096
    assert mapped[(1, "table_pre:table")] >= pass_counts["stage2_map"]
    walks = capture.table("stage2_walk").to_pandas()
    assert (walks["initiator"] == "stage2_map_walker").sum() == run.counts["stage2_map"]  # walker->cb via x3
