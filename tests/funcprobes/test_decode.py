"""Pairing, walk attribution and aggregation of function-probe events (synthetic, hand-counted)."""

from __future__ import annotations

from tracekit.funcprobes.decode import ProbeEvent, decode_events
from tracekit.funcprobes.kallsyms import parse_kallsyms
from tracekit.funcprobes.stage2 import STAGE2_PROBES, pte_kind
from tracekit.funcprobes.tdp import TDP_PROBES

SYMS = parse_kallsyms("0000000000001000 t stage2_split_walker\n0000000000002000 t stage2_map_walker\n")
BLOCK, TABLE, PAGE = 0x401, 0x403, 0x403  # valid block (type 0), table/page (type 1)


def _walk(ts, cpu, addr, size, cb=0x1000, mmu=1, tid=100):
    return ProbeEvent(ts, cpu, tid, "pgtable_walk", {"addr": addr, "size": size, "flags": 1, "cb": cb, "mmu": mmu,
                                                      "start_level": 1})  # fmt: skip


def _ret(ts, cpu, name, ret=0, tid=100):
    return ProbeEvent(ts, cpu, tid, f"{name}_ret", {"ret": ret})


def _visit(ts, cpu, level, old, visit=1, name="split_walker"):
    return ProbeEvent(ts, cpu, 100, name, {"level": level, "addr": 0, "old": old, "visit": visit})


def _one_block_split(t0, cpu=0):
    """One kvm_pgtable_stage2_split of a 2 MiB block: 1 block visit + 512 page visits."""
    events = [ProbeEvent(t0, cpu, 100, "stage2_split", {"addr": 0x4000_0000, "size": 2 << 20}), _walk(t0 + 1, cpu, 0x4000_0000, 2 << 20)]
    events.append(_visit(t0 + 2, cpu, 2, BLOCK))
    events += [_visit(t0 + 3 + i, cpu, 3, PAGE) for i in range(512)]
    events += [_ret(t0 + 600, cpu, "pgtable_walk"), _ret(t0 + 601, cpu, "stage2_split")]
    return events


def test_pte_kinds():
    assert [pte_kind(0, 3), pte_kind(BLOCK, 2), pte_kind(TABLE, 1), pte_kind(PAGE, 3)] == ["invalid", "block", "table", "page"]


def test_split_walk_is_one_walk_with_aggregated_visits():
    """2 splits -> 2 walks, each with (level 2, leaf:block) x1 and (level 3, leaf:page) x512."""
    decoded = decode_events(_one_block_split(0) + _one_block_split(1000), STAGE2_PROBES, SYMS)
    walks = decoded.tables["stage2_walk"].to_pylist()
    assert [w["walk_id"] for w in walks] == [0, 1]
    assert {w["initiator"] for w in walks} == {"stage2_split_walker"}
    assert [w["duration_ns"] for w in walks] == [599, 599]
    visits = decoded.tables["stage2_visit"].to_pylist()
    assert [(v["walk_id"], v["level"], v["kind"], v["count"]) for v in visits] == [
        (0, 2, "leaf:block", 1), (0, 3, "leaf:page", 512), (1, 2, "leaf:block", 1), (1, 3, "leaf:page", 512)]  # fmt: skip
    splits = decoded.tables["split"].to_pylist()
    assert [(s["addr"], s["size"], s["duration_ns"], s["ret"]) for s in splits] == [(0x4000_0000, 2 << 20, 601, 0)] * 2
    assert decoded.counts["split_walker"] == 1026 and decoded.counts["stage2_split"] == 2


