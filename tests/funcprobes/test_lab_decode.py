"""Real lab guest traces decoded by the one function-probe decoder (the recorder's numpy path).

The two archives in ``data/`` are ``tracekit lab ... --keep-raw`` guest results (Debian's 6.12.107 cloud kernels
under QEMU 7.2 TCG, 2026-11-21) cut down to a few whole ring-buffer pages per CPU, so the cut also leaves
returns whose entry was cut off and entries whose return was:

- ``lab-arm64-eager-cut``: scenario eager-enable, CPU 0 pages 0-3 (faults that map the 2 MiB blocks) and 9-33
  (inside the eager split at dirty-log enable), CPU 1 pages 0-7; kallsyms cut to the symbols around the walkers.
- ``lab-x86-tdp-eager-cut``: scenario tdp-eager, CPU 1 pages 0-5 and 90-101 (the write-protect pass's start,
  the split loop), CPU 0 pages 0-2.

The expected figures are those the lab's former per-event decoder (``decode_events``) gave for the same pages,
checked equal table for table before it was removed; the whole walks among them visit what the model predicts.
"""

from __future__ import annotations

import json
from pathlib import Path

from tracekit.host import parse_kallsyms
from tracekit.funcprobes.stage2_probes import STAGE2_PROBES
from tracekit.funcprobes.tdp_probes import TDP_PROBES
from tracekit.lab import results
from tracekit.model.accounting import WalkStats
from tracekit.model.split import EagerSplitter
from tracekit.model.stage2 import Stage2PageTable
from tracekit.model.tdp import TdpPageTable

DATA = Path(__file__).parent / "data"
MiB = 1 << 20


def _decode(tmp_path: Path, name: str, probes: tuple):
    guest = results.unpack(DATA / f"{name}.tar.gz", tmp_path / name)
    meta = json.loads((guest / "meta.json").read_text())
    kallsyms = guest / "kallsyms.txt"
    symbols = parse_kallsyms(kallsyms.read_text()) if kallsyms.exists() else None
    trace = results.read_guest_trace(guest)
    tables, counts = results.decode_functions(trace.arrays, probes, symbols, meta["vmm_pid"], meta["vmm_tids"])
    return trace, symbols, meta, {family: table.to_pandas() for family, table in tables.items()}, counts


def _timing(frame) -> tuple[int, int, int]:
    """(rows, calls still open (-1), sum of the paired durations in ns): the pairing's fingerprint."""
    return len(frame), int((frame["duration_ns"] == -1).sum()), int(frame["duration_ns"][frame["duration_ns"] >= 0].sum())


def _visits_by_initiator(tables) -> dict[tuple, int]:
    visits = tables["stage2_visit"].merge(tables["stage2_walk"][["walk_id", "initiator"]], on="walk_id", how="left")
    visits["initiator"] = visits["initiator"].astype(object).fillna("-")
    grouped = visits.groupby(["initiator", "visitor", "level", "kind"], observed=True)["count"].sum()
    return {(str(i), str(v), int(lvl), str(k)): int(n) for (i, v, lvl, k), n in grouped.items()}


