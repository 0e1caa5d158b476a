"""``tracekit export --perfetto``: the native protobuf parsed back with the ``perfetto`` package's proto
definitions (trace processor cannot be installed here), checked against what the capture and ``analyze``
say, and summarised into golden copies (``golden/perfetto/``; rewrite them with TRACEKIT_UPDATE_GOLDEN=1
after an intended change and review the diff)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from tracekit.analysis.analyze import analyze_capture
from tracekit.analysis.perfetto import write_perfetto
from tracekit.analysis.phases import workload_phases
from tracekit.analysis.timeline import Stage2Levels
from tracekit.capture import CaptureWriter, open_capture
from tracekit.capture.columns import SCHEMAS
from tracekit.cli import app
from tracekit.recorder.kvm_ioctls import KVM_RUN

from . import pftrace
from .conftest import SAMPLES

runner = CliRunner()
GOLDEN = Path(__file__).resolve().parent / "golden" / "perfetto"
#: Samples whose golden test runs in the fast tier (one of each kind); the others are slow.
FAST = {"x86-dirty-log-4k.tkcap", "lab-arm64-eager-enable.tkcap", "lab-x86-tdp-1g.tkcap"}
THREAD_NAME = re.compile(r"^(vCPU \d+|\S.*) \(tid \d+\)$|^thread \d+$")


def _export(capture: Path, out: Path, *extra: str) -> dict:
    result = runner.invoke(app, ["export", str(capture), "--perfetto", str(out), *extra])
    assert result.exit_code == 0, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(f"wrote {out}")
    return pftrace.summary(out) if not extra else {}


def _tracks(summary: dict, suffix: str) -> dict[str, dict]:
    return {path: track for path, track in summary["tracks"].items() if path.endswith(suffix)}


@pytest.mark.parametrize("sample", [pytest.param(p.name, marks=() if p.name in FAST else pytest.mark.slow)
                                    for p in sorted(SAMPLES.glob("*.tkcap"))])
def test_sample_trace_summary_equals_its_golden_copy(tmp_path, sample):
    summary = _export(SAMPLES / sample, tmp_path / "t.pftrace")
    assert summary["problems"] == []
    threads = [path.split(" / ")[1] for path, t in summary["tracks"].items() if t["kind"] == "thread"]
    assert threads and all(THREAD_NAME.match(name) for name in threads), threads
    text = json.dumps(summary, indent=1, sort_keys=True) + "\n"
    golden = GOLDEN / f"{sample.removesuffix('.tkcap')}.json"
    if os.environ.get("TRACEKIT_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.is_file(), f"no golden copy {golden.name}: run with TRACEKIT_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"the trace of {sample} differs from {golden.name}"


@pytest.mark.parametrize("sample", [pytest.param(p.name, marks=() if p.name in FAST else pytest.mark.slow)
                                    for p in sorted(SAMPLES.glob("*.tkcap"))])
def test_sample_json_trace_holds_the_golden_copys_tracks_and_events(tmp_path, sample):
    """``--format json``, the other export, against the same golden copy: every track with events (layers and
    phases as pseudo-threads, mapped back under their thread or group) with the same slices, instants
    and counter values as the protobuf's."""
    out = tmp_path / "t.json"
    _export(SAMPLES / sample, out, "--format", "json")
    golden = json.loads((GOLDEN / f"{sample.removesuffix('.tkcap')}.json").read_text())
    assert pftrace.json_summary(out) == pftrace.event_tracks(golden)


