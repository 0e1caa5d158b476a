"""Decoding and pairing of the tracepoint families on synthetic records (no kernel)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit import schema as S
from tracekit.capture import COMMON_FIELDS
from tracekit.recorder.tracepoint_families import (IoctlFamily, LockFamily, MmuFamily, WalkFamily, lock_flags_name,
                                        pair_enter_exit)
from tracekit.recorder.probe_family import ProbeStatus
from tracekit.recorder.registry import family_names, make_family
from tracekit.host import Host
from tracekit.recorder.kvm_ioctls import KVM_CLEAR_DIRTY_LOG, KVM_RUN, KVM_SET_USER_MEMORY_REGION, ioctl_name
from tracekit.recorder.backend_tracefs import delivered_until, release_order


def header(records: np.ndarray, ts, tid, kind, pid=100, cpu=0) -> None:
    records["hdr"]["ts_ns"], records["hdr"]["tid"], records["hdr"]["kind"] = ts, tid, kind
    records["hdr"]["pid"], records["hdr"]["cpu"] = pid, cpu


def test_registry_has_the_four_families_with_common_columns_first():
    assert family_names()[:4] == ["walk", "ioctl", "lock", "mmu"]
    for name in family_names():
        for schema in make_family(name).tables().values():
            assert schema.names[:4] == [f.name for f in COMMON_FIELDS]


def test_walk_decode_splits_the_three_events():
    rec = np.zeros(5, S.WALK_EVENT_DTYPE)
    header(rec, [1, 2, 3, 4, 5], 7, [0, 1, 1, 1, 2])
    rec["walk_id"] = 9
    rec["value"] = [0xC0000000, 0x1007, 0x2007, 0x80000087, 0]
    rec["aux"] = [0x6, 4, 3, 2, 0x5]
    rec["index"] = [0, 0, 1, 2, 0]
    out = WalkFamily().decode("walk_events", rec)
    assert out["walk"].to_pylist() == [{"ts_ns": 1, "cpu": 0, "pid": 100, "tid": 7, "walk_id": 9,
                                        "addr": 0xC0000000, "pferr": 6}]
    assert out["walk_element"].column("level").to_pylist() == [4, 3, 2]
    assert out["walk_element"].column("index").to_pylist() == [0, 1, 2]
    assert out["walk_error"].column("pferr").to_pylist() == [5]


def _oracle_walk_ids(events):
    """Per-event reference: the same rules the BPF program applies, one event at a time."""
    state, next_id, out = {}, 1, []
    for tid, kind in events:
        if kind == 0:
            state[tid] = [next_id, 0]
            next_id += 1
            out.append((state[tid][0], 0))
        elif kind == 1:
            walk_id, index = state.get(tid, [0, 0])
            if tid in state:
                state[tid][1] += 1
            out.append((walk_id, index))
        else:
            out.append((state.get(tid, [0, 0])[0], 0))
    return out


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.sampled_from([0, 1, 1, 1, 2])), max_size=60),
       st.lists(st.integers(0, 60), max_size=4))
def test_tracefs_walk_ids_match_the_per_event_rules(events, cuts):
    """walk_id/index assigned in batches (any split) equal those of the per-event reference."""
    family = WalkFamily()
    ts = np.arange(len(events), dtype=np.int64)
    bounds = sorted({0, len(events), *[c for c in cuts if c <= len(events)]})
    got = {}
    for lo, hi in zip(bounds, bounds[1:]):
        rec = np.zeros(hi - lo, S.WALK_EVENT_DTYPE)
        header(rec, ts[lo:hi], [e[0] for e in events[lo:hi]], [e[1] for e in events[lo:hi]])
        order = np.lexsort((rec["hdr"]["ts_ns"], rec["hdr"]["tid"]))
        rec = rec[order]
        family.assign_walk_ids(rec)
        for row in rec:
            got[int(row["hdr"]["ts_ns"])] = (int(row["walk_id"]), int(row["index"]))
    # Ids are assigned in (tid, ts) order within a batch, so compare the walk partition and the
    # indexes, not the raw numbers: map every reference id to the id we gave.
    expected = _oracle_walk_ids(events)
    mapping = {}
    for i, (ref_id, ref_index) in enumerate(expected):
        walk_id, index = got[i]
        assert index == ref_index
        assert (ref_id == 0) == (walk_id == 0)
        assert mapping.setdefault(ref_id, walk_id) == walk_id
    assert len(set(mapping.values())) == len(mapping)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.booleans()), max_size=50))
def test_pair_enter_exit_matches_a_stack_free_reference(events):
    """Each end pairs with the begin just before it in the same thread; the last open begins carry."""
    rec = np.zeros(len(events), S.IOCTL_EVENT_DTYPE)
    header(rec, np.arange(len(events)), [t for t, _ in events], [1 if end else 0 for _, end in events])
    rec = rec[np.lexsort((rec["hdr"]["ts_ns"], rec["hdr"]["tid"]))]
    pairs, pending = pair_enter_exit(rec)
    last, expected, open_at_end = {}, [], {}
    for i, row in enumerate(rec):
        tid, kind = int(row["hdr"]["tid"]), int(row["hdr"]["kind"])
        if kind == 1 and last.get(tid) == (i - 1, 0):
            expected.append((i - 1, i))
        last[tid] = (i, kind)
    for tid, (i, kind) in last.items():
        if kind == 0:
            open_at_end[tid] = int(rec["hdr"]["ts_ns"][i])
    assert [tuple(p) for p in pairs.tolist()] == expected
    assert sorted(pending["hdr"]["ts_ns"].tolist()) == sorted(open_at_end.values())


def test_ioctl_decode_nulls_what_the_command_does_not_carry():
    rec = np.zeros(2, S.IOCTL_EVENT_DTYPE)
    header(rec, [10, 20], 5, 0)
    rec["cmd"] = [KVM_SET_USER_MEMORY_REGION, KVM_CLEAR_DIRTY_LOG]
    rec["decoded"] = [S.TK_IOCTL_HAS_REGION, S.TK_IOCTL_HAS_CLEAR]
    rec["slot"] = [(1 << 16) | 3, 2]
    rec["flags"], rec["guest_phys_addr"], rec["memory_size"] = [1, 0], [1 << 32, 0], [1 << 26, 0]
    rec["first_page"], rec["num_pages"] = [0, 64], [0, 128]
    table = IoctlFamily().decode("ioctl_events", rec)["ioctl"]
    rows = table.to_pylist()
    assert rows[0]["cmd_name"] == "KVM_SET_USER_MEMORY_REGION" and rows[0]["slot"] == 3 and rows[0]["as_id"] == 1
    assert rows[0]["guest_phys_addr"] == 1 << 32 and rows[0]["first_page"] is None
    assert rows[1]["cmd_name"] == "KVM_CLEAR_DIRTY_LOG" and (rows[1]["first_page"], rows[1]["num_pages"]) == (64, 128)
    assert rows[1]["flags"] is None and rows[1]["memory_size"] is None
    assert table.schema.field("cmd_name").type == pa.string()  # plain text: Parquet dictionary-encodes it


def _raw(names_types, rows):
    dtype = np.dtype(names_types + [("ts_ns", "<i8"), ("cpu", "<i4"), ("tgid", "<i4")])
    return np.array([tuple(r) for r in rows], dtype=dtype)


def test_ioctl_tracefs_pairs_across_batches_and_aggregates_kvm_run():
    """Batch 1: RUN enter/exit (tid 5), SET_REGION enter (tid 6); batch 2: its exit. Non-KVM dropped."""
    family = IoctlFamily()
    enter_t = [("common_pid", "<i4"), ("fd", "<u8"), ("cmd", "<u8"), ("arg", "<u8")]
    exit_t = [("common_pid", "<i4"), ("ret", "<i8")]
    b1 = family.decode_tracefs({
        "syscalls:sys_enter_ioctl": _raw(enter_t, [(5, 9, KVM_RUN, 0, 100, 0, 1), (6, 4, KVM_SET_USER_MEMORY_REGION, 0xbeef, 110, 1, 1),
                                                   (7, 1, 0x5401, 0, 120, 0, 1)]),
        "syscalls:sys_exit_ioctl": _raw(exit_t, [(5, 0, 400, 0, 1), (7, 0, 130, 0, 1)]),
    })
    assert b1["ioctl"].num_rows == 0
    b2 = family.decode_tracefs({"syscalls:sys_exit_ioctl": _raw(exit_t, [(6, -22, 150, 1, 1)])})
    [row] = b2["ioctl"].to_pylist()
    assert (row["tid"], row["cmd_name"], row["duration_ns"], row["ret"], row["arg"], row["slot"]) == (
        6, "KVM_SET_USER_MEMORY_REGION", 150 - 110, -22, 0xBEEF, None)  # no ioctl uprobe: no struct
    summary = family.finish_tracefs(999)["ioctl_summary"].to_pylist()
    assert summary == [{"ts_ns": 999, "cpu": -1, "pid": 1, "tid": 5, "cmd": KVM_RUN, "cmd_name": "KVM_RUN", "count": 1,
                        "total_ns": 300, "max_ns": 300, "errors": 0, "fd": 9, "errno": 0, "partial": 0}]
    assert family.partial_counts() == {"ioctl_began_before": 0, "ioctl_unfinished": 0, "ioctl_exits_without_entry": 0,
                                      "ioctl_in_flight_at_start": 0}


def test_ioctl_tracefs_calls_cut_by_the_window_are_counted_and_marked():
    """An exit whose entry came before the window is counted (its command is unknown); KVM calls still
    running at the window's end are counted up to it and marked unfinished, KVM_RUN in the summary."""
    family = IoctlFamily()
    enter_t = [("common_pid", "<i4"), ("fd", "<u8"), ("cmd", "<u8"), ("arg", "<u8")]
    exit_t = [("common_pid", "<i4"), ("ret", "<i8")]
    out = family.decode_tracefs({
        "syscalls:sys_enter_ioctl": _raw(enter_t, [(5, 9, KVM_RUN, 0, 200, 0, 1), (6, 4, KVM_SET_USER_MEMORY_REGION, 7, 210, 1, 1),
                                                   (8, 1, 0x5401, 0, 220, 0, 1)]),
        "syscalls:sys_exit_ioctl": _raw(exit_t, [(5, 0, 150, 0, 1), (7, 0, 160, 0, 1)]),  # entered before the window
    })
    assert out["ioctl"].num_rows == 0
    final = family.finish_tracefs(1000)
    [row] = final["ioctl"].to_pylist()
    assert (row["tid"], row["cmd_name"], row["duration_ns"], row["ret"], row["partial"]) == (
        6, "KVM_SET_USER_MEMORY_REGION", 1000 - 210, None, "unfinished")
    [run] = final["ioctl_summary"].to_pylist()
    assert (run["tid"], run["count"], run["total_ns"], run["partial"]) == (5, 1, 800, 1)
    assert family.partial_counts() == {"ioctl_began_before": 0, "ioctl_unfinished": 2, "ioctl_exits_without_entry": 2,
                                      "ioctl_in_flight_at_start": 0}


