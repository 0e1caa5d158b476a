"""The stage2/tdp recorder families: availability reasons, kprobe_events text, tracefs decode, live refusal."""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import livecheck
from tracekit.funcprobes.funcprobe_families import Stage2Family, TdpFamily, pair_calls
from tracekit.host import Host, parse_kallsyms
from tracekit.recorder.registry import family_names, make_family
from tracekit.recorder.ftrace_pages import decode_pages, parse_format

X86_KALLSYMS = """ffff0001 T kvm_mmu_page_fault
ffff0002 T kvm_tdp_mmu_map
ffff0003 t fast_page_fault.part.0
ffff0004 T tdp_iter_next
ffff0005 t tdp_mmu_split_huge_page
"""
ARM64_KALLSYMS = """ffff0100 t stage2_split_walker
ffff0200 T kvm_pgtable_walk
ffff0300 T kvm_pgtable_stage2_split
ffff0400 T kvm_pgtable_stage2_relax_perms
"""


def fake_host(tmp_path: Path, kallsyms: str, *, kprobe_events: bool = True, tdp_mmu: str = "Y") -> Host:
    tracefs = tmp_path / "tracing"
    tracefs.mkdir()
    if kprobe_events:
        (tracefs / "kprobe_events").write_text("")
        (tracefs / "README").write_text("\t  <argname>[->field[->field|.field...]],\n")
    (tmp_path / "kallsyms").write_text(kallsyms)
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "tdp_mmu").write_text(tdp_mmu + "\n")
    return Host(tracefs, kallsyms=tmp_path / "kallsyms")


def test_both_families_are_registered():
    assert {"stage2", "tdp"} <= set(family_names())
    assert set(make_family("tdp").tables()) == {"stage2_walk", "stage2_visit", "split", "fault", "func_call"}


def test_reasons_per_probe(tmp_path):
    """Each blocking fact is named: architecture, no kprobes, absent symbol, TDP MMU off."""
    host = fake_host(tmp_path, X86_KALLSYMS, kprobe_events=False, tdp_mmu="N")
    tdp = TdpFamily()
    tdp.machine, tdp.kvm_parameters = "x86_64", tmp_path / "params"
    status = {s.probe: s for s in tdp.check(host)}
    assert status["kvm_mmu_page_fault"].reason.startswith("CONFIG_KPROBES is off")
    assert "the TDP MMU is off (kvm.tdp_mmu=N)" in status["kvm_tdp_mmu_map"].reason
    assert "TDP MMU" not in status["kvm_mmu_page_fault"].reason
    assert "tdp_mmu_split_huge_pages_root absent" in status["tdp_mmu_split_huge_pages_root"].reason
    assert status["tdp_mmu_split_huge_pages_root"].reason.endswith("never fires; the TDP MMU is off (kvm.tdp_mmu=N): "
                                                                  "only the shadow MMU runs")
    assert not any(s.available for s in status.values())
    stage2 = Stage2Family()
    stage2.machine = "x86_64"
    assert {s.reason for s in stage2.check(host)} == {"aarch64 only (this host is x86_64)"}