def test_x86_sample_has_named_vcpu_tracks_with_walks_and_mmu_lock_waits(tmp_path):
    sample = SAMPLES / "x86-dirty-log-2m.tkcap"
    out = tmp_path / "t.pftrace"
    summary = _export(sample, out)
    assert summary["problems"] == []
    walks = _tracks(summary, "/ guest walks")
    assert sorted(path.split(" / ")[1] for path in walks) == ["vCPU 0 (tid 20933)", "vCPU 1 (tid 20934)"]
    cap = open_capture(sample)
    assert sum(t["instants"]["guest walk"] for t in walks.values()) == cap.rows("walk")
    # the walks carry their depth and levels, as analyze rebuilds them
    trace = pftrace.read(out)
    depths = {}
    for packet in trace.packet:
        if packet.track_event.name == "guest walk":
            args = {a.name: a for a in packet.track_event.debug_annotations}
            key = (args["depth"].int_value, args["levels"].string_value)
            depths[key] = depths.get(key, 0) + 1
    analysis = analyze_capture(cap)
    by_depth = analysis.tables["walk_depth"].groupby("depth")["walks"].sum().to_dict()
    assert {d: sum(n for (depth, _), n in depths.items() if depth == d) for d in by_depth} == by_depth
    assert depths[(3, "4>3>2")] == 49_152
    # lock waits named as analyze names them: the 795 mmu_lock waits of the two vCPUs, no raw address
    contention = analysis.tables["lock_contention"]
    mmu_waits = int(contention.loc[contention["lock"] == "mmu_lock", "count"].sum())
    lock_tracks = _tracks(summary, "/ lock waits")
    assert sum(t["slices"].get("mmu_lock", 0) for t in lock_tracks.values()) == mmu_waits == 795
    assert not any(name.startswith("wait ") for t in lock_tracks.values() for name in t["slices"])
    assert sum(n for t in lock_tracks.values() for n in t["slices"].values()) == cap.rows("lock")
    process = [p for p, t in summary["tracks"].items() if t["kind"] == "process"]
    assert process == ["tracekit workload dirty-log (pid 20914)"]
    assert summary["tracks"][f"{process[0]} / guest walks/s"]["counter"]["sum"] == cap.rows("walk") * 100
    phases = [t for path, t in summary["tracks"].items() if path.startswith(f"{process[0]} / phases / ")]
    assert len(phases) == 7 and sum(sum(t["slices"].values()) for t in phases) == 13


def test_each_kind_of_phase_is_its_own_track_in_phase_order(tmp_path):
    """The phases group holds one track per kind of phase, ordered by first start, each holding that
    kind's phases (every iteration) at the times the workload recorded."""
    sample = SAMPLES / "x86-dirty-log-2m.tkcap"
    out = tmp_path / "t.pftrace"
    _export(sample, out)
    trace = pftrace.read(out)
    paths = pftrace.track_paths(trace)
    descriptors = {p.track_descriptor.uuid: p.track_descriptor for p in trace.packet if p.HasField("track_descriptor")}
    group = next(d for uuid, d in descriptors.items() if paths[uuid][1].endswith(" / phases"))
    assert group.child_ordering == group.ChildTracksOrdering.Value("EXPLICIT")
    kinds = sorted((d for d in descriptors.values() if d.parent_uuid == group.uuid), key=lambda d: d.sibling_order_rank)
    assert [d.name for d in kinds] == ["setup", "populate", "enable-dirty-logging", "dirty-memory", "get-dirty-log",
                                       "clear-dirty-log", "disable-dirty-logging"]
    begins, spans = {}, []
    for packet in trace.packet:
        event = packet.track_event
        if packet.HasField("track_event") and descriptors.get(event.track_uuid) in kinds:
            if event.type == event.TYPE_SLICE_BEGIN:
                args = {a.name: a.int_value for a in event.debug_annotations}
                begins[event.track_uuid] = (event.name, packet.timestamp, args.get("iteration", 0))
            else:
                name, start, iteration = begins.pop(event.track_uuid)
                spans.append((descriptors[event.track_uuid].name, name, iteration, start, packet.timestamp))
    phases = workload_phases(open_capture(sample).manifest)
    assert sorted(spans) == sorted(zip(phases["name"], phases["phase"], phases["iteration"], phases["start_ns"],
                                       phases["end_ns"]))
    assert len(spans) == 13 and not begins