def test_ioctl_ring_records_marked_began_before_keep_the_window_start():
    rec = np.zeros(2, S.IOCTL_EVENT_DTYPE)
    rec["cmd"] = KVM_SET_USER_MEMORY_REGION
    rec["hdr"]["ts_ns"] = [500, 600]
    rec["decoded"] = [S.TK_IOCTL_BEGAN_BEFORE, 0]
    family = IoctlFamily()
    rows = family.decode("ioctl_events", rec)["ioctl"].to_pylist()
    assert [(r["ts_ns"], r["partial"]) for r in rows] == [(500, "began_before"), (600, "")]
    assert family.partial_counts()["ioctl_began_before"] == 1


def test_walk_tracefs_drops_elements_without_their_walk_start_and_bounds_walks():
    """Thread 5's elements before any walk start (its walk began before the window) are dropped and
    counted, never glued onto the next walk; a walk of more than MAX_ELEMENTS keeps only MAX_ELEMENTS."""
    family = WalkFamily()
    walk_t = [("common_pid", "<i4"), ("addr", "<u8"), ("pferr", "<u4")]
    elem_t = [("common_pid", "<i4"), ("pte", "<u8"), ("level", "<u4")]
    n = family.MAX_ELEMENTS + 3
    out = family.decode_tracefs({
        "kvmmmu:kvm_mmu_pagetable_walk": _raw(walk_t, [(5, 0x1000, 7, 100, 0, 1), (6, 0x2000, 7, 100, 1, 1)]),
        "kvmmmu:kvm_mmu_paging_element": _raw(elem_t, [(5, 1, 3, 90, 0, 1), (5, 1, 2, 91, 0, 1)]
                                              + [(5, 1, 4 - i % 3, 101 + i, 0, 1) for i in range(3)]
                                              + [(6, 1, 4, 101 + i, 1, 1) for i in range(n)]),
    })
    elements = out["walk_element"].to_pandas()
    walk_of = dict(zip(out["walk"].column("tid").to_pylist(), out["walk"].column("walk_id").to_pylist()))
    assert (elements["walk_id"] != 0).all()
    assert list(elements[elements["tid"] == 5]["walk_id"].unique()) == [walk_of[5]]
    assert len(elements[elements["tid"] == 5]) == 3
    assert len(elements[elements["tid"] == 6]) == family.MAX_ELEMENTS
    assert family.partial_counts() == {"walk_elements_without_start": 2, "walk_elements_beyond_limit": 3}