def test_kprobe_events_text_and_cleanup(tmp_path):
    """Available probes are defined in the recorder's own group, with BTF argument names, and removed last first."""
    host = fake_host(tmp_path, ARM64_KALLSYMS)
    family = Stage2Family()
    family.machine, family.group = "aarch64", "tkrec7"
    family.btf_paths = (tmp_path / "no-btf",)  # BTF names taken unchecked (test_fetchargs checks them per kernel)
    statuses = family.check(host)
    assert sorted(s.probe for s in statuses if s.available) == ["kvm_pgtable_stage2_relax_perms", "kvm_pgtable_stage2_split",
                                                                "kvm_pgtable_walk", "stage2_split_walker"]  # fmt: skip
    names = family.tracefs_prepare(host.tracefs, statuses)
    assert names == ["tkrec7:pgtable_walk", "tkrec7:pgtable_walk_ret", "tkrec7:split_walker", "tkrec7:stage2_split",
                     "tkrec7:stage2_split_ret", "tkrec7:relax_perms", "tkrec7:relax_perms_ret"]  # fmt: skip
    lines = (host.tracefs / "kprobe_events").read_text().splitlines()
    assert lines[:3] == [
        "p:tkrec7/pgtable_walk kvm_pgtable_walk addr=addr size=size flags=walker->flags cb=walker->cb mmu=pgt->mmu "
        "start_level=pgt->start_level",
        "r:tkrec7/pgtable_walk_ret kvm_pgtable_walk ret=$retval",
        "p:tkrec7/split_walker stage2_split_walker level=ctx->level addr=ctx->addr old=ctx->old visit=visit",
    ]
    family.tracefs_cleanup(host.tracefs)
    removed = (host.tracefs / "kprobe_events").read_text().splitlines()[len(lines):]
    assert removed == [f"-:tkrec7/{n.split(':')[1]}" for n in reversed(names)]


# -- synthetic raw pages of kprobe events ----------------------------------------------------------------------

_COMMON = [("unsigned short", "common_type", 2, 0), ("unsigned char", "common_flags", 1, 0),
           ("unsigned char", "common_preempt_count", 1, 0), ("int", "common_pid", 4, 1)]  # fmt: skip
_PACK = {(1, 0): "B", (1, 1): "b", (2, 0): "H", (4, 0): "I", (4, 1): "i", (8, 0): "Q", (8, 1): "q"}


class KprobeFormat:
    """A kprobe event's format text and a packer of its records."""

    def __init__(self, name: str, event_id: int, fields: list[tuple[str, str, int, int]], ret: bool = False):
        head = [("unsigned long", "__probe_func", 8, 0), ("unsigned long", "__probe_ret_ip", 8, 0)] if ret else [
            ("unsigned long", "__probe_ip", 8, 0)]
        self.fields = _COMMON + head + fields
        self.id = event_id
        lines, offset = [f"name: {name}", f"ID: {event_id}", "format:"], 0
        for ctype, fname, size, signed in self.fields:
            lines.append(f"\tfield:{ctype} {fname};\toffset:{offset};\tsize:{size};\tsigned:{signed};")
            offset += size
        self.text = "\n".join(lines) + "\n"
        self.struct = struct.Struct("<" + "".join(_PACK[(s, g)] for _, _, s, g in self.fields))

    def record(self, tid: int, **values: int) -> bytes:
        data = self.struct.pack(self.id, 0, 0, tid, *[values.get(f[1], 0) for f in self.fields[4:]])
        return data + bytes(-len(data) % 4)


