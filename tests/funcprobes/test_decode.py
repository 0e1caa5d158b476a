"""The one function-probe decoder: pairing, walk attribution and aggregation (synthetic, hand-counted).

Events are given as tracefs records (``common_pid`` the thread, ``ts_ns``, ``cpu``, ``tgid`` and the probe's
fields) keyed ``group:event``, as the recorder's tracefs backend and the labs hand them to
:meth:`~tracekit.funcprobes.funcprobe_families.FunctionProbeFamily.decode_tracefs`.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tracekit.funcprobes.funcprobe_families import Stage2Family, family_for
from tracekit.host import parse_kallsyms
from tracekit.funcprobes.stage2_probes import STAGE2_PROBES, pte_kind
from tracekit.funcprobes.tdp_probes import TDP_PROBES
from tracekit.lab.results import decode_functions

SYMS = parse_kallsyms("0000000000001000 t stage2_split_walker\n0000000000002000 t stage2_map_walker\n")
BLOCK, TABLE, PAGE = 0x401, 0x403, 0x403  # valid block (type 0), table/page (type 1)
_SIGNED = ("level", "ret", "errno", "start_level")


def arrays(events: list[tuple[int, int, int, str, dict]]) -> dict[str, np.ndarray]:
    """(ts, cpu, tid, event name, fields) -> one record array per event, as ftrace_pages decodes them."""
    grouped: dict[str, list] = defaultdict(list)
    for event in events:
        grouped[event[3]].append(event)
    out = {}
    for name, rows in grouped.items():
        fields = list(rows[0][4])
        dtype = [("common_pid", "<i4"), ("ts_ns", "<i8"), ("cpu", "<i4"), ("tgid", "<i4")]
        dtype += [(f, "<i8" if f in _SIGNED else "<u8") for f in fields]
        out[f"tk:{name}"] = np.array([(tid, ts, cpu, tid, *(f[k] for k in fields)) for ts, cpu, tid, _, f in rows], dtype)
    return out


def _walk(ts, cpu, addr, size, cb=0x1000, mmu=1, tid=100):
    return (ts, cpu, tid, "pgtable_walk", {"addr": addr, "size": size, "flags": 1, "cb": cb, "mmu": mmu, "start_level": 1})


def _ret(ts, cpu, name, ret=0, tid=100):
    return (ts, cpu, tid, f"{name}_ret", {"ret": ret})


def _visit(ts, cpu, level, old, visit=1, name="split_walker", tid=100):
    return (ts, cpu, tid, name, {"level": level, "addr": 0, "old": old, "visit": visit})


def _one_block_split(t0, cpu=0):
    """One kvm_pgtable_stage2_split of a 2 MiB block: 1 block visit + 512 page visits."""
    events = [(t0, cpu, 100, "stage2_split", {"addr": 0x4000_0000, "size": 2 << 20}), _walk(t0 + 1, cpu, 0x4000_0000, 2 << 20)]
    events.append(_visit(t0 + 2, cpu, 2, BLOCK))
    events += [_visit(t0 + 3 + i, cpu, 3, PAGE) for i in range(512)]
    events += [_ret(t0 + 600, cpu, "pgtable_walk"), _ret(t0 + 601, cpu, "stage2_split")]
    return events


def _decode(events, probes=STAGE2_PROBES, symbols=SYMS):
    tables, counts = decode_functions(arrays(events), probes, symbols)
    return {name: table.to_pylist() for name, table in tables.items()}, counts


def test_pte_kinds():
    assert [pte_kind(0, 3), pte_kind(BLOCK, 2), pte_kind(TABLE, 1), pte_kind(PAGE, 3)] == ["invalid", "block", "table", "page"]


def test_split_walk_is_one_walk_with_aggregated_visits():
    """2 splits -> 2 walks, each with (level 2, leaf:block) x1 and (level 3, leaf:page) x512; walk 599 ns
    (601 - 2 + ... = return at t0+600 minus entry at t0+1), split 601 ns."""
    tables, counts = _decode(_one_block_split(0) + _one_block_split(1000))
    walks = tables["stage2_walk"]
    assert [w["walk_id"] for w in walks] == [0, 1]
    assert {w["initiator"] for w in walks} == {"stage2_split_walker"}
    assert [w["duration_ns"] for w in walks] == [599, 599]
    assert [(v["walk_id"], v["level"], v["kind"], v["count"]) for v in tables["stage2_visit"]] == [
        (0, 2, "leaf:block", 1), (0, 3, "leaf:page", 512), (1, 2, "leaf:block", 1), (1, 3, "leaf:page", 512)]  # fmt: skip
    splits = tables["split"]
    assert [(s["addr"], s["size"], s["duration_ns"], s["ret"]) for s in splits] == [(0x4000_0000, 2 << 20, 601, 0)] * 2
    assert counts["split_walker"] == 2 * 513 == 1026 and counts["stage2_split"] == 2


def test_nested_walks_attribute_visits_to_the_innermost():
    """A walk opened inside another on the same thread takes the visits until it returns; then the outer one
    has them again (visit at 5): walk 0 gets 2, walk 1 gets 1."""
    events = [_walk(0, 0, 0, 4096), _visit(1, 0, 3, PAGE), _walk(2, 0, 0, 4096, cb=0x2000),
              _visit(3, 0, 3, PAGE, name="map_walker"), _ret(4, 0, "pgtable_walk"), _visit(5, 0, 3, PAGE),
              _ret(6, 0, "pgtable_walk")]  # fmt: skip
    tables, _ = _decode(events)
    visits = {(v["walk_id"], v["visitor"]): v["count"] for v in tables["stage2_visit"]}
    assert visits == {(0, "stage2_split_walker"): 2, (1, "stage2_map_walker"): 1}
    assert {w["walk_id"]: w["duration_ns"] for w in tables["stage2_walk"]} == {0: 6, 1: 2}
    assert {w["walk_id"]: w["initiator"] for w in tables["stage2_walk"]} == {0: "stage2_split_walker", 1: "stage2_map_walker"}


def test_per_thread_pairing_host_walks_and_unpaired_returns():
    """Thread 101's host walk (mmu 0, dropped and counted) does not close thread 100's walk, whose return comes on
    CPU 1; the stage2_split return has no entry (unpaired); the walk at 5 never returns (duration -1)."""
    events = [_walk(0, 0, 0, 4096), _walk(1, 1, 0, 4096, mmu=0, tid=101), _ret(2, 1, "pgtable_walk", tid=101),
              _ret(3, 1, "pgtable_walk"), _ret(4, 0, "stage2_split"), _walk(5, 0, 0, 4096)]  # fmt: skip
    tables, counts = _decode(events)
    assert [(w["cpu"], w["duration_ns"]) for w in tables["stage2_walk"]] == [(0, 3), (0, -1)]
    assert [w["walk_id"] for w in tables["stage2_walk"]] == [0, 2]  # ids in entry order; the host walk's is gone
    assert counts["host_walks"] == 1 and counts["unpaired"] == 1


def test_x86_iterator_steps_belong_to_the_split_loop():
    """tdp_iter_next steps inside tdp_mmu_split_huge_pages_root are that walk's visits, even across CPUs; the
    step after its return is outside (-1). Range: gfns 0x100000-0x104000 -> 4 GiB, 64 MiB."""
    events = [(0, 0, 7, "split_root", {"start": 0x100000, "end": 0x104000, "target_level": 1}),
              (1, 0, 7, "iter_next", {"level": 4}), (2, 1, 7, "iter_next", {"level": 3}),
              (3, 1, 7, "split_root_ret", {"ret": 0}), (4, 1, 7, "iter_next", {"level": 1})]  # fmt: skip
    tables, _ = _decode(events, TDP_PROBES, None)
    walk = tables["stage2_walk"][0]
    assert (walk["initiator"], walk["addr"], walk["size"], walk["duration_ns"]) == (
        "tdp_mmu_split_huge_pages_root", 0x1_0000_0000, 0x400_0000, 3)
    assert [(v["walk_id"], v["level"], v["kind"]) for v in tables["stage2_visit"]] == [(0, 4, "step"), (0, 3, "step"), (-1, 1, "step")]


def test_x86_walk_ids_follow_entry_time_across_walk_probes():
    """wrprot_slot (at 0) before split_root (at 10): ids 0 and 1 by time, whatever the probes' order."""
    events = [(0, 0, 7, "wrprot_slot", {"min_level": 1}), (1, 0, 7, "iter_next", {"level": 1}),
              (2, 0, 7, "wrprot_slot_ret", {"ret": 1}), (10, 0, 7, "split_root", {"start": 0, "end": 512, "target_level": 1}),
              (11, 0, 7, "iter_next", {"level": 2}), (12, 0, 7, "split_root_ret", {"ret": 0})]  # fmt: skip
    tables, _ = _decode(events, TDP_PROBES, None)
    assert [(w["walk_id"], w["initiator"]) for w in tables["stage2_walk"]] == [
        (0, "kvm_tdp_mmu_wrprot_slot"), (1, "tdp_mmu_split_huge_pages_root")]
    assert [(v["walk_id"], v["level"]) for v in tables["stage2_visit"]] == [(0, 1), (1, 2)]