def test_walk_tracefs_groups_walks_by_thread_when_vcpus_migrate_between_cpus():
    """Two threads' walks interleave and swap CPUs mid-walk: every element stays with its thread's walk."""
    family = WalkFamily()
    walk_t = [("common_pid", "<i4"), ("addr", "<u8"), ("pferr", "<u4")]
    elem_t = [("common_pid", "<i4"), ("pte", "<u8"), ("level", "<u4")]
    out = family.decode_tracefs({
        "kvmmmu:kvm_mmu_pagetable_walk": _raw(walk_t, [(5, 0x1000, 7, 100, 0, 1), (6, 0x2000, 7, 101, 1, 1)]),
        "kvmmmu:kvm_mmu_paging_element": _raw(elem_t, [(5, 1, 4, 102, 1, 1), (6, 1, 4, 103, 0, 1),
                                                       (5, 1, 3, 104, 0, 1), (6, 1, 3, 105, 1, 1),
                                                       (6, 1, 2, 106, 0, 1), (5, 1, 2, 107, 1, 1)]),
    })
    walk_of = dict(zip(out["walk"].column("tid").to_pylist(), out["walk"].column("walk_id").to_pylist()))
    elements = out["walk_element"].to_pandas()
    for tid in (5, 6):
        mine = elements[elements["tid"] == tid].sort_values("index")
        assert list(mine["walk_id"].unique()) == [walk_of[tid]] and list(mine["level"]) == [4, 3, 2]


