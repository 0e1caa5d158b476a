"""Writer behaviour: segment rotation, crash safety, refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pytest

from tracekit.capture import COMMON_FIELDS, CaptureWriter, open_capture
from tracekit.errors import CaptureFormatError

SCHEMA = pa.schema(COMMON_FIELDS + [pa.field("addr", pa.uint64()), pa.field("kind", pa.dictionary(pa.int32(), pa.string()))])


def rows(n: int, start: int = 0) -> pa.Table:
    return pa.table({
        "ts_ns": list(range(start, start + n)), "cpu": [0] * n, "pid": [1] * n, "tid": [1] * n,
        "addr": pa.array(range(start, start + n), pa.uint64()), "kind": ["LEAF"] * n,
    })


def test_tick_closes_old_segments(tmp_path):
    with CaptureWriter(tmp_path / "c.tkcap", segment_seconds=0.05) as w:
        w.declare("walk", SCHEMA)
        w.append("walk", rows(3))
        w.tick()  # too young: stays open
        assert not list((tmp_path / "c.tkcap" / "walk").glob("part-*.parquet"))
        time.sleep(0.06)
        w.tick()
        assert len(list((tmp_path / "c.tkcap" / "walk").glob("part-*.parquet"))) == 1
        w.append("walk", rows(2, 3))
    cap = open_capture(tmp_path / "c.tkcap")
    assert cap.rows("walk") == 5 and len(cap.segments("walk")) == 2
    assert cap.manifest["families"]["walk"] == {"rows": 5, "segments": 2}


def test_segment_rows_limit(tmp_path):
    with CaptureWriter(tmp_path / "c.tkcap", segment_rows=4) as w:
        w.declare("walk", SCHEMA)
        for i in range(3):
            w.append("walk", rows(3, 3 * i))
    cap = open_capture(tmp_path / "c.tkcap")
    assert [p.name for p in cap.segments("walk")] == ["part-000001.parquet", "part-000002.parquet"]
    assert cap.table("walk").column("ts_ns").to_pylist() == list(range(9))


def test_exception_marks_capture_aborted(tmp_path):
    with pytest.raises(RuntimeError):
        with CaptureWriter(tmp_path / "c.tkcap") as w:
            w.declare("walk", SCHEMA)
            w.append("walk", rows(2))
            raise RuntimeError("probe vanished")
    cap = open_capture(tmp_path / "c.tkcap")
    assert cap.manifest["status"] == "aborted"
    assert "probe vanished" in cap.manifest["status_reason"]
    assert cap.rows("walk") == 2


def test_sigkill_leaves_finished_segments_readable(tmp_path):
    """A writer killed with SIGKILL mid-run loses at most its open segment."""
    path = tmp_path / "k.tkcap"
    script = textwrap.dedent(f"""
        import sys, time, pyarrow as pa
        sys.path.insert(0, {os.getcwd()!r})
        from tests.capture.test_writer import SCHEMA, rows
        from tracekit.capture import CaptureWriter
        w = CaptureWriter({str(path)!r}, segment_seconds=0.01)
        w.declare("walk", SCHEMA)
        w.add_lost("walk", 0, 7)
        i = 0
        while True:
            w.append("walk", rows(10, i)); i += 10
            w.tick()
            if i == 50:
                print("ready", flush=True)
            time.sleep(0.002)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cap = open_capture(path)
    assert cap.manifest["status"] == "incomplete"
    assert not cap.complete
    n = cap.rows("walk")
    assert n >= 40 and n % 10 == 0
    assert cap.table("walk").column("ts_ns").to_pylist() == list(range(n))
    assert cap.lost_total() == 7


@pytest.mark.parametrize("name", ["Walk", "../x", "", "a b", "_schema"])
def test_bad_family_names_refused(tmp_path, name):
    with CaptureWriter(tmp_path / "c.tkcap") as w:
        with pytest.raises(CaptureFormatError):
            w.declare(name, SCHEMA)


def test_schema_must_start_with_common_columns(tmp_path):
    with CaptureWriter(tmp_path / "c.tkcap") as w:
        with pytest.raises(CaptureFormatError, match="must start with"):
            w.declare("walk", pa.schema([pa.field("addr", pa.uint64())]))


def test_refuses_non_empty_output_and_symlinks(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(CaptureFormatError, match="not empty"):
        CaptureWriter(tmp_path / "full")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CaptureFormatError, match="symlink"):
        CaptureWriter(tmp_path / "link")


def test_append_casts_and_requires_columns(tmp_path):
    with CaptureWriter(tmp_path / "c.tkcap") as w:
        w.declare("walk", SCHEMA)
        with pytest.raises(CaptureFormatError, match="lacks column"):
            w.append("walk", pa.table({"ts_ns": [1]}))
        with pytest.raises(CaptureFormatError, match="not declared"):
            w.append("other", rows(1))
