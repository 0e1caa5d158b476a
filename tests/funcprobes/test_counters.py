"""The bcc backend's in-kernel counters that are not losses, read when a recording ends.

``FunctionProbeFamily.finish`` on synthetic per-CPU map contents (a fake of bcc's per-CPU array API):
the counts land in the notes the tracefs backend keeps (``host_walks``, ``unpaired_returns``,
``missed_returns``), x86 ``tdp_iter_next`` steps outside any span become ``stage2_visit`` rows of no
walk exactly as the tracefs decoder writes them, and ``lost_maps`` names only real losses. The map
layouts are checked against ``probes/stage2.h`` and ``probes/tdp.h``.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.funcprobes.test_decode import arrays
from tracekit.funcprobes.bcc_programs import COUNT_NOTES, TDP_FUNC_NAMES, TDP_LEVELS, decode_tdp_outside
from tracekit.funcprobes.funcprobe_families import Stage2Family, TdpFamily
from tracekit.probes import PROBES_DIR


class FakePerCpuArray:
    """bcc's per-CPU array as the family reads it: ``Key(i)`` and ``getvalue(key)`` -> one value per CPU."""

    def __init__(self, per_cpu: np.ndarray):
        self.per_cpu = np.asarray(per_cpu, dtype=np.uint64)

    def Key(self, index: int) -> int:  # noqa: N802 (bcc's name)
        return index

    def getvalue(self, key: int) -> list[int]:
        return [int(v) for v in self.per_cpu[:, key]]


def fake_bpf(**maps: np.ndarray) -> dict[bytes, FakePerCpuArray]:
    return {name.encode(): FakePerCpuArray(values) for name, values in maps.items()}


def _defines(header: str) -> dict[str, int]:
    text = (PROBES_DIR / header).read_text()
    return {name: int(value) for name, value in re.findall(r"#define\s+(TK_\w+)\s+(\d+)\b", text)}


def test_count_maps_follow_the_headers():
    """COUNT_NOTES index i is the header's define of that note (TK_S2_HOST_WALKS 0, ...), sizes TK_*_NCOUNTS."""
    s2, tdp = _defines("stage2.h"), _defines("tdp.h")
    assert [s2["TK_S2_HOST_WALKS"], s2["TK_S2_UNPAIRED"], s2["TK_S2_MISSED"]] == [0, 1, 2]
    assert len(COUNT_NOTES["stage2"][1]) == s2["TK_S2_NCOUNTS"] == 3
    assert [tdp["TK_TDP_UNPAIRED"], tdp["TK_TDP_MISSED"]] == [0, 1]
    assert len(COUNT_NOTES["tdp"][1]) == tdp["TK_TDP_NCOUNTS"] == 2
    assert TDP_LEVELS == tdp["TK_TDP_LEVELS"]
    source = (PROBES_DIR / "tdp.bpf.c").read_text()
    assert "BPF_PERCPU_ARRAY(tdp_outside, __u64, 3 * TK_TDP_LEVELS);" in source
    assert "BPF_PERCPU_ARRAY(tdp_lost, __u64, TK_TDP_FUNCS + 1);" in source


def test_lost_maps_name_only_losses():
    """tdp_lost: one index per TK_TDP_FN_* span (ring full) and one for spans too deep to keep; no iterator
    steps (they are not lost). stage2_lost keeps its layout (walk, visit, span table, spans)."""
    names = TdpFamily().lost_maps()["tdp_lost"]
    assert len(names) == _defines("tdp.h")["TK_TDP_FUNCS"] + 1 == len(TDP_FUNC_NAMES) + 1
    assert names[0] == "kvm_mmu_page_fault" and "deeper than 4" in names[-1]
    assert not any("iter_next" in name or "outside" in name for name in names)
    assert len(Stage2Family().lost_maps()["stage2_lost"]) == 3 + _defines("stage2.h")["TK_S2_FUNCS"]


def test_stage2_finish_counts_host_walks_like_tracefs():
    """Two CPUs: host walks 200 + 62 = 262, unpaired 1 + 0, missed 0 + 2; no table (nothing else is in maps)."""
    family = Stage2Family()
    assert family.finish(fake_bpf(stage2_counts=[[200, 1, 0], [62, 0, 2]]), 0) == {}
    notes = family.manifest_notes()["stage2_probes"]
    assert (notes["host_walks"], notes["unpaired_returns"], notes["missed_returns"]) == (262, 1, 2)


def _outside(per_cpu_level: dict[tuple[int, int], tuple[int, int, int]], cpus: int = 2) -> np.ndarray:
    """(cpu, level) -> (steps, first ns, first pid_tgid) as tdp_outside's per-CPU rows."""
    out = np.zeros((cpus, 3 * TDP_LEVELS), np.uint64)
    for (cpu, level), (steps, first, pid_tgid) in per_cpu_level.items():
        out[cpu, [level, TDP_LEVELS + level, 2 * TDP_LEVELS + level]] = [steps, first, pid_tgid]
    return out