def test_aggregated_kvm_run_leaves_the_workloads_passes_on_the_vcpu_tracks(tmp_path):
    """KVM_RUN was counted in the kernel (no call times): each vCPU track holds the built-in workload's
    passes, one slice per pass spanning its phase, with the pass's KVM_RUN time as the workload measured
    it. Every guest walk of the vCPU lies inside one of them, and the kernel's total agrees."""
    sample = SAMPLES / "x86-dirty-log-2m.tkcap"
    out = tmp_path / "t.pftrace"
    _export(sample, out)
    cap = open_capture(sample)
    trace = pftrace.read(out)
    paths = {uuid: path for uuid, (_, path) in pftrace.track_paths(trace).items()}
    passes, open_at = {}, {}
    for packet in trace.packet:
        event = packet.track_event
        if event.type == event.TYPE_SLICE_BEGIN and event.name == "guest pass":
            open_at[event.track_uuid] = (packet.timestamp, {a.name: a for a in event.debug_annotations})
        elif event.type == event.TYPE_SLICE_END and event.track_uuid in open_at:
            start, args = open_at.pop(event.track_uuid)
            passes.setdefault(paths[event.track_uuid], []).append((start, packet.timestamp, args))
    phases = workload_phases(cap.manifest)
    runs = phases[phases["name"].isin(["populate", "dirty-memory"])]
    walks = cap.table("walk", ["ts_ns", "tid"]).to_pandas()
    kernel = cap.table("ioctl_summary", ["tid", "cmd_name", "total_ns"]).to_pandas()
    assert sorted(passes) == ["tracekit workload dirty-log (pid 20914) / vCPU 0 (tid 20933)",
                              "tracekit workload dirty-log (pid 20914) / vCPU 1 (tid 20934)"]
    for vcpu in cap.manifest["workload"]["vcpus"]:
        spans = passes[f"tracekit workload dirty-log (pid 20914) / vCPU {vcpu['index']} (tid {vcpu['tid']})"]
        assert [(s, e) for s, e, _ in spans] == list(zip(runs["start_ns"], runs["end_ns"]))
        assert [a["phase"].string_value for _, _, a in spans] == runs["phase"].tolist()
        in_run = sum(a["kvm_run_ns"].int_value for _, _, a in spans)
        assert in_run == vcpu["kvm_run_ns"] and all(a["kvm_run_ns"].int_value <= e - s for s, e, a in spans)
        ts = walks.loc[walks["tid"] == vcpu["tid"], "ts_ns"].to_numpy()
        assert len(ts) and all(any(s <= t < e for s, e, _ in spans) for t in ts)
        counted = int(kernel.loc[(kernel["tid"] == vcpu["tid"]) & (kernel["cmd_name"] == "KVM_RUN"), "total_ns"].sum())
        assert 0.99 * in_run <= counted <= in_run


def test_lab_capture_has_its_probe_spans_on_the_named_vcpu_thread(tmp_path):
    sample = SAMPLES / "lab-arm64-eager-enable.tkcap"
    out = tmp_path / "t.pftrace"
    summary = _export(sample, out)
    vcpu = "python3 (pid 146) / vCPU 0 (tid 146)"
    assert summary["tracks"][f"{vcpu} / faults"]["slices"] == {"guest_abort": 130}
    assert summary["tracks"][f"{vcpu} / splits"]["slices"] == {"stage2_split": 128}
    assert summary["tracks"][f"{vcpu} / stage-2 walks"]["slices"] == {
        "stage2_attr_walker": 1, "stage2_free_walker": 1, "stage2_map_walker": 129, "stage2_split_walker": 128}
    assert not any(" / tid " in path or path.endswith("/ thread 146") for path in summary["tracks"])
    # the slices keep the probes' durations: the faults' total time equals the family's
    cap = open_capture(sample)
    faults = cap.table("fault", ["duration_ns"]).column(0).to_numpy()
    trace = pftrace.read(out)
    paths = pftrace.track_paths(trace)
    fault_track = next(uuid for uuid, (_, path) in paths.items() if path == f"{vcpu} / faults")
    begin, total = {}, 0
    for packet in trace.packet:
        event = packet.track_event
        if packet.HasField("track_event") and event.track_uuid == fault_track:
            if event.type == event.TYPE_SLICE_BEGIN:
                begin[fault_track] = packet.timestamp
            else:
                total += packet.timestamp - begin.pop(fault_track)
    assert total == int(faults.sum())
    # stage-2 walks carry the levels they visited (stage2_visit)
    levels = {a.string_value for p in trace.packet for a in p.track_event.debug_annotations if a.name == "levels"}
    assert "2>3" in levels or "1>2>3" in levels, levels


@pytest.mark.parametrize("sample, lab", [("lab-arm64-eager-enable.tkcap", True), ("x86-dirty-log-4k.tkcap", False)])
def test_a_lab_captures_processes_say_their_timings_are_emulated(tmp_path, sample, lab):
    """Protobuf: the process carries the label ``emulated timings`` (shown beside its name) and the capture's
    timing note as its description; JSON: a ``process_labels`` record. A live capture has neither."""
    out, json_out = tmp_path / "t.pftrace", tmp_path / "t.json"
    _export(SAMPLES / sample, out)
    _export(SAMPLES / sample, json_out, "--format", "json")
    processes = [p.track_descriptor for p in pftrace.read(out).packet
                 if p.HasField("track_descriptor") and p.track_descriptor.HasField("process")]
    assert processes
    for d in processes:
        assert list(d.process.process_labels) == (["emulated timings"] if lab else [])
        assert d.description.startswith("emulated machine (QEMU TCG): event counts are exact") == lab
    labels = [e["args"]["labels"] for e in json.loads(json_out.read_text())["traceEvents"]
              if e["ph"] == "M" and e["name"] == "process_labels"]
    assert labels == (["emulated timings"] * len(processes) if lab else [])


