"""The arithmetic of ``tracekit top``: rates, depth, percentiles, KVM_RUN share, sorting, JSON, totals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tracekit.errors import UsageError
from tracekit.top.counters import EventAccumulator, IoctlCounters, Reading, ThreadCounters, log2_slot
from tracekit.top.view import log2_percentile, make_view, render_text, sort_vms, summary_table, view_json

S = 1_000_000_000
VMS = [{"pid": 10, "comm": "qemu-system-x86", "name": "db"}, {"pid": 20, "comm": "qemu-kvm", "name": "web"}]
VCPU_OF = {11: 0, 12: 1, 13: None, 21: 0}


def _hist(slots: dict[int, int]) -> list[int]:
    return [slots.get(i, 0) for i in range(40)]


def _readings() -> tuple[Reading, Reading]:
    """Two readings 2 s apart: VM 10 has two vCPUs and a main thread, VM 20 one vCPU."""
    prev = Reading(100 * S, threads={
        11: ThreadCounters(10, walks=1000, elements=3000, wp_faults=400, run_ns=5 * S, runs=10),
        12: ThreadCounters(10, walks=10, elements=30, run_start=99 * S),  # in KVM_RUN since 99 s
        13: ThreadCounters(10, lock_write_waits=1, lock_write_ns=500),
        21: ThreadCounters(20, walks=0, spte_installs=7, run_ns=S, runs=1),
    }, ioctls={(10, 1): IoctlCounters(count=2, total_ns=2000, hist=_hist({10: 2}))})
    cur = Reading(102 * S, threads={
        11: ThreadCounters(10, walks=3000, elements=9000, wp_faults=1400, spte_installs=2000, splits=4, zaps=2,
                           run_ns=6 * S, runs=12, depth_hist=[0, 0, 0, 2000, 0, 0, 0, 0]),
        12: ThreadCounters(10, walks=410, elements=1630, run_start=99 * S, depth_hist=[0, 0, 0, 0, 400, 0, 0, 0]),
        13: ThreadCounters(10, lock_write_waits=4, lock_write_ns=3500, lock_read_waits=2, lock_read_ns=100),
        21: ThreadCounters(20, walks=0, spte_installs=7, run_ns=S, runs=1),
        22: ThreadCounters(20),  # a thread that only appeared: no events
    }, ioctls={(10, 1): IoctlCounters(count=102, total_ns=9000, hist=_hist({10: 2, 11: 50, 12: 49, 20: 1})),
               (10, 2): IoctlCounters(count=3, total_ns=300, errors=1, hist=_hist({6: 3}))})
    return prev, cur


def test_rates_depth_and_lock_waits_over_the_interval():
    prev, cur = _readings()
    view = make_view(prev, cur, VMS, VCPU_OF)
    assert view.interval_s == 2.0
    db, web = view.vms
    assert db["walks_s"] == (2000 + 400) / 2 and db["depth"] == (6000 + 1600) / 2400
    assert db["wp_faults_s"] == 500 and db["spte_s"] == 1000 and db["splits_s"] == 2 and db["zaps_s"] == 1
    assert (db["write_waits"], db["write_wait_ns"], db["read_waits"], db["read_wait_ns"]) == (3, 3000, 2, 100)
    assert db["depth_max"] == 4
    vcpu0, vcpu1 = db["vcpus"]
    assert (vcpu0["vcpu"], vcpu0["walks_s"], vcpu0["depth"]) == (0, 1000, 3.0)
    assert (vcpu1["vcpu"], vcpu1["walks_s"], vcpu1["depth"]) == (1, 200, 4.0)
    assert [v["tid"] for v in db["vcpus"]] == [11, 12]  # the main thread 13 counts in the VM row only
    assert web["walks_s"] == 0 and web["depth"] is None and web["spte_s"] == 0


def test_kvm_run_share_counts_the_call_in_flight():
    prev, cur = _readings()
    db = make_view(prev, cur, VMS, VCPU_OF).vms[0]
    vcpu0, vcpu1 = db["vcpus"]
    assert vcpu0["run_share"] == pytest.approx(0.5)  # 1 s of finished KVM_RUN in 2 s
    assert vcpu1["run_share"] == pytest.approx(1.0)  # in flight for the whole interval
    assert db["run_share"] == pytest.approx(0.75)  # the mean over its vCPU threads


def test_dirty_log_percentiles_come_from_the_intervals_histogram():
    prev, cur = _readings()
    db = make_view(prev, cur, VMS, VCPU_OF).vms[0]
    assert db["get"] == {"count": 100, "errors": 0, "p50_ns": 1 << 12, "p99_ns": 1 << 13}
    assert db["clear"] == {"count": 3, "errors": 1, "p50_ns": 1 << 7, "p99_ns": 1 << 7}
    web = make_view(prev, cur, VMS, VCPU_OF).vms[1]
    assert web["get"] == {"count": 0, "errors": 0, "p50_ns": None, "p99_ns": None}


@pytest.mark.parametrize("slots,q,edge", [({3: 1}, 50, 16), ({0: 99, 30: 1}, 99, 2), ({0: 98, 30: 2}, 99, 1 << 31),
                                          ({5: 1, 6: 1}, 50, 64), ({5: 1, 6: 1}, 51, 128)])
def test_log2_percentile_is_the_upper_edge_of_the_nearest_rank_slot(slots, q, edge):
    assert log2_percentile(_hist(slots), q) == edge


def test_log2_slot_matches_the_bpf_programs():
    assert [log2_slot(v) for v in (0, 1, 2, 3, 4, 1023, 1024, 1 << 45)] == [0, 0, 1, 1, 2, 9, 10, 39]


def test_sorting_and_unknown_keys():
    prev, cur = _readings()
    assert [vm["pid"] for vm in sort_vms(make_view(prev, cur, VMS, VCPU_OF), "spte").vms] == [10, 20]
    assert [vm["pid"] for vm in sort_vms(make_view(prev, cur, VMS[::-1], VCPU_OF), "pid").vms] == [10, 20]
    view = sort_vms(make_view(prev, cur, VMS, VCPU_OF), "run")
    assert [v["tid"] for v in view.vms[0]["vcpus"]] == [12, 11]
    with pytest.raises(UsageError, match="unknown sort key 'nope'"):
        sort_vms(view, "nope")


def test_json_document_and_text_screen():
    prev, cur = _readings()
    view = make_view(prev, cur, VMS, VCPU_OF)
    doc = json.loads(json.dumps(view_json(view, backend="bcc", sort="walks")))
    assert doc["schema"] == "tracekit.top/1" and doc["interval_s"] == 2.0 and doc["t_ns"] == 102 * S
    assert set(doc["vms"][0]) == {"pid", "comm", "name", "walks_s", "depth", "depth_max", "wp_faults_s", "spte_s",
                                  "splits_s", "zaps_s", "read_waits", "read_wait_ns", "write_waits", "write_wait_ns",
                                  "lock_wait_ns", "run_share", "get", "clear", "vcpus"}
    text = render_text(view, backend="bcc", sort="walks", width=200)
    lines = text.splitlines()
    assert lines[0].startswith("tracekit top - 2 VM(s), interval 2.00 s, bcc, sorted by walks")
    assert any(line.startswith("10 db") and "1.2k" in line and "100x 4.1us/8.19us" in line for line in lines)
    assert len(render_text(view, backend="bcc", sort="walks", width=200, height=5).splitlines()) == 5


def test_totals_cover_the_whole_run():
    prev, cur = _readings()
    text = summary_table(prev, cur, VMS, VCPU_OF, width=200)
    lines = text.splitlines()
    assert lines[0] == "Totals over 2.0 s:"
    db = next(line for line in lines if line.startswith("10 db"))
    assert db.split()[2:6] == ["2,400", "3.17", "1,000", "2,000"]


def test_decoded_events_count_like_the_bpf_program():
    acc = EventAccumulator()
    acc.add("walk", {"tid": np.array([11, 11, 12]), "pid": np.array([10, 10, 10]), "pferr": np.array([7, 6, 3])})
    acc.add("walk_element", {"tid": np.array([11, 11, 11, 11, 11, 12]), "pid": np.full(6, 10),
                             "walk_id": np.array([1, 1, 1, 2, 2, 9])})
    acc.add("mmu", {"tid": np.array([11, 11, 12]), "pid": np.full(3, 10),
                    "event": np.array(["kvm_mmu_set_spte", "kvm_mmu_split_huge_page", "kvm_mmu_get_page"], object)})
    acc.add("lock", {"tid": np.array([11, 11, 11]), "pid": np.full(3, 10), "flags": np.array([5, 3, 1]),
                     "wait_ns": np.array([100, 20, 7])})
    acc.add("ioctl", {"tid": np.array([11, 13, 13]), "pid": np.full(3, 10),
                      "cmd_name": np.array(["KVM_RUN", "KVM_GET_DIRTY_LOG", "KVM_CLEAR_DIRTY_LOG"], object),
                      "duration_ns": np.array([5000, 1500, 70]), "ret": np.array([0, 0, -22]),
                      "ts_ns": np.array([100, 200, 300])})
    reading = acc.reading(7)
    t11, t12 = reading.threads[11], reading.threads[12]
    assert (t11.walks, t11.wp_faults, t11.elements, t11.depth_hist[2:4]) == (2, 1, 5, [1, 1])
    assert (t12.walks, t12.wp_faults, t12.spte_installs) == (1, 1, 0)
    assert (t11.spte_installs, t11.splits, t11.lock_write_waits, t11.lock_write_ns) == (1, 1, 1, 100)
    assert (t11.lock_read_waits, t11.lock_read_ns) == (1, 20)  # the plain spinlock (flags 1) is not mmu_lock
    assert (t11.run_ns, t11.runs) == (5000, 1)
    get, clear = reading.ioctls[(10, 1)], reading.ioctls[(10, 2)]
    assert (get.count, get.hist[log2_slot(1500)], clear.errors) == (1, 1, 1)
    acc.add("walk", {"tid": np.array([11]), "pid": np.array([10]), "pferr": np.array([7])})
    assert reading.threads[11].walks == 2  # a reading is a snapshot


def test_tracefs_counts_a_kvm_run_in_flight_at_attach_until_its_next_call():
    acc = EventAccumulator(attach_ns=1000)
    acc.add("walk", {"tid": np.array([11]), "pid": np.array([10]), "pferr": np.array([7])})
    assert acc.reading(1500).threads[11].run_total(1500) == 500  # walking: inside a KVM_RUN since attach
    acc.add("ioctl", {"tid": np.array([11]), "pid": np.array([10]), "cmd_name": np.array(["KVM_RUN"], object),
                      "duration_ns": np.array([300]), "ret": np.array([0]), "ts_ns": np.array([2000])})
    t = acc.reading(2300).threads[11]
    assert (t.run_ns, t.runs, t.run_start) == (1000 + 300, 2, 0)
    acc.add("walk", {"tid": np.array([11]), "pid": np.array([10]), "pferr": np.array([7])})
    assert acc.reading(2400).threads[11].run_start == 0  # a thread seen in an ioctl is not guessed again