def test_lock_tracefs_pairs_same_lock_only():
    family = LockFamily()
    begin_t = [("common_pid", "<i4"), ("lock_addr", "<u8"), ("flags", "<u4")]
    end_t = [("common_pid", "<i4"), ("lock_addr", "<u8"), ("ret", "<i4")]
    out = family.decode_tracefs({
        "lock:contention_begin": _raw(begin_t, [(5, 0xA0, 5, 10, 0, 1), (6, 0xB0, 32, 12, 1, 1)]),
        "lock:contention_end": _raw(end_t, [(5, 0xA0, 0, 35, 0, 1), (6, 0xC0, 0, 40, 1, 1)]),
    })["lock"].to_pylist()
    assert len(out) == 1
    assert (out[0]["tid"], out[0]["lock_addr"], out[0]["wait_ns"], out[0]["flags_name"]) == (5, 0xA0, 25, "SPIN|WRITE")
    assert out[0]["stack_id"] < 0


def test_lock_flag_names():
    assert lock_flags_name(0) == "0"
    assert lock_flags_name(1 | 2) == "SPIN|READ"
    assert lock_flags_name(32 | 128) == "MUTEX|0x80"


def test_mmu_decode_uses_the_validity_mask():
    rec = np.zeros(2, S.MMU_EVENT_DTYPE)
    header(rec, [1, 2], 3, [S.TK_MMU_SET_SPTE, S.TK_MMU_SET_DIRTY_BIT])
    rec["gfn"], rec["spte"], rec["level"], rec["flags"] = [0x1234, 0], [0x8000000000000867, 0], [1, 0], [1 | 0x20, 0]
    rec["addr"] = [0, 0x5008]
    rec["valid"] = [S.TK_MMU_F_GFN | S.TK_MMU_F_SPTE | S.TK_MMU_F_LEVEL | S.TK_MMU_F_FLAGS, S.TK_MMU_F_ADDR]
    rows = MmuFamily().decode("mmu_events", rec)["mmu"].to_pylist()
    assert rows[0]["event"] == "kvm_mmu_set_spte" and rows[0]["gfn"] == 0x1234 and rows[0]["level"] == 1
    assert (rows[0]["r"], rows[0]["x"], rows[0]["u"], rows[0]["addr"]) == (True, False, True, None)
    assert rows[1]["event"] == "kvm_mmu_set_dirty_bit" and rows[1]["addr"] == 0x5008
    assert rows[1]["gfn"] is None and rows[1]["r"] is None