def _page(events: list[tuple[int, bytes]], page_ts: int) -> bytes:
    body, last = b"", page_ts
    for ts, payload in events:
        body += struct.pack("<I", ((ts - last) << 5) | (len(payload) // 4)) + payload
        last = ts
    page = struct.pack("<QQ", page_ts, len(body)) + body
    return page + bytes(4096 - len(page))


U64 = lambda name: ("u64", name, 8, 0)  # noqa: E731
FORMATS = {
    "pgtable_walk": KprobeFormat("pgtable_walk", 901, [U64("addr"), U64("size"), ("u32", "flags", 4, 0), U64("cb"),
                                                       U64("mmu"), ("s8", "start_level", 1, 1)]),
    "pgtable_walk_ret": KprobeFormat("pgtable_walk_ret", 902, [("int", "ret", 4, 1)], ret=True),
    "split_walker": KprobeFormat("split_walker", 903, [("s8", "level", 1, 1), U64("addr"), U64("old"),
                                                       ("u32", "visit", 4, 0)]),
    "stage2_split": KprobeFormat("stage2_split", 904, [U64("addr"), U64("size")]),
    "stage2_split_ret": KprobeFormat("stage2_split_ret", 905, [("int", "ret", 4, 1)], ret=True),
    "relax_perms": KprobeFormat("relax_perms", 906, [U64("addr"), ("u32", "prot", 4, 0)]),
}  # fmt: skip
PARSED = {f.id: parse_format(f.text, "tkrec7") for f in FORMATS.values()}


def _batch(events: list[tuple[int, str, int, dict]], tgid: int = 4242) -> dict[str, np.ndarray]:
    """Decode one CPU page of (ts, event, tid, fields) the way the recorder's tracefs backend does."""
    page = _page([(ts, FORMATS[name].record(tid, **fields)) for ts, name, tid, fields in events], events[0][0])
    decoded = decode_pages(page, PARSED, cpu=1)
    out = {}
    for event_id, array in decoded.events.items():
        array["tgid"] = tgid
        out[f"tkrec7:{PARSED[event_id].name}"] = array
    return out


def test_decode_tracefs_pairs_attributes_and_aggregates_across_batches():
    """Batch 1: split call at 90 opens walk 0 at 100 (split walker) with visits at 110 (level 2, a block) and
    120/121 (level 3, pages), a host walk (mmu 0) on thread 51, an unreturned relax_perms. Batch 2: the walk returns
    at 200 (duration 100), the split at 210 (duration 120), a visit at 300 falls outside any walk (-1)."""
    family = Stage2Family()
    family.symbols = parse_kallsyms(ARM64_KALLSYMS)
    walk = dict(addr=0x4000_0000, size=2 << 20, flags=3, cb=0xFFFF0100, mmu=0xFFFF8000, start_level=0)
    first = family.decode_tracefs(_batch([
        (90, "stage2_split", 50, dict(addr=0x4000_0000, size=2 << 20)),
        (95, "relax_perms", 50, dict(addr=0x5000, prot=7)),
        (100, "pgtable_walk", 50, walk),
        (110, "split_walker", 50, dict(level=2, addr=0x4000_0000, old=0x1, visit=1)),
        (120, "split_walker", 50, dict(level=3, addr=0x4000_0000, old=0x3, visit=1)),
        (121, "split_walker", 50, dict(level=3, addr=0x4000_1000, old=0x3, visit=1)),
        (130, "pgtable_walk", 51, {**walk, "mmu": 0}),
        (131, "pgtable_walk_ret", 51, dict(ret=0)),
    ]))  # fmt: skip
    visits = [(v["walk_id"], v["visitor"], v["level"], v["kind"], v["count"], v["pid"], v["tid"])
              for v in first["stage2_visit"].to_pylist()]
    assert visits == [(0, "stage2_split_walker", 2, "leaf:block", 1, 4242, 50),
                      (0, "stage2_split_walker", 3, "leaf:page", 2, 4242, 50)]  # fmt: skip
    assert first["stage2_walk"].num_rows == 0 and first["split"].num_rows == 0  # still open
    second = family.decode_tracefs(_batch([
        (200, "pgtable_walk_ret", 50, dict(ret=0)),
        (210, "stage2_split_ret", 50, dict(ret=-12)),
        (300, "split_walker", 50, dict(level=3, addr=0x4000_2000, old=0x3, visit=1)),
    ]))  # fmt: skip
    (w,) = second["stage2_walk"].to_pylist()
    assert (w["walk_id"], w["ts_ns"], w["duration_ns"], w["initiator"], w["addr"], w["size"], w["flags"], w["ret"]) == (
        0, 100, 100, "stage2_split_walker", 0x4000_0000, 2 << 20, 3, 0)
    (s,) = second["split"].to_pylist()
    assert (s["probe"], s["ts_ns"], s["duration_ns"], s["ret"], s["addr"]) == ("stage2_split", 90, 120, -12, 0x4000_0000)
    assert [(v["walk_id"], v["level"], v["count"]) for v in second["stage2_visit"].to_pylist()] == [(-1, 3, 1)]
    assert family.notes["host_walks"] == 1
    (call,) = family.finish_tracefs(400)["func_call"].to_pylist()
    assert (call["name"], call["duration_ns"], call["ret"]) == ("relax_perms", -1, None)
    assert json.loads(call["args"]) == {"addr": 0x5000, "prot": 7}


def test_pair_calls_is_a_per_thread_stack():
    """Thread 1: A(0) A(1) r(2) r(3) nests (1 with 2, 0 with 3); thread 2: an orphan return r(4) (its entry was
    before the recording), A(5) r(6), then A(7) left open; thread 3: A(8) A(9) r(10): 9 pairs, 8 stays open."""
    entry_ts = np.array([0, 1, 5, 7, 8, 9])
    entry_tid = np.array([1, 1, 2, 2, 3, 3])
    ret_ts = np.array([2, 3, 4, 6, 10])
    ret_tid = np.array([1, 1, 2, 2, 3])
    entries, returns, open_, missed = pair_calls(entry_ts, entry_tid, ret_ts, ret_tid)
    pairs = sorted(zip(entry_ts[entries].tolist(), ret_ts[returns].tolist()))
    assert pairs == [(0, 3), (1, 2), (5, 6), (9, 10)]
    assert entry_ts[open_].tolist() == [7, 8] and missed.tolist() == []


@pytest.mark.live
@pytest.mark.slow
def test_record_lists_every_function_probe_with_its_reason(tmp_path):
    """A real recording here: walk and ioctl are recorded; every stage2/tdp probe this host cannot attach is
    in probes.failed with the reason the family's check gives (on the development host: CONFIG_KPROBES off,
    aarch64 only, kvm.tdp_mmu=N)."""
    livecheck.need_kvm()
    livecheck.need_tracepoint("kvmmmu", "kvm_mmu_pagetable_walk")
    livecheck.need_tracepoint("syscalls", "sys_enter_ioctl")
    tracekit = shutil.which("tracekit", path=str(Path(sys.executable).parent))
    if tracekit is None:
        livecheck.skip_or_fail("the tracekit console script is not installed next to this Python")
    from tracekit.host import tracefs_root
    from tracekit.capture import open_capture
    from tracekit.recorder.session import RecordConfig, record

    expected = {}
    for name in ("tdp", "stage2"):
        for status in make_family(name).check(Host(tracefs_root())):
            if not status.available:
                expected[status.probe, name] = status.reason
    summary = record(RecordConfig(output=tmp_path / "fp.tkcap", backend="tracefs", duration=30,
                                  families=("walk", "ioctl", "tdp", "stage2"),
                                  command=[tracekit, "workload", "dirty-log", "-i", "1", "-b", "8M"]), stream=None)
    manifest = open_capture(tmp_path / "fp.tkcap").manifest
    failed = {(f["probe"], f["family"]): f["reason"] for f in manifest["probes"]["failed"]}
    assert {k: v for k, v in failed.items() if not k[0].startswith("family:")} == expected
    assert summary.rows["walk"] > 0 and summary.rows["ioctl"] > 0
    if Path("/proc/kallsyms").read_text().find(" register_kprobe\n") < 0 and not Path(
            "/sys/kernel/tracing/kprobe_events").exists():  # fmt: skip
        assert manifest["probes"]["families"] == ["walk", "ioctl"]
        assert failed["family:tdp", "tdp"].startswith("none of its 16 probes is available: CONFIG_KPROBES is off")
        assert failed["family:stage2", "stage2"] == "none of its 11 probes is available: aarch64 only (this host is x86_64)"
        assert all("CONFIG_KPROBES is off" in r for (p, fam), r in failed.items() if fam == "tdp" and ":" not in p)
        assert failed["kvm_pgtable_walk", "stage2"].startswith("aarch64 only")
    if Path("/sys/module/kvm/parameters/tdp_mmu").read_text().strip() == "N":
        assert "the TDP MMU is off (kvm.tdp_mmu=N)" in failed["kvm_tdp_mmu_map", "tdp"]


@pytest.mark.live
@pytest.mark.slow
def test_recorder_program_with_both_families_compiles_and_verifies():
    """walk + stage2 + tdp in one recorder program (as BccBackend builds it): compiled, every kprobe function
    verified by this kernel, every ring the families declare present; nothing attached. stage2 uses the
    arm64 lab kernel's member offsets (this host's BTF has no arm64 structs)."""
    from tests.funcprobes.test_btf_bcc import Arm64Stage2, loaded, need_loader
    from tracekit.errors import MissingCapability
    from tracekit.funcprobes.bcc_programs import ATTACH
    from tracekit.funcprobes.btf_offsets import BtfTypes

    need_loader()
    try:
        BtfTypes.load().member("tdp_iter", "level")
    except MissingCapability as error:
        livecheck.skip_or_fail(str(error))
    import bcc

    plan = [make_family("walk"), Arm64Stage2(), make_family("tdp")]
    with loaded(plan) as backend:
        bpf = backend.bpf
        for family in plan[1:]:
            for name in sorted({fn for pair in ATTACH[family.name].values() for fn in pair if fn}):
                bpf.load_func(name.encode(), bcc.BPF.KPROBE)
        for family in plan:
            for ring in family.rings():
                assert bpf[ring.map_name.encode()].map_fd > 0
            for index, _probe in enumerate(next(iter(family.lost_maps().values()), ())):
                table = next(bpf[m.encode()] for m in family.lost_maps())
                assert sum(table.getvalue(table.Key(index))) == 0
        assert not bpf.kprobe_fds  # kprobes are attached by attach_bcc only, never by loading


def test_cflags_need_btf_only_when_something_can_attach(tmp_path):
    """Without the kernel's BTF the member offsets are unknown: an error when a probe would attach, the ring
    defines alone (for --print-bpf) when none can."""
    from tracekit.errors import MissingCapability
    from tracekit.recorder.probe_family import ProbeStatus

    family = Stage2Family()
    family.btf_paths = (tmp_path / "vmlinux",)
    assert family.cflags([ProbeStatus("kvm_pgtable_walk", False, "aarch64 only")], 0) == [
        "-DTK_S2_PAGES=1024", "-DTK_S2_SAMPLE_PER_WALK=0"]
    with pytest.raises(MissingCapability, match="cannot read kernel BTF"):
        family.cflags([ProbeStatus("kvm_pgtable_walk", True)], 0)


def _stack_reference(events):
    """Pairs (entry ts, return ts) by walking each thread's events in time order with a stack; open entries."""
    stacks, pairs = {}, []
    for ts, tid, is_ret in sorted(events, key=lambda e: (e[1], e[0], e[2])):
        stack = stacks.setdefault(tid, [])
        if not is_ret:
            stack.append(ts)
        elif stack:
            pairs.append((stack.pop(), ts))
    return sorted(pairs), sorted(ts for stack in stacks.values() for ts in stack)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.booleans()), max_size=40))
def test_pair_calls_matches_a_per_thread_stack(steps):
    """Random entry/return sequences (orphan returns included) pair exactly as an explicit stack pairs them."""
    events = [(ts, tid, is_ret) for ts, (tid, is_ret) in enumerate(steps)]
    entries = [(ts, tid) for ts, tid, r in events if not r]
    returns = [(ts, tid) for ts, tid, r in events if r]
    e_ts, e_tid = np.array([e[0] for e in entries], np.int64), np.array([e[1] for e in entries], np.int64)
    r_ts, r_tid = np.array([r[0] for r in returns], np.int64), np.array([r[1] for r in returns], np.int64)
    paired, rets, open_, missed = pair_calls(e_ts, e_tid, r_ts, r_tid)
    pairs, still_open = _stack_reference(events)
    assert sorted(zip(e_ts[paired].tolist(), r_ts[rets].tolist())) == pairs
    assert sorted(e_ts[np.r_[open_, missed].astype(np.int64)].tolist()) == still_open
