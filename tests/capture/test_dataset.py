"""tracekit.dataset: DuckDB views over every sample equal what ``tracekit info`` counts; ids, threads,
phases, empty families and refused captures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from tracekit.capture import open_capture
from tracekit.capture.columns import SCHEMAS
from tracekit.capture.manifest import derived_capture_id
from tracekit.capture.summary import capture_summary
from tracekit.dataset import (CAPTURES_SCHEMA, Dataset, capture_facts, connect, family_files, find_captures,
                              phases_table, segments_table, threads_table)
from tracekit.errors import CaptureFormatError

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


@pytest.fixture(scope="module")
def samples():
    return Dataset.open([SAMPLES])


@pytest.fixture(scope="module")
def con(samples):
    return connect(samples)


def test_every_sample_is_found(samples):
    on_disk = sorted(p.parent for p in SAMPLES.rglob("capture.json"))
    assert sorted(cap.path for cap in samples.captures) == on_disk
    assert len(on_disk) >= 30 and not samples.problems


def test_views_count_what_info_counts(samples, con):
    expected: dict[tuple[str, str], int] = {}
    for cap in samples.captures:
        for family, facts in capture_summary(open_capture(cap.path))["families"].items():
            expected[(cap.capture_id, family)] = facts["rows"]
    got: dict[tuple[str, str], int] = {}
    for family in {family for _, family in expected}:
        for capture, rows in con.execute(f'SELECT capture, count(*) FROM "{family}" GROUP BY capture').fetchall():
            got[(capture, family)] = rows
    assert {key: rows for key, rows in expected.items() if rows} == got
    assert sum(got.values()) > 500_000


def test_captures_view(samples, con):
    assert con.execute("SELECT count(*), count(DISTINCT capture) FROM captures").fetchone() == (len(samples.captures),) * 2
    row = con.execute("SELECT kernel_release, arch, backend, source_kind, vcpus, lost_events, len(phases), "
                      "kvm_params['kvm.tdp_mmu'], family_rows['walk'] FROM captures "
                      "WHERE name = 'x86-dirty-log-2m'").fetchone()
    assert row == ("6.18.44-fc-v657", "x86_64", "bcc", "live", 2, 0, 13, "N", 49217)
    lab = con.execute("SELECT scenario, kvm_params['kvm.eager_page_split'], memory_bytes FROM captures "
                      "WHERE name = 'lab-x86-tdp-eager'").fetchone()
    assert lab == ("tdp-eager", "Y", 64 << 20)
    assert capture_facts(samples).schema.equals(CAPTURES_SCHEMA)


def test_threads_and_phases(samples, con):
    vcpus = con.execute("SELECT t.vcpu, t.comm FROM threads t JOIN captures c USING (capture) "
                        "WHERE c.name = 'x86-dirty-log-2m' AND t.vcpu IS NOT NULL ORDER BY t.vcpu").fetchall()
    assert vcpus == [(0, "tk-vcpu-0"), (1, "tk-vcpu-1")]
    phases = con.execute("SELECT phase, source FROM phases p JOIN captures c USING (capture) "
                         "WHERE c.name = 'x86-dirty-log-2m' ORDER BY start_ns").fetchall()
    assert ("populate", "workload") in phases and ("dirty-memory#3", "workload") in phases
    lab = con.execute("SELECT count(*) FROM phases p JOIN captures c USING (capture) "
                      "WHERE c.name = 'lab-arm64-eager-enable' AND p.source = 'lab-step'").fetchone()[0]
    assert lab >= 3
    assert threads_table(samples).num_rows == con.execute("SELECT count(*) FROM threads").fetchone()[0]
    assert phases_table(samples).num_rows == con.execute("SELECT count(*) FROM phases").fetchone()[0]


def test_family_files_never_empty(samples):
    files = family_files(samples)
    assert files and all(files.values())
    assert sum(len(v) for v in files.values()) == segments_table(samples).num_rows
    # a family with a schema file and no segment (walk_error in the live samples) still has a file
    assert any(path.endswith("_schema.parquet") for path in files.get("walk_error", []))


def test_family_nobody_recorded_is_an_empty_view(tmp_path):
    con = connect([SAMPLES / "lab-x86-tdp-1g.tkcap"])
    assert con.execute("SELECT count(*) FROM walk_element").fetchone() == (0,)
    columns = [row[0] for row in con.execute("DESCRIBE walk_element").fetchall()]
    assert columns == ["capture", *SCHEMAS["walk_element"].names]


def _copy(sample: str, to: Path) -> Path:
    return Path(shutil.copytree(SAMPLES / sample, to))


def test_old_capture_gets_a_stable_derived_id(tmp_path):
    manifest = json.loads((SAMPLES / "x86-dirty-log-4k.tkcap" / "capture.json").read_text())
    assert "capture_id" not in manifest
    cap = open_capture(SAMPLES / "x86-dirty-log-4k.tkcap")
    assert cap.capture_id == derived_capture_id(manifest) and len(cap.capture_id) == 32
    moved = _copy("x86-dirty-log-4k.tkcap", tmp_path / "renamed.tkcap")
    (moved / "capture.json").write_text(json.dumps(manifest, indent=4))  # re-indented: the same id
    assert open_capture(moved).capture_id == cap.capture_id


def test_copy_of_a_capture_is_refused_naming_both(tmp_path):
    _copy("x86-dirty-log-4k.tkcap", tmp_path / "a.tkcap")
    _copy("x86-dirty-log-4k.tkcap", tmp_path / "b.tkcap")
    with pytest.raises(CaptureFormatError, match=r"b\.tkcap: the same capture as .*a\.tkcap"):
        Dataset.open([tmp_path])
    assert len(Dataset.open([tmp_path], skip_bad=True).captures) == 1


def test_damaged_capture_is_left_out_with_one_line(tmp_path):
    _copy("lab-x86-tdp-1g.tkcap", tmp_path / "good.tkcap")
    bad = _copy("lab-x86-tdp-eager.tkcap", tmp_path / "bad.tkcap")
    segment = next((bad / "split").glob("part-*.parquet"))
    segment.write_bytes(segment.read_bytes()[:100])
    with pytest.raises(CaptureFormatError, match="bad.tkcap/split/part-"):
        Dataset.open([tmp_path])
    ds = Dataset.open([tmp_path], skip_bad=True)
    assert [cap.path.name for cap in ds.captures] == ["good.tkcap"]
    assert len(ds.problems) == 1 and "bad.tkcap" in ds.problems[0] and "\n" not in ds.problems[0]
    assert connect(ds).execute("SELECT count(*) FROM split").fetchone() == (1026,)


def test_paths_and_globs(tmp_path):
    one = find_captures([SAMPLES / "lab-x86-tdp-1g.tkcap"])
    assert one == [SAMPLES / "lab-x86-tdp-1g.tkcap"]
    globbed = find_captures([str(SAMPLES / "lab-x86-*.tkcap"), str(SAMPLES / "lab-x86-tdp-1g.tkcap")])
    assert len(globbed) == 4  # the repeated one counted once
    with pytest.raises(CaptureFormatError, match="no capture matches"):
        find_captures([str(tmp_path / "none-*.tkcap")])
    with pytest.raises(CaptureFormatError, match="no such capture"):
        Dataset.open([tmp_path / "missing.tkcap"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptureFormatError, match="empty directory"):
        Dataset.open([tmp_path / "empty"])


def test_tables_take_paths_too():
    table = capture_facts([SAMPLES / "lab-x86-tdp-1g.tkcap"])
    assert table.num_rows == 1 and isinstance(table, pa.Table)
    assert table.column("source_kind").to_pylist() == ["lab"]


def test_threads_of_several_vms(tmp_path):
    from tracekit.capture import CaptureWriter

    target = {"pids": [10, 20], "comm": "qemu-system-x86", "name": "vm-a",
              "vms": [{"pid": 10, "comm": "qemu-system-x86", "name": "vm-a", "vcpus": 2, "memory": 1 << 30},
                      {"pid": 20, "comm": "qemu-system-x86", "name": None, "vcpus": 1, "memory": None}],
              "threads": [{"pid": 10, "tid": 11, "comm": "CPU 0/KVM", "vcpu": 0, "vcpu_from": "KVM_RUN fd"},
                          {"pid": 20, "tid": 21, "comm": "CPU 0/KVM", "vcpu": 0},
                          {"pid": 10, "tid": 10, "comm": "qemu-system-x86", "vcpu": None}]}
    with CaptureWriter(tmp_path / "vms.tkcap", manifest={"target": target}):
        pass
    rows = threads_table([tmp_path / "vms.tkcap"]).select(["pid", "tid", "comm", "vcpu", "vm"]).to_pylist()
    assert rows == [{"pid": 10, "tid": 10, "comm": "qemu-system-x86", "vcpu": None, "vm": "vm-a"},
                    {"pid": 10, "tid": 11, "comm": "CPU 0/KVM", "vcpu": 0, "vm": "vm-a"},
                    {"pid": 20, "tid": 21, "comm": "CPU 0/KVM", "vcpu": 0, "vm": "qemu-system-x86"}]
    facts = capture_facts([tmp_path / "vms.tkcap"]).to_pylist()[0]
    assert (facts["vcpus"], facts["memory_bytes"], facts["status"]) == (3, 1 << 30, "complete")


def test_a_hostile_capture_id_is_refused_in_one_line(tmp_path):
    moved = _copy("lab-x86-tdp-1g.tkcap", tmp_path / "x.tkcap")
    manifest = json.loads((moved / "capture.json").read_text())
    for bad in ("two\nlines", "", "x" * 129, 7, "'; DROP TABLE captures; --"):
        (moved / "capture.json").write_text(json.dumps({**manifest, "capture_id": bad}))
        with pytest.raises(CaptureFormatError, match="invalid manifest field capture_id"):
            open_capture(moved)
    (moved / "capture.json").write_text(json.dumps({**manifest, "capture_id": "host-1:run.42"}))
    assert open_capture(moved).capture_id == "host-1:run.42"
