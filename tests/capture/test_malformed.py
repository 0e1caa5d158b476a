"""Truncated, corrupt, empty, foreign and newer captures: one clear line, exit code 1, no traceback."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from tracekit.capture import COMMON_FIELDS, CaptureWriter, open_capture
from tracekit.cli import app
from tracekit.errors import CaptureFormatError

runner = CliRunner()
SCHEMA = pa.schema(COMMON_FIELDS + [pa.field("pte", pa.uint64())])


def make_capture(path):
    with CaptureWriter(path) as w:
        w.declare("walk_element", SCHEMA)
        w.append("walk_element", pa.table({"ts_ns": [1, 2], "cpu": [0, 0], "pid": [9, 9], "tid": [9, 9],
                                           "pte": pa.array([0x1067, 0x2067], pa.uint64())}))
    return path


def truncate_segment(path):
    seg = next((path / "walk_element").glob("part-*.parquet"))
    seg.write_bytes(seg.read_bytes()[: seg.stat().st_size // 2])


def corrupt_manifest(path):
    (path / "capture.json").write_text('{"format": "tracekit-capture", "format_version": ')


def empty_manifest(path):
    (path / "capture.json").write_text("")


def foreign_manifest(path):
    (path / "capture.json").write_text(json.dumps({"format": "perfetto", "version": 3}))


def newer_version(path):
    manifest = json.loads((path / "capture.json").read_text())
    manifest["format_version"] = 99
    (path / "capture.json").write_text(json.dumps(manifest))


def garbage_segment(path):
    seg = next((path / "walk_element").glob("part-*.parquet"))
    seg.write_bytes(b"PAR1" + b"\x00" * 64)


CASES = {
    "truncated segment": (truncate_segment, "corrupt or truncated"),
    "garbage segment": (garbage_segment, "corrupt or truncated"),
    "corrupt manifest": (corrupt_manifest, "corrupt manifest"),
    "empty manifest": (empty_manifest, "empty manifest"),
    "foreign manifest": (foreign_manifest, "not a tracekit capture"),
    "newer version": (newer_version, "newer than this tracekit reads"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_capture_is_one_line_exit_1(tmp_path, case):
    damage, message = CASES[case]
    path = make_capture(tmp_path / "c.tkcap")
    damage(path)
    for args in (["info", str(path)], ["export", str(path), "-f", "walk_element"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        err = result.stderr.strip()
        assert err.count("\n") == 0 and message in err, err
        assert "Traceback" not in result.output


def test_empty_directory_and_plain_file(tmp_path):
    (tmp_path / "empty.tkcap").mkdir()
    (tmp_path / "file.parquet").write_bytes(b"x")
    for path, message in ((tmp_path / "empty.tkcap", "empty directory"),
                          (tmp_path / "file.parquet", "not a tracekit capture"),
                          (tmp_path / "missing.tkcap", "no such capture")):
        result = runner.invoke(app, ["info", str(path)])
        assert result.exit_code == 1 and message in result.stderr, result.output


def test_schema_mismatch_between_segments(tmp_path):
    path = make_capture(tmp_path / "c.tkcap")
    import pyarrow.parquet as pq
    other = pa.table({"ts_ns": [3], "cpu": [0], "pid": [9], "tid": [9], "pte": pa.array([1], pa.int8())})
    pq.write_table(other, path / "walk_element" / "part-000002.parquet")
    with pytest.raises(CaptureFormatError, match="schema differs"):
        open_capture(path).table("walk_element")