def test_check_reports_absent_tracepoints_and_fields(tmp_path):
    """A fake tracefs with one walk event lacking `level`, and no walker_error, gives both reasons."""
    events = tmp_path / "events" / "kvmmmu"
    for name, fields in (("kvm_mmu_pagetable_walk", "addr;pferr"), ("kvm_mmu_paging_element", "pte")):
        (events / name).mkdir(parents=True)
        body = "".join(f"\tfield:u64 {f};\toffset:{8 + 8 * i};\tsize:8;\tsigned:0;\n" for i, f in enumerate(fields.split(";")))
        (events / name / "format").write_text(f"name: {name}\nID: {len(fields)}\nformat:\n{body}")
    statuses = {s.probe: s for s in WalkFamily().check(Host(tmp_path))}
    assert statuses["kvmmmu:kvm_mmu_pagetable_walk"].available
    assert statuses["kvmmmu:kvm_mmu_paging_element"].reason.endswith("lacks field(s) level")
    assert "not in this kernel" in statuses["kvmmmu:kvm_mmu_walker_error"].reason


def test_ioctl_names():
    assert ioctl_name(0xAE80) == "KVM_RUN"
    assert ioctl_name(0x4010AE42) == "KVM_GET_DIRTY_LOG"
    assert ioctl_name(0xC0FFAEEE).startswith("KVM_IOC_IOWR_0xee")
    assert ioctl_name(0x5401) == "IOC_0x00005401"


def test_ioctl_table_declares_each_command_once():
    """The workload's commands come from its ctypes-sized uAPI only; the named-only rows add others."""
    from tracekit.recorder.kvm_ioctls import _NAMED_ONLY, KVM_IOCTLS, ioc
    from tracekit.workload.uapi import IOCTL_NAMES

    names = [name for name, *_ in _NAMED_ONLY]
    assert len(set(names)) == len(names) and not set(names) & set(IOCTL_NAMES.values())
    assert not {ioc(d, nr, size) for _, d, nr, size in _NAMED_ONLY} & set(IOCTL_NAMES)
    assert len(KVM_IOCTLS) == len(_NAMED_ONLY) + len(IOCTL_NAMES) == 91
    assert KVM_IOCTLS[0x4010AE42] == "KVM_GET_DIRTY_LOG" and KVM_IOCTLS[0xC018AEC0] == "KVM_CLEAR_DIRTY_LOG"


