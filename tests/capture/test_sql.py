"""``tracekit sql``: a table, CSV, JSON Lines or Parquet; one line and an exit code for bad SQL, missing,
damaged or foreign captures; the readable rest still queried."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from tracekit.capture import CaptureWriter, open_capture
from tracekit.capture.columns import SCHEMAS
from tracekit.cli import app

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
runner = CliRunner()
LAB = str(SAMPLES / "lab-x86-tdp-1g.tkcap")
LIVE = str(SAMPLES / "x86-dirty-log-4k.tkcap")


def _sql(*args: str):
    return runner.invoke(app, ["sql", *args])


def _one_error_line(result, code: int, *needles: str) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("tracekit: error: "), result.output
    assert "Traceback" not in result.output and all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def test_table_on_the_terminal():
    result = _sql("SELECT scenario, kernel_release, vcpus FROM captures ORDER BY scenario", LAB, LIVE)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["scenario", "kernel_release", "vcpus"]
    assert lines[1].split() == ["dirty-log", "6.18.44-fc-v657", "1"]
    assert lines[2].split() == ["tdp-1g", "6.12.107+deb13-cloud-amd64", "1"]
    assert lines[-1] == "(2 rows)" and len(lines) == 4
    many = _sql("SELECT * FROM split", LAB, "--max-rows", "3")
    assert many.output.splitlines()[-1].startswith("(1,026 rows, the first 3 shown")
    assert runner.invoke(app, ["sql", "SELECT scenario FROM captures WHERE false", LAB]).output == "scenario\n(0 rows)\n"


def test_table_fits_the_terminal_width_and_keeps_every_column():
    """The one table renderer (tracekit.render): at COLUMNS=60 a wide result is shown in pieces that each
    repeat the first column, every line fits, no cell is cut; into a pipe it is one piece."""
    query = "SELECT probe, addr, size, level, duration_ns, ret, tid, cpu FROM split ORDER BY ts_ns LIMIT 4"
    wide = runner.invoke(app, ["sql", query, LAB], env={"COLUMNS": None, "NO_COLOR": None})
    narrow = runner.invoke(app, ["sql", query, LAB], env={"COLUMNS": "60", "NO_COLOR": None})
    assert wide.exit_code == narrow.exit_code == 0, narrow.output
    assert max(len(line) for line in wide.output.splitlines()) > 60
    assert max(len(line) for line in narrow.output.splitlines()) <= 60
    headers = [line.split() for line in narrow.output.splitlines() if line.startswith("probe ")]
    assert len(headers) > 1 and [name for piece in headers for name in piece[1:]] == query.split(" FROM")[0].replace(
        "SELECT probe, ", "").split(", ")
    cells = {cell for line in narrow.output.splitlines() for cell in line.split()}
    assert {cell for line in wide.output.splitlines() for cell in line.split()} <= cells


def test_csv_json_parquet(tmp_path):
    query = "SELECT capture, ts_ns, level, duration_ns FROM split ORDER BY ts_ns"
    expected = open_capture(LAB).table("split", ["ts_ns", "level", "duration_ns"]).sort_by("ts_ns")
    csv = _sql(query, LAB, "--format", "csv")
    assert csv.exit_code == 0 and csv.output.splitlines()[0] == "capture,ts_ns,level,duration_ns"
    assert len(csv.output.splitlines()) == 1 + expected.num_rows
    out = tmp_path / "r.json"
    done = _sql(query, LAB, "--format", "json", "-o", str(out))
    assert done.exit_code == 0 and f"wrote {expected.num_rows:,} rows" in done.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["ts_ns"] for r in rows] == expected.column("ts_ns").to_pylist()
    assert {r["capture"] for r in rows} == {open_capture(LAB).capture_id}
    parquet = tmp_path / "r.parquet"
    assert _sql(query, LAB, "-f", "parquet", "-o", str(parquet)).exit_code == 0
    table = pq.read_table(parquet)
    assert table.column("duration_ns").to_pylist() == expected.column("duration_ns").to_pylist()


def test_uint64_exact_in_every_output(tmp_path):
    big = (1 << 64) - 3
    path = tmp_path / "big.tkcap"
    with CaptureWriter(path) as writer:
        writer.declare("walk", SCHEMAS["walk"])
        writer.append("walk", pa.table({"ts_ns": [1], "cpu": [0], "pid": [1], "tid": [1],
                                        "walk_id": pa.array([big], pa.uint64()), "addr": pa.array([big], pa.uint64()),
                                        "pferr": pa.array([None], pa.uint32())}))
    assert _sql("SELECT addr FROM walk", str(path), "-f", "csv").output.splitlines()[1] == str(big)
    assert json.loads(_sql("SELECT addr FROM walk", str(path), "-f", "json").output)["addr"] == big
    assert str(big) in _sql("SELECT addr FROM walk", str(path)).output
    _sql("SELECT addr FROM walk", str(path), "-f", "parquet", "-o", str(tmp_path / "a.parquet"))
    assert pq.read_table(tmp_path / "a.parquet").column("addr").to_pylist() == [big]


def test_bad_sql_is_one_line():
    _one_error_line(_sql("SELEC 1", LAB), 2, "query refused", "syntax error")
    _one_error_line(_sql("SELECT nope FROM captures", LAB), 2, "query refused", '"nope"')
    _one_error_line(_sql("SELECT * FROM no_such_table", LAB), 2, "no_such_table")
    _one_error_line(_sql("   ;  ", LAB), 2, "empty query")
    _one_error_line(_sql("SELECT 1", LAB, "-f", "xml"), 2, "--format must be one of")
    _one_error_line(_sql("SELECT 1", LAB, "-f", "parquet"), 2, "needs -o FILE")


def test_missing_or_foreign_captures_alone_are_one_line(tmp_path):
    _one_error_line(_sql("SELECT 1", str(tmp_path / "none.tkcap")), 1, "none.tkcap: no such capture")
    _one_error_line(_sql("SELECT 1", str(tmp_path / "none-*.tkcap")), 1, "no capture matches")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "capture.json").write_text('{"format": "other"}')
    _one_error_line(_sql("SELECT 1", str(tmp_path / "foreign")), 1, "foreign", "not a tracekit capture")


def test_a_bad_capture_in_a_set_is_one_warning_and_the_rest_is_queried(tmp_path):
    shutil.copytree(LAB, tmp_path / "good.tkcap")
    bad = Path(shutil.copytree(LIVE, tmp_path / "bad.tkcap"))
    (bad / "capture.json").write_text('{"format": "tracekit-capture", "format_version": 1, "target": {"pids": "x"}}')
    newer = Path(shutil.copytree(SAMPLES / "lab-x86-tdp-lazy.tkcap", tmp_path / "newer.tkcap"))
    manifest = json.loads((newer / "capture.json").read_text())
    (newer / "capture.json").write_text(json.dumps({**manifest, "format_version": 99}))
    result = _sql("SELECT count(*) AS n FROM split", str(tmp_path))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("tracekit: warning: ")]
    assert len(warnings) == 2
    assert "bad.tkcap" in warnings[0] and "target.pids" in warnings[0] and warnings[0].endswith("; left out")
    assert "newer.tkcap" in warnings[1] and "version 99" in warnings[1]
    assert result.output.splitlines()[-2].strip() == "1026"
    strict = _sql("SELECT count(*) FROM split", str(tmp_path), "--strict")
    _one_error_line(strict, 1, "bad.tkcap")


def test_a_corrupt_page_is_left_out_with_verify_pages(tmp_path):
    path = tmp_path / "crc.tkcap"
    with CaptureWriter(path) as writer:
        writer.declare("walk", SCHEMAS["walk"])
        n = 50_000
        writer.append("walk", pa.table({"ts_ns": pa.array(range(n), pa.int64()), "cpu": [0] * n, "pid": [1] * n,
                                        "tid": [1] * n, "walk_id": pa.array(range(n), pa.uint64()),
                                        "addr": pa.array(range(0, n * 4096, 4096), pa.uint64()),
                                        "pferr": pa.array([4] * n, pa.uint32())}))
    segment = next((path / "walk").glob("part-*.parquet"))
    data = bytearray(segment.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    segment.write_bytes(bytes(data))
    shutil.copytree(LAB, tmp_path / "good.tkcap")
    result = _sql("SELECT count(*) FROM captures", str(tmp_path), "--verify-pages")
    assert result.exit_code == 0, result.output
    assert "crc.tkcap/walk/part-" in result.output and "checksum mismatch" in result.output
    assert result.output.splitlines()[-2].strip() == "1"


def test_every_sample_at_once():
    result = _sql("SELECT count(DISTINCT capture) AS captures, sum(lost_events) AS lost FROM captures", str(SAMPLES))
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    captures, lost = result.output.splitlines()[1].split()
    assert int(captures) == len(list(SAMPLES.rglob("capture.json"))) and lost == "0"


def test_hostile_names_and_arguments(tmp_path):
    import os

    shutil.copytree(LAB, tmp_path / "it's a capture.tkcap")  # a quote in the path: still read
    odd = os.path.join(os.fsencode(tmp_path), b"bad-\xff.tkcap")
    shutil.copytree(os.fsencode(LIVE), odd)
    result = _sql("SELECT c.name, count(*) AS n FROM split JOIN captures c USING (capture) GROUP BY ALL", str(tmp_path))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("tracekit: warning: ")]
    assert len(warnings) == 1 and "bad-\\xff.tkcap" in warnings[0] and "not UTF-8" in warnings[0]
    assert "it's a capture" in result.output and "1026" in result.output
    _one_error_line(_sql("SELECT '\udcff'", LAB), 2, "not valid UTF-8")
    _one_error_line(_sql("SELECT 1", LAB, "-f", "csv", "-o", str(tmp_path / "none" / "r.csv")), 1,
                    "query failed", "r.csv")
    _one_error_line(_sql("SELECT 1", LAB, "-f", "csv", "-o", str(tmp_path)), 1, "over a directory")