def _rows(family: str, **columns) -> pa.Table:
    """A table of ``family``'s schema holding ``columns`` (pid 50, cpu 0, the other columns null)."""
    schema = SCHEMAS[family]
    n = len(columns["ts_ns"])
    columns = {"pid": [50] * n, "cpu": [0] * n, **columns}
    return pa.table([pa.array(list(columns[f.name]) if f.name in columns else [None] * n,
                              f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
                     for f in schema], schema=pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type)
                                                         else f for f in schema])).cast(schema)


def _demo_like(path: Path, **extra: pa.Table) -> Path:
    """A capture shaped like the demo's: vCPU 0 identified by its KVM_RUN fd in the manifest, its thread
    named ``tk-vcpu-0``, KVM_RUN streamed, and walks and SPTE installs on that thread; ``extra`` families."""
    manifest = {"target": {"pids": [50], "comm": "python", "threads": [
        {"tid": 50, "comm": "python", "vcpu": None}, {"tid": 51, "comm": "phases", "vcpu": None},
        {"tid": 52, "comm": "tk-vcpu-0", "vcpu": 0, "vcpu_from": "KVM_RUN fd"}],
        "vcpu_fds": {"fds": [{"pid": 50, "fd": 5, "vcpu": 0}]}},
        "workload": {"workload": "dirty-log", "pid": 50, "phases": [
            {"name": "populate", "iteration": None, "start_ns": 1000, "end_ns": 90_000}]}}
    n = 4
    ts = np.array([2000, 3000, 51_000, 52_000])
    with CaptureWriter(path, manifest=manifest) as writer:
        for family in ("ioctl", "walk", "walk_element", "mmu"):
            writer.declare(family, SCHEMAS[family])
        writer.append("ioctl", _rows("ioctl", ts_ns=[1000, 50_000], tid=[52, 52], duration_ns=[40_000, 30_000],
                                     fd=[5, 5], cmd=[KVM_RUN] * 2, cmd_name=["KVM_RUN"] * 2))
        writer.append("walk", _rows("walk", ts_ns=ts, tid=[52] * n, walk_id=range(n), addr=[0x1000 * i for i in range(n)]))
        writer.append("walk_element", _rows("walk_element", ts_ns=np.repeat(ts, 2) + 1, tid=[52] * 2 * n,
                                            walk_id=np.repeat(np.arange(n), 2), index=[0, 1] * n, level=[4, 3] * n,
                                            pte=[1, 1 | 0x80] * n))
        writer.append("mmu", _rows("mmu", ts_ns=ts, tid=[52] * n, event=["kvm_mmu_set_spte"] * n))
        for family, table in extra.items():
            writer.declare(family, SCHEMAS[family])
            writer.append(family, table)
    return path


@pytest.mark.parametrize("sample", ["lab-arm64-eager-enable.tkcap", "lab-arm64-skip3-resplit.tkcap",
                                    "lab-x86-tdp-1g.tkcap"])
def test_stage2_levels_equal_a_groupby_of_the_visits(sample):
    cap = open_capture(SAMPLES / sample)
    visits = cap.table("stage2_visit", ["walk_id", "level", "count"]).to_pandas().dropna()
    expected = {int(w): (">".join(str(int(level)) for level in sorted(g["level"].unique())), int(g["count"].sum()))
                for w, g in visits.groupby("walk_id")}
    levels = Stage2Levels(cap)
    assert expected and {w: levels.get(w) for w in expected} == expected
    assert levels.get(max(expected) + 1) is None and levels.get(None) is None


def test_stage2_levels_add_up_across_segments_and_keep_odd_levels(tmp_path):
    """A walk whose visits lie in two segments is one walk; levels outside -1..62 (a damaged capture) kept."""
    path = tmp_path / "s.tkcap"
    with CaptureWriter(path, segment_rows=3) as writer:
        writer.declare("stage2_visit", SCHEMAS["stage2_visit"])
        for part in ([(7, -1, 2), (7, 2, 5), (9, 3, 1)], [(7, 2, 4), (7, 100, 1), (9, 3, 1)]):
            ids, level, count = zip(*part)
            writer.append("stage2_visit", _rows("stage2_visit", ts_ns=[1, 2, 3], tid=[5] * 3, walk_id=ids, level=level,
                                                count=count, visitor=["stage2_map_walker"] * 3, kind=["leaf"] * 3))
    cap = open_capture(path)
    assert len(cap.segments("stage2_visit")) == 2
    levels = Stage2Levels(cap)
    assert levels.get(7) == ("-1>2>100", 12) and levels.get(9) == ("3", 2) and levels.get(8) is None