def _walk_polls(polls):
    """Walk rows rebuilt by WalkFamily.decode_tracefs from successive polls: walk id -> levels."""
    family = WalkFamily()
    walks, levels = {}, {}
    for poll in polls:
        out = family.decode_tracefs(poll)
        for row in out["walk"].to_pylist():
            walks[row["walk_id"]] = row["addr"]
        for row in out["walk_element"].to_pylist():
            levels.setdefault(walks.get(row["walk_id"], row["walk_id"]), []).append((row["index"], row["level"]))
    return {addr: [lv for _, lv in sorted(items)] for addr, items in levels.items()}


def test_tracefs_walks_stay_whole_when_a_cpu_is_read_behind_another():
    """The tracefs recording of dirty_log_perf_test: the vCPU thread walked 0xaa on CPU 1 (4, 3, 2, 1),
    then 0xbb on CPU 0. CPU 1's buffer had a backlog, so 0xaa was read one poll after CPU 0's first page
    (0xbb's start and level 4) and with CPU 0's next page (0xbb's 3, 2, 1). Handed out as read, 0xaa
    became 4>3>2>1>3>2>1 and 0xbb a lone 4 (now the impossible 3, 2, 1 are orphans instead); held back
    by release_order, both walks are whole."""
    walk_t = [("common_pid", "<i4"), ("addr", "<u8"), ("pferr", "<u4")]
    elem_t = [("common_pid", "<i4"), ("pte", "<u8"), ("level", "<u1")]
    cpu0_page1 = {"kvmmmu:kvm_mmu_pagetable_walk": _raw(walk_t, [(9, 0xBB, 16, 200, 0, 1)]),
                  "kvmmmu:kvm_mmu_paging_element": _raw(elem_t, [(9, 0x1000, 4, 201, 0, 1)])}
    cpu0_page2 = {"kvmmmu:kvm_mmu_paging_element": _raw(elem_t, [(9, 0x1000, lv, 205 - lv, 0, 1) for lv in (3, 2, 1)])}
    cpu1_backlog = {"kvmmmu:kvm_mmu_pagetable_walk": _raw(walk_t, [(9, 0xAA, 16, 100, 1, 1)]),
                    "kvmmmu:kvm_mmu_paging_element": _raw(elem_t, [(9, 0x1000, lv, 105 - lv, 1, 1)
                                                                   for lv in (4, 3, 2, 1)])}

    def merged(*parts):
        names = {n for p in parts for n in p}
        return {n: np.concatenate([p[n] for p in parts if n in p]) for n in names}

    as_read = _walk_polls([cpu0_page1, merged(cpu1_backlog, cpu0_page2)])
    # Handed out as read, 0xbb's 3, 2, 1 would follow 0xaa's leaf: impossible in a walk, so orphaned
    # (dropped and counted, never in the capture).
    assert {k: sorted(v) for k, v in as_read.items()} == {0xAA: [1, 2, 3, 4], 0xBB: [4]}
    # Poll 1: CPU 0 delivered its page, CPU 1 (a backlog) only events up to 50: nothing newer is released.
    now, held = release_order(cpu0_page1, min(202, 50))
    assert sum(len(a) for a in now.values()) == 0
    later, rest = release_order(merged(held, cpu1_backlog, cpu0_page2), None)
    assert rest == {} and _walk_polls([now, later]) == {0xAA: [4, 3, 2, 1], 0xBB: [4, 3, 2, 1]}