def test_x86_split_tracepoint_and_span():
    """kvm_mmu_split_huge_page rows: addr = gfn << 12, size 4096 << 9 = 2 MiB at level 2, duration -1, ret errno;
    the tdp_mmu_split_huge_page span of the next huge page: gfn 0x100200 -> 0x1_0020_0000, 2 MiB, 7 ns."""
    events = [(10, 0, 7, "kvm_mmu_split_huge_page", {"gfn": 0x100000, "spte": 0, "level": 2, "errno": 0}),
              (11, 0, 7, "iter_next", {"level": 2}), (12, 0, 7, "iter_next", {"level": 2}),
              (13, 0, 7, "split_huge_page", {"gfn": 0x100200, "level": 2}),
              (20, 0, 7, "split_huge_page_ret", {"ret": 0})]  # fmt: skip
    tables, counts = _decode(events, TDP_PROBES, None)
    assert [(s["probe"], s["addr"], s["size"], s["level"], s["duration_ns"], s["ret"]) for s in tables["split"]] == [
        ("kvm_mmu_split_huge_page", 0x1_0000_0000, 2 << 20, 2, -1, 0), ("split_huge_page", 0x1_0020_0000, 2 << 20, 2, 7, 0)]  # fmt: skip
    assert [(v["walk_id"], v["level"], v["kind"], v["count"]) for v in tables["stage2_visit"]] == [(-1, 2, "step", 2)]
    assert counts["kvm_mmu_split_huge_page"] == 1 and counts["iter_next"] == 2