def test_demo_shaped_capture_populates_the_vcpu_track(tmp_path):
    summary = _export(_demo_like(tmp_path / "demo.tkcap"), tmp_path / "t.pftrace")
    vcpu = "tracekit workload dirty-log (pid 50) / vCPU 0 (tid 52)"
    assert summary["tracks"][vcpu]["slices"] == {"KVM_RUN": 2}
    assert summary["tracks"][f"{vcpu} / guest walks"]["instants"] == {"guest walk": 4}
    assert summary["tracks"][f"{vcpu} / SPTE installs"]["instants"] == {"kvm_mmu_set_spte": 4}
    assert summary["problems"] == []


def test_threads_without_events_get_no_track(tmp_path):
    """A recording's ``threads`` family lists every thread of the process (the demo's ``jemalloc_bg_thd`` and
    ``kvm-nx-lpage-re``): one without events gets no (empty) thread track; the vCPU thread keeps its track."""
    threads = _rows("threads", ts_ns=[900, 900], tid=[52, 53], comm=["tk-vcpu-0", "jemalloc_bg_thd"], vcpu=[0, None])
    path = _demo_like(tmp_path / "demo.tkcap", threads=threads)
    assert open_capture(path).rows("threads") == 2
    summary = _export(path, tmp_path / "t.pftrace")
    threads = [p for p, t in summary["tracks"].items() if t["kind"] == "thread"]
    assert threads == ["tracekit workload dirty-log (pid 50) / vCPU 0 (tid 52)"], threads


def test_json_format_is_kept(tmp_path):
    out = tmp_path / "t.json"
    _export(_demo_like(tmp_path / "demo.tkcap"), out, "--format", "json")
    events = json.loads(out.read_text())["traceEvents"]
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert "vCPU 0 (tid 52)" in names and "vCPU 0 (tid 52): guest walks" in names and "phases: populate" in names
    assert [e["name"] for e in events if e["ph"] == "X" and e["cat"] == "ioctl"] == ["KVM_RUN", "KVM_RUN"]
    assert [e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"] == [
        "tracekit workload dirty-log"]


def test_empty_and_hostile_captures_give_one_line(tmp_path):
    empty = tmp_path / "empty.tkcap"
    with CaptureWriter(empty, manifest={"target": {"pids": [7], "comm": "qemu"}}):
        pass
    summary = _export(empty, tmp_path / "e.pftrace")
    assert summary == {"tracks": {"qemu (pid 7)": {"kind": "process"}}, "problems": []}
    early = tmp_path / "early.tkcap"
    with CaptureWriter(early) as writer:
        writer.declare("walk", SCHEMAS["walk"])
        writer.append("walk", _rows("walk", ts_ns=[-5, 10, 2**62], pid=[9] * 3, tid=[9] * 3))
    result = runner.invoke(app, ["export", str(early), "--perfetto", str(tmp_path / "h.pftrace")])
    assert result.exit_code == 0 and result.stderr.strip().endswith("1 events before the clock's zero left out")
    assert pftrace.summary(tmp_path / "h.pftrace")["tracks"]["not a traced VM (pid 9) / thread 9 / guest walks"] \
        == {"kind": "track", "instants": {"guest walk": 2}}
    for args, line in ((["--format", "csv"], "--format for --perfetto must be one of proto, json, not 'csv'"),
                       (["--family", "walk"], "--perfetto FILE writes the whole capture; --family and -o export"),
                       (["-o", str(tmp_path / "w.csv")], "give one or the other"),
                       ([], "cannot write")):
        target = tmp_path / "no" / "such" / "dir" / "t.pftrace" if not args else tmp_path / "x.pftrace"
        result = runner.invoke(app, ["export", str(early), "--perfetto", str(target), *args])
        assert result.exit_code != 0 and len(result.stderr.strip().splitlines()) == 1, result.output
        assert line in result.stderr


def test_families_are_read_a_batch_at_a_time(tmp_path, monkeypatch):
    """No family is read whole: reading goes through iter_batches (bounded batches) for every family but the
    small ones the lock names need (stack, and the ioctls of a few kinds, filtered batch by batch)."""
    from tracekit.capture.reader import Capture

    whole = []
    for method in ("table", "dataframe", "iter_tables"):
        original = getattr(Capture, method)

        def spy(self, family, *args, _original=original, _method=method, **kwargs):
            whole.append((_method, family))
            return _original(self, family, *args, **kwargs)

        monkeypatch.setattr(Capture, method, spy)
    write_perfetto(open_capture(SAMPLES / "x86-dirty-log-4k.tkcap"), tmp_path / "t.pftrace")
    assert {family for _, family in whole} <= {"stack"}, whole