def test_elements_no_walk_can_have_are_orphans_across_batches():
    """A lost walk start (a tracefs ring overrun) leaves its elements after another walk's: 4>3>2 then
    4>3>2>1>1 in the tracefs recording of dirty_log_perf_test. KVM's walker reads one level lower each
    step or starts again at the root (a retry), so a stray element and what follows it until the thread's
    next walk are orphans (a walk broken at the end of a batch stays broken in the next); a retry
    (4>3>2>1>4>3>2>1) stays one walk."""
    walk_t = [("common_pid", "<i4"), ("addr", "<u8"), ("pferr", "<u4")]
    elem_t = [("common_pid", "<i4"), ("pte", "<u8"), ("level", "<u1")]
    family = WalkFamily()
    first = family.decode_tracefs({
        "kvmmmu:kvm_mmu_pagetable_walk": _raw(walk_t, [(9, 0xA, 16, 10, 0, 1), (9, 0xB, 16, 20, 0, 1)]),
        "kvmmmu:kvm_mmu_paging_element": _raw(elem_t, [(9, 1, lv, 10 + i, 0, 1) for i, lv in enumerate((4, 3, 2))]
                                              + [(9, 1, lv, 21 + i, 0, 1) for i, lv in enumerate((4, 3, 2, 1))])})
    stray = family.decode_tracefs({  # walk 0xd reads 4, then a stray 1 (the last row of its thread here)
        "kvmmmu:kvm_mmu_pagetable_walk": _raw(walk_t, [(9, 0xD, 16, 27, 0, 1)]),
        "kvmmmu:kvm_mmu_paging_element": _raw(elem_t, [(9, 1, 4, 28, 0, 1), (9, 1, 1, 29, 0, 1)])})
    second = family.decode_tracefs({  # 0xd stays broken: 4, 3 are orphans too; then a retried walk 0xc
        "kvmmmu:kvm_mmu_pagetable_walk": _raw(walk_t, [(9, 0xC, 16, 40, 0, 1)]),
        "kvmmmu:kvm_mmu_paging_element": _raw(elem_t, [(9, 1, 4, 30, 0, 1), (9, 1, 3, 31, 0, 1)]
                                              + [(9, 1, lv, 41 + i, 0, 1) for i, lv in enumerate((4, 3, 2, 1, 4, 3, 2, 1))])})
    rows = first["walk_element"].to_pylist() + stray["walk_element"].to_pylist() + second["walk_element"].to_pylist()
    ids = {r["walk_id"]: r["addr"] for b in (first, stray, second) for r in b["walk"].to_pylist()}
    levels: dict = {}
    for r in rows:
        levels.setdefault(ids.get(r["walk_id"], 0), []).append((r["index"], r["level"]))
    assert {k: [lv for _, lv in sorted(v)] for k, v in levels.items() if k} == {
        0xA: [4, 3, 2], 0xB: [4, 3, 2, 1], 0xD: [4], 0xC: [4, 3, 2, 1, 4, 3, 2, 1]}
    assert 0 not in levels  # the orphans are dropped and counted, never in the capture
    assert family.partial_counts()["walk_elements_without_start"] == 3


def test_walk_tracefs_keeps_the_last_walks_elements_after_the_window_but_no_later_walk():
    """After the window closed (stop at 200): thread 5's walk begun at 150 keeps its elements read at 201
    and 202; its walk begun at 210 is not recorded, nor its elements, nor glued onto the earlier one."""
    family = WalkFamily()
    family.window_stop_ns = 200
    walk_t = [("common_pid", "<i4"), ("addr", "<u8"), ("pferr", "<u4")]
    elem_t = [("common_pid", "<i4"), ("pte", "<u8"), ("level", "<u4")]
    out = family.decode_tracefs({
        "kvmmmu:kvm_mmu_pagetable_walk": _raw(walk_t, [(5, 0x1000, 7, 150, 0, 1), (5, 0x2000, 7, 210, 0, 1)]),
        "kvmmmu:kvm_mmu_paging_element": _raw(elem_t, [(5, 1, 4, 151, 0, 1), (5, 1, 3, 201, 0, 1),
                                                       (5, 1, 2, 202, 0, 1), (5, 1, 4, 211, 0, 1),
                                                       (5, 1, 3, 212, 0, 1)]),
    })
    [walk] = out["walk"].to_pylist()
    assert walk["ts_ns"] == 150
    elements = out["walk_element"].to_pylist()
    assert [(e["walk_id"], e["index"], e["level"]) for e in elements] == [
        (walk["walk_id"], 0, 4), (walk["walk_id"], 1, 3), (walk["walk_id"], 2, 2)]


