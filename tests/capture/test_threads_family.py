"""The ``threads`` family: written from the recorder's thread list, read by ``Capture.threads()`` and the
dataset's ``threads`` table over the manifest; older captures (no family, or an empty one) fall back to the
manifest; a family without the declared columns, or a file that is no Parquet, is one line."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tracekit.capture import COMMON_FIELDS, CaptureWriter, open_capture
from tracekit.capture.columns import SCHEMAS
from tracekit.cli import app
from tracekit.dataset import threads_table
from tracekit.recorder.session import thread_table
from tests.capture.test_hostile import refused

TARGET = {"pids": [10, 20], "comm": "qemu-system-x86", "name": "vm-a",
          "vms": [{"pid": 10, "comm": "qemu-system-x86", "name": "vm-a", "vcpus": 2, "memory": 1 << 30},
                  {"pid": 20, "comm": "qemu-system-x86", "name": None, "vcpus": 1, "memory": None}],
          "threads": [{"pid": 10, "tid": 10, "comm": "qemu-system-x86", "vcpu": None},
                      {"pid": 10, "tid": 11, "comm": "CPU 0/KVM", "vcpu": 0, "vcpu_from": "KVM_RUN fd"},
                      {"pid": 20, "tid": 21, "comm": "CPU 0/KVM", "vcpu": 0, "vcpu_from": "thread name"},
                      {"pid": None, "tid": 22, "comm": "", "vcpu": None}]}
OLD_COLUMNS = ("pid", "tid", "comm", "vcpu", "vm")


def _write(path: Path, family: pa.Table | None, schema: pa.Schema = SCHEMAS["threads"]) -> Path:
    with CaptureWriter(path, manifest={"target": TARGET}) as writer:
        writer.declare("threads", schema)
        if family is not None:
            writer.append("threads", family)
    return path


def _recorded() -> pa.Table:
    """The family as the recorder writes it: tid 10 listed from 100 to 900 ns (the started command's main
    thread), 11 listed from 300 but evented from 150, 21 evented only, 22 known from the workload's record."""
    listed = {10: [100, 900], 11: [300, 800]}
    events = {11: [150, 250], 21: [120, 130]}
    return thread_table(TARGET["threads"], listed, events, 10, TARGET["pids"])


def test_the_family_is_read_over_the_manifest(tmp_path):
    table = _recorded()
    assert table.schema.equals(SCHEMAS["threads"])
    cap = open_capture(_write(tmp_path / "t.tkcap", table))
    rows = {t["tid"]: t for t in cap.threads()}
    assert [(t["tid"], t["pid"], t["comm"], t["vcpu"], t["vcpu_from"]) for t in cap.threads()] == \
        [(t["tid"], t["pid"], t["comm"], t["vcpu"], t.get("vcpu_from")) for t in TARGET["threads"]]
    assert (rows[10]["first_seen_ns"], rows[10]["last_seen_ns"], rows[10]["pre_exec"]) == (100, 900, True)
    assert (rows[11]["first_seen_ns"], rows[11]["last_seen_ns"], rows[11]["pre_exec"]) == (150, 800, False)
    assert (rows[21]["first_seen_ns"], rows[21]["last_seen_ns"]) == (120, 130)
    assert rows[22]["last_seen_ns"] is None and rows[22]["first_seen_ns"] >= 900  # learned as the recording ended
    assert table.column("cpu").to_pylist() == [-1] * 4 and table.column("pid").to_pylist()[-1] == 0  # unknown
    got = {r["tid"]: r for r in threads_table([cap.path]).to_pylist()}
    assert got[11]["vm"] == "vm-a" and got[21]["vm"] == "qemu-system-x86" and got[22]["pid"] is None
    assert got[11]["first_seen_ns"] == 150 and got[21]["vcpu_from"] == "thread name"


def test_the_family_wins_where_it_and_the_manifest_differ(tmp_path):
    table = _recorded()
    renamed = table.set_column(table.schema.get_field_index("comm"), "comm", pa.array(["a", "b", "c", "d"]))
    cap = open_capture(_write(tmp_path / "t.tkcap", renamed))
    assert [t["comm"] for t in cap.threads()] == ["a", "b", "c", "d"]


@pytest.mark.parametrize("family", ["absent", "empty"])
def test_older_captures_fall_back_to_the_manifest(tmp_path, family):
    """No family (written before it) or one without rows (a recorder killed before the end): the manifest."""
    path = tmp_path / "old.tkcap"
    if family == "absent":
        with CaptureWriter(path, manifest={"target": TARGET}):
            pass
    else:
        _write(path, None)
    assert open_capture(path).has("threads") == (family == "empty")
    rows = threads_table([path]).drop(["capture"]).to_pylist()
    assert [{k: r[k] for k in OLD_COLUMNS} for r in rows] == [
        {"pid": 10, "tid": 10, "comm": "qemu-system-x86", "vcpu": None, "vm": "vm-a"},
        {"pid": 10, "tid": 11, "comm": "CPU 0/KVM", "vcpu": 0, "vm": "vm-a"},
        {"pid": 20, "tid": 21, "comm": "CPU 0/KVM", "vcpu": 0, "vm": "qemu-system-x86"},
        {"pid": None, "tid": 22, "comm": "", "vcpu": None, "vm": None}]
    assert [r["vcpu_from"] for r in rows] == [None, "KVM_RUN fd", "thread name", None]
    assert {(r["first_seen_ns"], r["last_seen_ns"]) for r in rows} == {(None, None)}


def _common(*more: pa.Field) -> pa.Schema:
    return pa.schema(list(COMMON_FIELDS) + list(more))


@pytest.mark.parametrize("schema, words", [
    (_common(pa.field("comm", pa.int64())), "no column last_seen_ns"),
    (pa.schema([f if f.name != "comm" else pa.field("comm", pa.int64()) for f in SCHEMAS["threads"]]),
     "column comm is int64, expected string"),
    (pa.schema([f if f.name != "vcpu" else pa.field("vcpu", pa.float64()) for f in SCHEMAS["threads"]]),
     "column vcpu is double, expected int32"),
], ids=["missing column", "comm int", "vcpu float"])
def test_a_family_of_another_schema_is_one_line(tmp_path, schema, words):
    path = _write(tmp_path / "bad.tkcap", None, schema)
    line = refused(path, "threads", "not a threads family", words)
    assert str(path / "threads") in line
    result = CliRunner().invoke(app, ["sql", "SELECT count(*) FROM threads", str(path)])
    assert result.exit_code == 1 and result.stderr.strip() == line


@pytest.mark.parametrize("name", ["_schema.parquet", "part-000001.parquet"])
def test_an_empty_file_in_the_family_is_one_line(tmp_path, name):
    path = _write(tmp_path / "empty.tkcap", _recorded())
    (path / "threads" / name).write_bytes(b"")
    refused(path, str(path / "threads" / name), "corrupt or truncated Parquet file")


def test_a_dictionary_encoded_label_is_accepted(tmp_path):
    """A string column written dictionary-encoded (as older writers did for labels) reads as the text."""
    table = _recorded()
    index = table.schema.get_field_index("vcpu_from")
    encoded = table.set_column(index, "vcpu_from", table.column("vcpu_from").dictionary_encode())
    path = _write(tmp_path / "dict.tkcap", encoded, encoded.schema)
    assert [t["vcpu_from"] for t in open_capture(path).threads()][1:3] == ["KVM_RUN fd", "thread name"]
    assert pq.read_table(path / "threads" / "part-000001.parquet").num_rows == 4