def test_nested_walks_attribute_visits_to_the_innermost():
    """A walk opened inside another on the same CPU takes the visits until it returns."""
    events = [_walk(0, 0, 0, 4096), _visit(1, 0, 3, PAGE), _walk(2, 0, 0, 4096, cb=0x2000),
              _visit(3, 0, 3, PAGE, name="map_walker"), _ret(4, 0, "pgtable_walk"), _visit(5, 0, 3, PAGE),
              _ret(6, 0, "pgtable_walk")]  # fmt: skip
    decoded = decode_events(events, STAGE2_PROBES, SYMS)
    visits = {(v["walk_id"], v["visitor"]): v["count"] for v in decoded.tables["stage2_visit"].to_pylist()}
    assert visits == {(0, "stage2_split_walker"): 2, (1, "stage2_map_walker"): 1}
    durations = {w["walk_id"]: w["duration_ns"] for w in decoded.tables["stage2_walk"].to_pylist()}
    assert durations == {0: 6, 1: 2}


def test_per_thread_pairing_host_walks_and_unpaired_returns():
    """Thread 101's host walk does not close thread 100's walk; a return may come on another CPU."""
    events = [_walk(0, 0, 0, 4096), _walk(1, 1, 0, 4096, mmu=0, tid=101), _ret(2, 1, "pgtable_walk", tid=101),
              _ret(3, 1, "pgtable_walk"), _ret(4, 0, "stage2_split"), _walk(5, 0, 0, 4096)]  # fmt: skip
    decoded = decode_events(events, STAGE2_PROBES, SYMS)
    walks = decoded.tables["stage2_walk"].to_pylist()
    assert [(w["cpu"], w["duration_ns"]) for w in walks] == [(0, 3), (0, -1)]
    assert decoded.counts["host_walks"] == 1 and decoded.counts["unpaired"] == 1


def test_x86_iterator_steps_belong_to_the_split_loop():
    """tdp_iter_next steps inside tdp_mmu_split_huge_pages_root are that walk's visits, even across CPUs."""
    events = [ProbeEvent(0, 0, 7, "split_root", {"start": 0x100000, "end": 0x104000, "target_level": 1}),
              ProbeEvent(1, 0, 7, "iter_next", {"level": 4}), ProbeEvent(2, 1, 7, "iter_next", {"level": 3}),
              ProbeEvent(3, 1, 7, "split_root_ret", {"ret": 0}), ProbeEvent(4, 1, 7, "iter_next", {"level": 1})]  # fmt: skip
    decoded = decode_events(events, TDP_PROBES)
    walk = decoded.tables["stage2_walk"].to_pylist()[0]
    assert (walk["initiator"], walk["addr"], walk["size"], walk["duration_ns"]) == (
        "tdp_mmu_split_huge_pages_root", 0x1_0000_0000, 0x400_0000, 3)
    visits = [(v["walk_id"], v["level"]) for v in decoded.tables["stage2_visit"].to_pylist()]
    assert visits == [(0, 4), (0, 3), (-1, 1)]


def test_x86_split_tracepoint_and_iterator_steps():
    """kvm_mmu_split_huge_page rows: addr = gfn << 12, size from the level; tdp_iter_next counted per level."""
    events = [ProbeEvent(10, 0, 7, "kvm_mmu_split_huge_page", {"gfn": 0x100000, "spte": 0, "level": 2, "errno": 0}),
              ProbeEvent(11, 0, 7, "iter_next", {"level": 2}), ProbeEvent(12, 0, 7, "iter_next", {"level": 2}),
              ProbeEvent(13, 0, 7, "split_huge_page", {"gfn": 0x100200, "level": 2}),
              ProbeEvent(20, 0, 7, "split_huge_page_ret", {"ret": 0})]  # fmt: skip
    decoded = decode_events(events, TDP_PROBES)
    splits = decoded.tables["split"].to_pylist()
    assert [(s["probe"], s["addr"], s["size"], s["duration_ns"]) for s in splits] == [
        ("kvm_mmu_split_huge_page", 0x1_0000_0000, 2 << 20, -1), ("split_huge_page", 0x1_0020_0000, None, 7)]  # fmt: skip
    visits = decoded.tables["stage2_visit"].to_pylist()
    assert [(v["walk_id"], v["level"], v["kind"], v["count"]) for v in visits] == [(-1, 2, "step", 2)]