def test_delivered_until_waits_for_a_cpu_with_a_backlog_even_when_flushing():
    """The recording of dirty_log_perf_test that stopped while CPU 0 had a backlog: the first flush poll read
    4,096 pages of each CPU (CPU 0 up to 3878.4995 s, CPU 1 up to 3879.0658 s); releasing everything then
    gave CPU 1's later walks their ids before CPU 0's older elements. Only a drained CPU is complete."""
    ms = 1_000_000
    backlog0, backlog1 = (3882_000 * ms, False, 3878_499 * ms), (3884_000 * ms, False, 3879_065 * ms)
    assert delivered_until([backlog0, backlog1], flush=True) == 3878_499 * ms
    drained0 = (3892_000 * ms, True, 3879_324 * ms)
    assert delivered_until([drained0, backlog1], flush=True) == 3879_065 * ms
    assert delivered_until([drained0, (3892_040 * ms, True, 0)], flush=True) is None  # all read: no limit
    assert delivered_until([drained0, (3892_040 * ms, True, 0)]) == 3892_000 * ms - 10 * ms  # still committing


def test_ioctl_reads_saved_registers_only_where_the_kernel_has_the_helpers(tmp_path, monkeypatch):
    """A kernel without bpf_task_pt_regs (before 5.15) must still load the program: no register reads."""
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    tick = [ProbeStatus("timer:hrtimer_expire_entry", True)]
    old = tmp_path / "old-kallsyms"
    old.write_text("ffffffff81000000 T bpf_get_current_task_btf\n")
    family = IoctlFamily()
    family.check(Host(None, kallsyms=old))
    assert not any("TASK_REGS" in f or "TICK" in f for f in family.cflags(tick, 1))
    new = tmp_path / "kallsyms"
    new.write_text("ffffffff81000000 T bpf_get_current_task_btf\nffffffff81000100 T bpf_task_pt_regs\n")
    family.check(Host(None, kallsyms=new))
    flags = family.cflags(tick, 1)
    if Path("/sys/kernel/btf/vmlinux").exists():
        assert {"-DTK_IOCTL_TASK_REGS=1", "-DTK_NR_IOCTL=16", "-DTK_IOCTL_TICK=1"} <= set(flags)
        assert "-DTK_IOCTL_TICK=1" not in family.cflags([ProbeStatus("timer:hrtimer_expire_entry", False)], 1)
    else:
        assert not any("TASK_REGS" in f for f in flags)


def test_tracefs_drops_idle_task_events_and_other_processes_threads(tmp_path):
    """tid 0 (the idle task: lock contention fired in interrupt context on an idle CPU) is never the
    target's, though /proc has no entry for it; a gone thread is kept (set_event_pid let it through)."""
    import os
    import subprocess

    from tracekit.recorder.backend_tracefs import TracefsBackend

    other = subprocess.Popen(["sleep", "30"])
    try:
        backend = TracefsBackend(tmp_path, [], os.getpid(), [os.getpid()])
        gone = 2 ** 22 + 7  # above pid_max's default: no such thread
        rows = np.array([(0,), (os.getpid(),), (other.pid,), (gone,), (0,)], dtype=[("common_pid", np.int32)])
        kept = backend._drop_foreign({"kvm:kvm_lock": rows})["kvm:kvm_lock"]
    finally:
        other.kill()
        other.wait()
    assert kept["common_pid"].tolist() == [os.getpid(), gone]
    assert backend.foreign_events == 3