def test_tdp_finish_writes_steps_outside_spans_as_visits_of_no_walk():
    """CPU 0: 3 steps at level 2 (first at 100 ns by thread 9 of process 7); CPU 1: 4,112 at level 4 (first at
    50 ns, thread 11) and 1 at level 1. Rows in time order, walk -1, visitor tdp_iter_next, kind step; the
    unpaired/missed counters go to the notes; nothing is reported lost."""
    family = TdpFamily()
    outside = _outside({(0, 2): (3, 100, 7 << 32 | 9), (1, 4): (4_112, 50, 7 << 32 | 11), (1, 1): (1, 300, 7 << 32 | 11)})
    tables = family.finish(fake_bpf(tdp_counts=[[0, 1], [2, 0]], tdp_outside=outside), 1_000)
    rows = [(r["ts_ns"], r["cpu"], r["pid"], r["tid"], r["walk_id"], r["visitor"], r["level"], r["kind"], r["count"])
            for r in tables["stage2_visit"].to_pylist()]  # fmt: skip
    assert rows == [(50, 1, 7, 11, -1, "tdp_iter_next", 4, "step", 4_112), (100, 0, 7, 9, -1, "tdp_iter_next", 2, "step", 3),
                    (300, 1, 7, 11, -1, "tdp_iter_next", 1, "step", 1)]  # fmt: skip
    notes = family.manifest_notes()["tdp_probes"]
    assert (notes["unpaired_returns"], notes["missed_returns"], notes["host_walks"]) == (2, 1, 0)


def test_steps_of_two_cpus_at_one_level_are_one_row():
    """Level 2 on CPU 0 (3 steps, first at 100 ns, thread 9) and CPU 1 (5 steps, first at 50 ns, thread 11):
    one row of 3 + 5 = 8 steps with the earlier first step's time, CPU and thread."""
    outside = _outside({(0, 2): (3, 100, 7 << 32 | 9), (1, 2): (5, 50, 7 << 32 | 11)})
    rows = [(r["ts_ns"], r["cpu"], r["tid"], r["level"], r["count"]) for r in decode_tdp_outside(outside).to_pylist()]
    assert rows == [(50, 1, 11, 2, 8)]


def test_no_steps_outside_spans_is_an_empty_table():
    assert decode_tdp_outside(np.zeros((4, 3 * TDP_LEVELS), np.uint64)).num_rows == 0


steps = st.lists(st.tuples(st.integers(0, 50), st.integers(0, 1), st.sampled_from([20, 21]), st.integers(1, 5)),
                 min_size=1, max_size=40)  # fmt: skip


@settings(max_examples=25, deadline=None)
@given(steps)
def test_bcc_and_tracefs_write_the_same_steps_outside_any_walk(events):
    """The same tdp_iter_next steps outside any span, (ts, cpu, tid, level): the tracefs decoder's rows and the
    rows from the counters the kernel program keeps (per CPU and level: steps, first time, its thread) give the
    same steps per (walk -1, level) and the same first time per level."""
    tracefs = TdpFamily().decode_tracefs(arrays([(ts, cpu, tid, "iter_next", {"level": level})
                                                 for ts, cpu, tid, level in events]))["stage2_visit"]  # fmt: skip
    outside: dict[tuple[int, int], tuple[int, int, int]] = {}
    for ts, cpu, tid, level in sorted(events, key=lambda e: e[0]):  # the kernel sees each CPU's steps in time order
        count, first, pid_tgid = outside.get((cpu, level), (0, ts, 7 << 32 | tid))
        outside[cpu, level] = (count + 1, first, pid_tgid)
    family = TdpFamily()
    bcc = family.finish(fake_bpf(tdp_counts=[[0, 0], [0, 0]], tdp_outside=_outside(outside)), 0)["stage2_visit"]

    def per_level(table) -> dict[tuple[int, int], list[int]]:
        out: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 1 << 62])
        for row in table.to_pylist():
            assert (row["visitor"], row["kind"]) == ("tdp_iter_next", "step")
            key = (row["walk_id"], row["level"])
            out[key] = [out[key][0] + row["count"], min(out[key][1], row["ts_ns"])]
        return dict(out)

    assert per_level(bcc) == per_level(tracefs)
    assert sum(row["count"] for row in bcc.to_pylist()) == len(events)


def test_finish_without_the_family_maps_adds_nothing():
    """A program built without this family (no such maps: bcc raises KeyError) leaves the notes at zero."""
    family = TdpFamily()
    assert family.finish(fake_bpf(), 0) == {}
    assert family.manifest_notes()["tdp_probes"]["unpaired_returns"] == 0