def test_arm64_guest_trace(tmp_path):
    """Faults: 110 guest aborts, each with a host user-page-table walk (111 dropped, mmu 0) and a stage-2 map walk
    (2 invalid level-1 leaves, then 109 TABLE_PRE once the level-2 table exists). Split: the visits of a split
    whose walk entry fell in the cut pages count outside any walk (walk -1) and its 2 returns are unpaired; the
    next split walk is whole and visits exactly what the model's split of one 2 MiB block does (1 block, 512 pages,
    512 invalid leaves built by the map walker); the one after it opens (1 block, 132 pages) and its return is cut
    off (duration -1)."""
    _trace, _symbols, meta, tables, counts = _decode(tmp_path, "lab-arm64-eager-cut", STAGE2_PROBES)
    assert counts == {"guest_abort": 110, "host_walks": 111, "map_walker": 1416, "pgtable_walk": 224,
                      "split_walker": 1158, "stage2_map": 111, "stage2_split": 2, "unpaired": 2}  # fmt: skip
    assert counts["pgtable_walk"] - counts["host_walks"] == len(tables["stage2_walk"]) == 113
    assert _timing(tables["stage2_walk"]) == (113, 1, 17_460_912)
    assert _timing(tables["split"]) == (2, 1, 9_284_640)
    assert _timing(tables["fault"]) == (110, 0, 364_508_272)
    assert _timing(tables["func_call"]) == (111, 0, 10_037_776)
    assert _visits_by_initiator(tables) == {
        ("stage2_map_walker", "stage2_map_walker", 1, "leaf:invalid"): 2,
        ("stage2_map_walker", "stage2_map_walker", 1, "table_pre:table"): 109,
        ("stage2_map_walker", "stage2_map_walker", 2, "leaf:invalid"): 54,
        ("stage2_map_walker", "stage2_map_walker", 2, "table_pre:table"): 57,
        ("stage2_map_walker", "stage2_map_walker", 3, "leaf:invalid"): 58,
        ("stage2_split_walker", "stage2_split_walker", 2, "leaf:block"): 1 + 1,
        ("stage2_split_walker", "stage2_split_walker", 3, "leaf:page"): 512 + 132,
        ("stage2_split_walker", "stage2_map_walker", 3, "leaf:invalid"): 512 + 512,
        ("-", "stage2_split_walker", 3, "leaf:page"): 512,
        ("-", "stage2_map_walker", 3, "leaf:invalid"): 112,
    }  # fmt: skip
    assert sum(_visits_by_initiator(tables).values()) == counts["split_walker"] + counts["map_walker"] == 2574
    assert set(tables["fault"]["pid"]) == {meta["vmm_pid"]} and set(tables["fault"]["tid"]) <= set(meta["vmm_tids"])

    walks = tables["stage2_walk"]
    (whole,) = walks[(walks["initiator"] == "stage2_split_walker") & (walks["duration_ns"] >= 0)].itertuples()
    pgt, stats = Stage2PageTable(), WalkStats()
    pgt.populate(int(whole.addr), int(whole.size), 2 * MiB)
    assert EagerSplitter(pgt, 2 * MiB).split_huge_pages(int(whole.addr), int(whole.addr + whole.size), stats) == 0
    visits = tables["stage2_visit"][tables["stage2_visit"]["walk_id"] == whole.walk_id]
    measured = {(str(v), int(lvl), str(k)): int(n) for v, lvl, k, n in visits[["visitor", "level", "kind", "count"]].itertuples(index=False)}
    assert measured == {("stage2_split_walker", 2, "leaf:block"): stats.get("leaf", 2),
                        ("stage2_split_walker", 3, "leaf:page"): stats.get("leaf", 3),
                        ("stage2_map_walker", 3, "leaf:invalid"): stats.get("build", 3)}  # fmt: skip


def test_x86_guest_trace(tmp_path):
    """The split loop whole: 32 kvm_mmu_split_huge_page tracepoints at level 2 (duration -1 by nature), each matched
    by a tdp_mmu_split_huge_page span of the same 2 MiB page; the loop's iterator steps 64/33/33 at levels 2/3/4 as
    the model predicts (tests/lab/test_samples.py); the write-protect pass's steps in the kept pages."""
    _trace, _symbols, _meta, tables, counts = _decode(tmp_path, "lab-x86-tdp-eager-cut", TDP_PROBES)
    assert counts == {"clear_dirty_masked": 9, "enable_log_dirty": 9, "fast_page_fault": 40, "iter_next": 2959,
                      "kvm_mmu_split_huge_page": 32, "npf": 41, "page_fault": 41, "slot_try_split": 1,
                      "split_huge_page": 32, "split_root": 1, "tdp_map": 40, "tdp_try_split": 1, "wrprot_slot": 1}  # fmt: skip
    splits = tables["split"]
    tracepoint, spans = splits[splits["probe"] == "kvm_mmu_split_huge_page"], splits[splits["probe"] == "split_huge_page"]
    assert len(tracepoint) == len(spans) == 32 and (tracepoint["duration_ns"] == -1).all()
    assert sorted(tracepoint["addr"]) == sorted(spans["addr"]) and set(splits["size"]) == {2 * MiB}
    assert set(splits["level"]) == {2} and set(tracepoint["ret"]) == {0}
    assert _timing(spans) == (32, 0, 937_458)
    assert _timing(tables["stage2_walk"]) == (2, 0, 32_745_876)
    assert _timing(tables["fault"]) == (82, 2, 202_554_065)
    assert _timing(tables["func_call"]) == (100, 2, 9_475_834)
    by_walk = _visits_by_initiator(tables)
    pgt, stats = TdpPageTable(), WalkStats()
    pgt.populate(1 << 32, 64 * MiB, 2 * MiB)
    pgt.split_huge_pages(1 << 32, (1 << 32) + 64 * MiB, stats)
    model = {level: stats.get("entries", level) for level in range(1, 6) if stats.get("entries", level)}
    assert {k[2]: n for k, n in by_walk.items() if k[0] == "tdp_mmu_split_huge_pages_root"} == model == {2: 64, 3: 33, 4: 33}
    assert stats.get("splits", 2) == len(tracepoint)
    assert {k[2]: n for k, n in by_walk.items() if k[0] == "kvm_tdp_mmu_wrprot_slot"} == {1: 2132, 2: 4, 3: 1, 4: 1}
    assert {k[2]: n for k, n in by_walk.items() if k[0] == "-"} == {1: 561, 2: 32, 3: 49, 4: 49}
    assert sum(by_walk.values()) == counts["iter_next"]
