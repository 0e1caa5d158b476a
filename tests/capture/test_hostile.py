"""Hostile captures: badly typed manifests, bombs, non-UTF-8 names, symlinks out, foreign segments, flipped
bits. Each is refused with one line naming the field or file (exit 1), or read correctly; never a traceback."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tracekit.capture import COMMON_FIELDS, CaptureWriter, open_capture
from tracekit.capture.manifest import MAX_MANIFEST_BYTES, manifest_violations
from tracekit.cli import app
from tracekit.errors import CaptureFormatError, one_line

from tests.capture.pagecrc import bundled_captures, pages, segments_without_crc

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
SAMPLES_DIR = ROOT / "samples"
SAMPLES = sorted(SAMPLES_DIR.glob("*.tkcap"))
WALK = pa.schema(COMMON_FIELDS + [pa.field("addr", pa.uint64())])
IOCTL = pa.schema(COMMON_FIELDS + [pa.field("cmd", pa.uint32())])


def make_capture(path: Path, rows: int = 1000) -> Path:
    with CaptureWriter(path, manifest={"target": {"pids": [9], "comm": "vmm", "threads": [
            {"tid": 9, "comm": "vmm", "vcpu": None}, {"tid": 10, "comm": "CPU 0/KVM", "vcpu": 0}]}}) as w:
        w.declare("walk", WALK)
        w.declare("ioctl", IOCTL)
        w.append("walk", pa.table({"ts_ns": np.arange(rows), "cpu": np.zeros(rows, np.int32),
                                   "pid": np.full(rows, 9, np.int32), "tid": np.full(rows, 10, np.int32),
                                   "addr": np.arange(rows, dtype=np.uint64) * 4096}))
        w.append("ioctl", pa.table({"ts_ns": [5], "cpu": [0], "pid": [9], "tid": [9], "cmd": pa.array([7], pa.uint32())}))
    return path


def edit_manifest(path: Path, change) -> None:
    manifest = json.loads((path / "capture.json").read_text())
    change(manifest)
    (path / "capture.json").write_text(json.dumps(manifest))


def refused(path: Path, *words: str, command: tuple[str, ...] = ("info",)) -> str:
    """Run ``command`` on ``path``; assert one error line, exit 1, containing ``words``; return the line."""
    result = runner.invoke(app, [command[0], str(path), *command[1:]])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    line = result.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("tracekit: error: "), line
    for word in words:
        assert word in line, line
    return line


# -- 1. manifest fields ------------------------------------------------------------------------------

def _set_thread_tid(value):
    return lambda m: m["target"]["threads"][1].__setitem__("tid", value)


BAD_FIELDS = {
    "lost string": (lambda m: m.__setitem__("lost", "abc"), "lost: expected an array, got 'abc'"),
    "lost count": (lambda m: m.__setitem__("lost", [{"probe": "p", "cpu": 0, "count": "7"}]), "lost[0].count"),
    "target list": (lambda m: m.__setitem__("target", [1]), "target: expected an object, got list"),
    "phases int": (lambda m: m.__setitem__("workload", {"phases": 4096}), "workload.phases: expected an array"),
    "tid huge": (_set_thread_tid(10**30), "target.threads[1].tid: expected an integer"),
    "tid NaN": (_set_thread_tid(float("nan")), "target.threads[1].tid"),
    "tid +inf": (_set_thread_tid(float("inf")), "target.threads[1].tid"),
    "vcpu -inf": (lambda m: m["target"]["threads"][1].__setitem__("vcpu", float("-inf")), "threads[1].vcpu"),
    "thread str": (lambda m: m["target"].__setitem__("threads", ["x"]), "target.threads[0]: expected an object"),
    "source list": (lambda m: m.__setitem__("source", [1]), "source: expected an object"),
    "vcpus str": (lambda m: m.__setitem__("workload", {"vcpus": [{"index": "0", "tid": 1}]}), "workload.vcpus[0].index"),
    "duration NaN": (lambda m: m.__setitem__("duration_s", float("nan")), "duration_s: expected a finite number"),
    "version bool": (lambda m: m.__setitem__("format_version", True), "format_version"),
    "comm surrogate": (lambda m: m["target"].__setitem__("comm", "\udcff"), "target.comm: expected a string"),
    "partial list": (lambda m: m.__setitem__("partial", [1]), "partial: expected an object, got list"),
    "window seconds": (lambda m: m.__setitem__("window", {"seconds": "3"}), "window.seconds: expected a finite"),
    "command output": (lambda m: m.__setitem__("command_output", {"stdout": 1}), "command_output.stdout"),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_badly_typed_manifest_field_is_one_line_naming_it(tmp_path, case):
    change, words = BAD_FIELDS[case]
    path = make_capture(tmp_path / "c.tkcap", rows=10)
    edit_manifest(path, change)
    refused(path, "capture.json: invalid manifest field", words)


def test_every_violation_is_listed_in_the_detail(tmp_path):
    path = make_capture(tmp_path / "c.tkcap", rows=10)
    edit_manifest(path, lambda m: m.update(lost="abc", source=3, page_size=-1))
    with pytest.raises(CaptureFormatError, match=r"and 2 more") as error:
        open_capture(path)
    assert sorted(line.split(":")[0] for line in error.value.detail.splitlines()) == ["lost", "page_size", "source"]
    result = runner.invoke(app, ["-v", "info", str(path)])
    assert result.exit_code == 1 and "source: expected an object, got 3" in result.stderr


def test_unknown_fields_are_kept_and_declared_ones_accept_null_only_where_declared(tmp_path):
    path = make_capture(tmp_path / "c.tkcap", rows=10)
    edit_manifest(path, lambda m: m.update(partial_window={"start_ns": 1}, new_key=[float("nan")], stop=None))
    cap = open_capture(path)
    assert cap.manifest["partial_window"] == {"start_ns": 1} and cap.rows("walk") == 10
    assert manifest_violations({"format": "tracekit-capture", "format_version": 1, "host": None}) == [
        "host: expected a string, got None"]
    assert manifest_violations({"format_version": 1}) == ["format: missing"]


def test_window_without_its_instants_is_reported_as_not_recorded():
    from tracekit.analysis.partial import partial_text

    assert "not recorded" in partial_text({"window": {"clock": "CLOCK_MONOTONIC", "seconds": 1.0}})[0]


def test_recorded_manifests_satisfy_the_schema():
    for sample in SAMPLES:
        assert manifest_violations(json.loads((sample / "capture.json").read_text())) == [], sample.name


# -- 2. bombs --------------------------------------------------------------------------------------

def test_deeply_nested_manifest_is_refused(tmp_path):
    path = make_capture(tmp_path / "c.tkcap", rows=10)
    (path / "capture.json").write_text("[" * 100_000)
    refused(path, "nested deeper than")
    edit_path = make_capture(tmp_path / "d.tkcap", rows=10)
    edit_manifest(edit_path, lambda m: m.__setitem__("extra", json.loads("[" * 200 + "]" * 200)))
    refused(edit_path, "nested deeper than")


def test_huge_manifest_is_refused_without_reading_it(tmp_path):
    path = make_capture(tmp_path / "c.tkcap", rows=10)
    with open(path / "capture.json", "r+b") as f:  # sparse: 1 GiB that occupies no disk
        f.truncate(1 << 30)
    refused(path, "larger than 16 MiB")
    trailing = make_capture(tmp_path / "t.tkcap", rows=10)
    with open(trailing / "capture.json", "ab") as f:
        f.write(b" " * MAX_MANIFEST_BYTES)
    refused(trailing, "larger than")


def test_manifest_that_is_not_utf8_or_a_file(tmp_path):
    path = make_capture(tmp_path / "c.tkcap", rows=10)
    (path / "capture.json").write_bytes((path / "capture.json").read_bytes().replace(b'"vmm"', b'"v\xffm"', 1))
    refused(path, "not UTF-8")
    (path / "capture.json").unlink()
    (path / "capture.json").mkdir()
    refused(path, "not a regular file")
    (path / "capture.json").rmdir()
    os.mkfifo(path / "capture.json")  # would block a reader that opened it plainly
    refused(path, "not a regular file")


# -- 3. non-UTF-8 names ------------------------------------------------------------------------------

def test_non_utf8_names_are_ignored_and_printed_escaped(tmp_path):
    path = make_capture(tmp_path / "c.tkcap", rows=10)
    raw = os.fsencode(path)
    shutil.copy(path / "walk" / "part-000001.parquet", os.fsdecode(raw + b"/walk/part-\xff\xfe.parquet"))
    os.mkdir(raw + b"/w\xffalk")
    shutil.copy(path / "walk" / "_schema.parquet", os.fsdecode(raw + b"/w\xffalk/_schema.parquet"))
    result = runner.invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["families"]) == {"walk", "ioctl"}
    export = runner.invoke(app, ["export", str(path), "-f", "walk", "--format", "jsonl"])
    assert export.exit_code == 0 and len(export.stdout.splitlines()) == 10
    odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/odd\xff.tkcap"))
    shutil.copytree(path, odd)
    (odd / "capture.json").write_text("{")
    assert "odd\\xff.tkcap" in refused(odd, "corrupt manifest")


# -- 4. nothing read outside the capture ---------------------------------------------------------------

@pytest.fixture
def outside(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "secret").write_text("root:$6$hash:19000:0:99999:7:::\n")
    return make_capture(tmp_path / "out" / "valid.tkcap", rows=10)


@pytest.mark.parametrize("where", ["capture.json", "walk/_schema.parquet", "walk/part-000002.parquet", "walk"])
@pytest.mark.parametrize("to", ["secret", "valid"])
def test_symlink_out_of_the_capture_is_refused(tmp_path, outside, where, to):
    path = make_capture(tmp_path / "c.tkcap", rows=10)
    target = outside.parent / "secret" if to == "secret" else outside / where.replace("000002", "000001")
    link = path / where
    if link.is_dir():
        shutil.rmtree(link)
    else:
        link.unlink(missing_ok=True)
    link.symlink_to(target)
    line = refused(path, "a symbolic link", where.split("/")[-1])
    assert "root:" not in line


def test_symlinked_capture_directory_given_by_the_user_is_followed(tmp_path):
    path = make_capture(tmp_path / "c.tkcap", rows=10)
    (tmp_path / "link.tkcap").symlink_to(path)
    assert open_capture(tmp_path / "link.tkcap").rows("walk") == 10


# -- 5. every segment checked against its family at open -------------------------------------------------

def test_segment_of_another_family_is_refused_by_info(tmp_path):
    path = make_capture(tmp_path / "c.tkcap", rows=10)
    shutil.copy(path / "ioctl" / "part-000001.parquet", path / "walk" / "part-000002.parquet")
    refused(path, "walk/part-000002.parquet", "a segment of family 'ioctl', not 'walk'")
    perfetto = runner.invoke(app, ["export", str(path), "--perfetto", str(tmp_path / "t.json")])
    assert perfetto.exit_code == 1 and "not 'walk'" in perfetto.stderr


def test_foreign_columns_are_refused_by_info(tmp_path):
    path = make_capture(tmp_path / "c.tkcap", rows=10)
    pq.write_table(pa.table({"a": pa.array([], pa.int64())}), path / "walk" / "part-000002.parquet")
    refused(path, "walk/part-000002.parquet: schema differs from family 'walk'")
    (path / "walk" / "part-000002.parquet").unlink()
    shutil.copy(path / "ioctl" / "_schema.parquet", path / "walk" / "_schema.parquet")
    refused(path, "walk/part-000001.parquet")
    shutil.rmtree(path / "walk")
    (path / "walk").mkdir()
    pq.write_table(pa.table({"a": pa.array([], pa.int64())}), path / "walk" / "part-000001.parquet")
    refused(path, "family 'walk': schema must start with ts_ns:int64")


# -- 6. one line -----------------------------------------------------------------------------------------

def test_pyarrow_messages_become_one_line(tmp_path):
    path = make_capture(tmp_path / "c.tkcap", rows=2000)
    segment = path / "walk" / "part-000001.parquet"
    footer = pq.ParquetFile(segment).metadata
    data = bytearray(segment.read_bytes())
    start = footer.row_group(0).column(0).data_page_offset  # a page header: Thrift's multi-line text
    data[start:start + 16] = b"\xff" * 16
    segment.write_bytes(bytes(data))
    with pytest.raises(OSError) as raw:
        pq.read_table(segment)
    assert "\n" in str(raw.value)  # what pyarrow says spans lines
    refused(path, "walk/part-000001.parquet: corrupt", command=("export", "-f", "walk"))
    assert one_line("a\n  b\n\nc\udcff") == "a / b / c\\udcff"


# -- 7. page checksums -------------------------------------------------------------------------------------

def test_flipped_bit_is_caught_by_the_page_checksum(tmp_path):
    path = make_capture(tmp_path / "c.tkcap", rows=50_000)
    segment = path / "walk" / "part-000001.parquet"
    written = pq.read_table(segment)
    column = pq.ParquetFile(segment).metadata.row_group(0).column(4)  # addr
    data = bytearray(segment.read_bytes())
    data[column.data_page_offset + column.total_compressed_size // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    assert not pq.read_table(segment).equals(written)  # unverified, the flip passes silently
    with pytest.raises(CaptureFormatError, match=r"walk/part-000001.parquet: page checksum mismatch"):
        open_capture(path).table("walk")
    result = runner.invoke(app, ["export", str(path), "-f", "walk"])
    assert result.exit_code == 1 and "page checksum mismatch" in result.stderr


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_segment_failing_while_exported_is_the_readers_line_not_duckdbs(tmp_path, fmt):
    """Export streams the batches through DuckDB, which passed the reader's error on as its own text with
    the Python traceback in it (found by a fuzz pass: a flipped byte in a sample's ioctl segment)."""
    path = make_capture(tmp_path / "c.tkcap", rows=50_000)
    segment = path / "walk" / "part-000001.parquet"
    column = pq.ParquetFile(segment).metadata.row_group(0).column(4)  # addr
    data = bytearray(segment.read_bytes())
    data[column.data_page_offset + column.total_compressed_size // 2] ^= 0x01
    segment.write_bytes(bytes(data))
    line = refused(path, command=("export", "-f", "walk", "--format", fmt, "-o", str(tmp_path / "out")))
    assert line.startswith(f"tracekit: error: {segment}: page checksum mismatch") and "Traceback" not in line, line


def test_old_segments_without_checksums_still_read(tmp_path):
    path = make_capture(tmp_path / "c.tkcap", rows=10)
    segment = path / "walk" / "part-000001.parquet"
    pq.write_table(pq.read_table(segment), segment, compression="zstd")  # as the writer did before checksums
    assert open_capture(path).table("walk").column("addr").to_pylist() == [i * 4096 for i in range(10)]


@pytest.mark.parametrize("capture", bundled_captures(), ids=lambda p: str(p.relative_to(SAMPLES_DIR)))
def test_every_bundled_sample_segment_has_page_checksums(capture):
    assert segments_without_crc(capture) == []


@pytest.mark.parametrize("sample, family, column", [("x86-dirty-log-2m", "walk", "ts_ns"),
                                                    ("x86-dirty-log-4k", "walk_element", "walk_id"),
                                                    ("lab-arm64-eager-clear", "stage2_walk", "ts_ns")])
def test_a_flipped_bit_in_a_bundled_sample_is_one_line_naming_the_segment(tmp_path, sample, family, column):
    """Unchecked, such a flip gave wrong times or walk ids with exit 0 (before the samples were rewritten)."""
    path = Path(shutil.copytree(SAMPLES_DIR / f"{sample}.tkcap", tmp_path / f"{sample}.tkcap"))
    segment = path / family / "part-000001.parquet"
    offset, size = next((at, size) for name, at, size, _ in pages(segment) if name == column and size > 16)
    data = bytearray(segment.read_bytes())
    data[offset + size // 2] ^= 0x10
    segment.write_bytes(bytes(data))
    line = refused(path, command=("analyze",))
    assert line == f"tracekit: error: {segment}: page checksum mismatch (the file is corrupt)", line


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_every_sample_reads_in_full(sample):
    cap = open_capture(sample)
    for family in cap.families():
        assert sum(t.num_rows for t in cap.iter_tables(family)) == cap.rows(family)


# -- hostile values in well-formed segments ---------------------------------------------------------------

def test_perfetto_counters_follow_the_events_not_the_time_they_span(tmp_path):
    path = tmp_path / "c.tkcap"
    with CaptureWriter(path) as w:
        w.declare("walk", WALK)
        w.append("walk", pa.table({"ts_ns": [0, 1, 2**62], "cpu": [0] * 3, "pid": [9] * 3, "tid": [9] * 3,
                                   "addr": pa.array([0] * 3, pa.uint64())}))
    result = runner.invoke(app, ["export", str(path), "--perfetto", str(tmp_path / "t.json"), "--format", "json"])
    assert result.exit_code == 0, result.output
    counters = [e for e in json.loads((tmp_path / "t.json").read_text())["traceEvents"] if e["ph"] == "C"]
    assert [e["args"]["rate"] for e in counters] == [200, 0, 100, 0]  # two busy 10 ms bins, 2^62 ns apart


def test_nulls_in_lock_and_walk_element_columns_are_one_line_or_skipped(tmp_path):
    from tests.synthetic import SCHEMAS

    path = tmp_path / "c.tkcap"
    common = {"ts_ns": [1, 2], "cpu": [0, 0], "pid": [9, 9], "tid": [9, 9]}
    with CaptureWriter(path) as w:
        for family in ("walk", "walk_element", "lock"):
            w.declare(family, SCHEMAS[family])
        w.append("walk", pa.table({**common, "walk_id": [0, 1], "addr": [0, 4096], "pferr": [0, 0]}))
        w.append("walk_element", pa.table({**common, "walk_id": [None, 1], "index": [0, 0], "level": [4, 4],
                                           "pte": [1, 1]}))
        w.append("lock", pa.table({**common, "lock_addr": [None, 64], "flags": [5, 5], "wait_ns": [None, 10],
                                   "ret": [0, 0], "stack_id": [-1, -1]}))
    # the walks' elements are damaged: export refuses as analyze does, in one line
    refused(path, "walk_element column(s) walk_id hold nulls", command=("export", "--perfetto", str(tmp_path / "t")))
    locks_only = tmp_path / "l.tkcap"
    with CaptureWriter(locks_only) as w:
        w.declare("lock", SCHEMAS["lock"])
        w.append("lock", pa.table({**common, "lock_addr": [None, 64], "flags": [5, 5], "wait_ns": [None, 10],
                                   "ret": [0, 0], "stack_id": [-1, -1]}))
    perfetto = runner.invoke(app, ["export", str(locks_only), "--perfetto", str(tmp_path / "t.json"), "--format", "json"])
    assert perfetto.exit_code == 0, perfetto.output
    names = {e["name"] for e in json.loads((tmp_path / "t.json").read_text())["traceEvents"] if e.get("cat") == "lock"}
    assert names == {"?", "0x40"}  # named as analyze's tables name them
    refused(path, "walk_element column(s) walk_id hold nulls", command=("analyze",))