def test_calls_of_one_thread_sleeping_and_resuming_on_another_cpu():
    """Two threads in the same function at once, each returning on the other CPU: pairing is per thread, not per
    CPU (thread 1: 0 -> 30 = 30 ns; thread 2: 5 -> 12 = 7 ns)."""
    events = [(0, 0, 1, "relax_perms", {"addr": 1}), (5, 1, 2, "relax_perms", {"addr": 2}),
              (12, 0, 2, "relax_perms_ret", {"ret": 0}), (30, 1, 1, "relax_perms_ret", {"ret": -11})]  # fmt: skip
    tables, _ = _decode(events)
    assert [(c["tid"], c["cpu"], c["duration_ns"], c["ret"]) for c in tables["func_call"]] == [(1, 0, 30, -11), (2, 1, 7, 0)]


def _reference_attribution(steps):
    """Walk each thread's events with a stack: visits go to the top walk, -1 on an empty stack."""
    stacks, next_id, out = defaultdict(list), 0, {}
    for ts, (tid, op) in enumerate(steps):
        if op == "walk":
            stacks[tid].append(next_id)
            next_id += 1
        elif op == "ret":
            if stacks[tid]:
                stacks[tid].pop()
        else:
            out[ts] = stacks[tid][-1] if stacks[tid] else -1
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2), st.sampled_from(["walk", "ret", "visit", "visit"])), max_size=30),
       st.integers(0, 30))  # fmt: skip
@example([(1, "walk"), (1, "walk"), (1, "ret"), (1, "visit"), (2, "visit"), (1, "ret"), (1, "visit")], 3)
def test_visits_go_to_the_innermost_open_walk_across_batches(steps, cut):
    """Random nestings of walks, returns (orphans included) and visits of 2 threads, decoded in two batches cut at
    any event: every visit's walk is the top of its thread's stack, as an explicit stack walk says."""
    events = []
    for ts, (tid, op) in enumerate(steps):
        if op == "walk":
            events.append(_walk(ts, 0, 0, 4096, tid=tid))
        elif op == "ret":
            events.append(_ret(ts, 0, "pgtable_walk", tid=tid))
        else:
            events.append(_visit(ts, 0, 3, PAGE, tid=tid))
    family = Stage2Family()
    family.symbols = SYMS
    got = set()
    for batch, part in enumerate((events[:cut], events[cut:])):
        if part:
            rows = family.decode_tracefs(arrays(part))["stage2_visit"].to_pylist()
            got |= {(batch, v["walk_id"], v["ts_ns"], v["count"]) for v in rows}
    groups: dict[tuple[int, int], list[int]] = {}
    for ts, walk in sorted(_reference_attribution(steps).items()):
        groups.setdefault((int(ts >= cut), walk), []).append(ts)
    assert got == {(batch, walk, stamps[0], len(stamps)) for (batch, walk), stamps in groups.items()}


def test_family_for_names_the_family_of_a_probe_tuple():
    assert family_for(STAGE2_PROBES).name == "stage2" and family_for(TDP_PROBES).name == "tdp"
