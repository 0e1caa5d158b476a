"""`tracekit info` and `tracekit export` through typer's runner."""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa
from typer.testing import CliRunner

from tracekit import __version__
from tracekit.capture import COMMON_FIELDS, CaptureWriter
from tracekit.cli import app

runner = CliRunner()
SCHEMA = pa.schema(COMMON_FIELDS + [
    pa.field("cmd_name", pa.dictionary(pa.int32(), pa.string())),
    pa.field("duration_ns", pa.int64()),
    pa.field("frames", pa.list_(pa.string())),
])


def make(path):
    with CaptureWriter(path, {"source": {"kind": "test", "description": "made by test_cli"},
                              "target": {"pids": [7], "comm": "tracekit", "threads": [{"tid": 8, "comm": "tk-vcpu-0", "vcpu": 0}]},
                              "probes": {"requested": ["ioctl", "tdp"], "attached": ["ioctl"],
                                         "failed": [{"probe": "tdp", "reason": "CONFIG_KPROBES is off"}]},
                              "backend": "bcc"}) as w:
        w.declare("ioctl", SCHEMA)
        w.append("ioctl", pa.table({"ts_ns": [10, 20, 30], "cpu": [0, 1, 0], "pid": [7, 7, 7], "tid": [8, 8, 7],
                                    "cmd_name": ["KVM_RUN", "KVM_GET_DIRTY_LOG", "KVM_RUN"],
                                    "duration_ns": [5, 6, None], "frames": [["a", "b"], [], None]}))
        w.add_lost("ioctl", 1, 4)
    return path


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"tracekit {__version__}"


def test_info_text_and_json(tmp_path):
    path = make(tmp_path / "c.tkcap")
    text = runner.invoke(app, ["info", str(path)])
    assert text.exit_code == 0, text.output
    assert all(len(line) <= 80 for line in text.stdout.splitlines() if not line.startswith("capture"))
    assert "ioctl" in text.stdout and "lost events   4" in text.stdout and "CONFIG_KPROBES is off" in text.stdout
    data = json.loads(runner.invoke(app, ["info", str(path), "--json"]).stdout)
    assert data["families"]["ioctl"]["rows"] == 3
    assert data["families"]["ioctl"]["columns"][:4] == ["ts_ns", "cpu", "pid", "tid"]
    assert data["lost"] == {"total": 4, "by_probe": {"ioctl": 4}, "entries": [{"probe": "ioctl", "cpu": 1, "count": 4}]}
    assert data["complete"] is True and data["format_version"] == 1
    assert data["capture_id"] == json.loads((path / "capture.json").read_text())["capture_id"]
    assert data["probes"]["failed"][0]["probe"] == "tdp"


def test_export_csv_and_jsonl(tmp_path):
    path = make(tmp_path / "c.tkcap")
    out = runner.invoke(app, ["export", str(path), "--family", "ioctl", "--format", "csv"])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["cmd_name"] for r in rows] == ["KVM_RUN", "KVM_GET_DIRTY_LOG", "KVM_RUN"]
    assert json.loads(rows[0]["frames"]) == ["a", "b"] and rows[2]["duration_ns"] == ""
    out = runner.invoke(app, ["export", str(path), "-f", "ioctl", "--format", "jsonl", "-o", str(tmp_path / "x.jsonl")])
    assert out.exit_code == 0
    lines = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert lines[1] == {"ts_ns": 20, "cpu": 1, "pid": 7, "tid": 8, "cmd_name": "KVM_GET_DIRTY_LOG",
                        "duration_ns": 6, "frames": []}


def test_export_errors(tmp_path):
    path = make(tmp_path / "c.tkcap")
    r = runner.invoke(app, ["export", str(path)])
    assert r.exit_code == 2 and "--family is required; this capture has: ioctl" in r.stderr
    r = runner.invoke(app, ["export", str(path), "-f", "nope"])
    assert r.exit_code == 1 and "no family 'nope'" in r.stderr
    r = runner.invoke(app, ["export", str(path), "-f", "ioctl", "--format", "xml"])
    assert r.exit_code == 2 and "--format must be one of csv, jsonl, parquet" in r.stderr


def test_export_of_an_empty_family_is_the_header(tmp_path):
    with CaptureWriter(tmp_path / "e.tkcap") as w:
        w.declare("ioctl", SCHEMA)
    out = runner.invoke(app, ["export", str(tmp_path / "e.tkcap"), "-f", "ioctl"])
    assert out.exit_code == 0 and out.stdout.splitlines() == ["ts_ns,cpu,pid,tid,cmd_name,duration_ns,frames"]


def test_export_to_dash_writes_standard_output(tmp_path, monkeypatch):
    path = make(tmp_path / "c.tkcap")
    monkeypatch.chdir(tmp_path)
    out = runner.invoke(app, ["export", str(path), "-f", "ioctl", "--format", "jsonl", "-o", "-"])
    assert out.exit_code == 0, out.output
    assert [json.loads(line)["cmd_name"] for line in out.stdout.splitlines()] == \
        ["KVM_RUN", "KVM_GET_DIRTY_LOG", "KVM_RUN"]
    assert not (tmp_path / "-").exists()


def test_export_parquet_and_uint64_exact(tmp_path):
    import pyarrow.parquet as pq

    from tracekit.capture.columns import SCHEMAS

    big = (1 << 64) - 5
    with CaptureWriter(tmp_path / "u.tkcap") as w:
        w.declare("walk", SCHEMAS["walk"])
        w.append("walk", pa.table({"ts_ns": [1, 2], "cpu": [0, 0], "pid": [1, 1], "tid": [1, 1],
                                   "walk_id": pa.array([1, 2], pa.uint64()), "addr": pa.array([big, None], pa.uint64()),
                                   "pferr": pa.array([4, 4], pa.uint32())}))
    path = str(tmp_path / "u.tkcap")
    jsonl = runner.invoke(app, ["export", path, "-f", "walk", "--format", "jsonl"])
    assert [json.loads(line)["addr"] for line in jsonl.stdout.splitlines()] == [big, None]
    assert runner.invoke(app, ["export", path, "-f", "walk"]).stdout.splitlines()[1].split(",")[5] == str(big)
    out = runner.invoke(app, ["export", path, "-f", "walk", "--format", "parquet", "-o", str(tmp_path / "w.parquet")])
    assert out.exit_code == 0 and "wrote 2 rows of walk" in out.stderr
    table = pq.read_table(tmp_path / "w.parquet")
    assert table.schema.field("addr").type == pa.uint64() and table.column("addr").to_pylist() == [big, None]
    # an old capture's dictionary text is plain text in every format
    old = make(tmp_path / "c.tkcap")
    runner.invoke(app, ["export", str(old), "-f", "ioctl", "--format", "parquet", "-o", str(tmp_path / "i.parquet")])
    assert pq.read_table(tmp_path / "i.parquet").schema.field("cmd_name").type == pa.string()
    unwritable = runner.invoke(app, ["export", path, "-f", "walk", "--format", "csv", "-o", str(tmp_path / "no" / "x.csv")])
    assert unwritable.exit_code == 1 and len(unwritable.stderr.splitlines()) == 1 and "x.csv" in unwritable.stderr
