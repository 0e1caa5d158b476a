"""Captures named by file system URLs: found, opened and summarised through pyarrow.fs as local paths are.

``file://`` runs end to end (DuckDB here, Spark in test_fleet_spark.py); a non-local file system is
pyarrow's in-memory mock standing in for S3 (``s3a://`` URLs resolved to it): manifests, segment lists,
footers and data read through it equal the local reads. An unsupported scheme or a file system out of
reach is one line, and the captures that can be read are still summarised.
"""

from __future__ import annotations

import shutil

import pyarrow.fs as pafs
import pytest
from typer.testing import CliRunner

from tests.fleet.golden import SAMPLES, comparable, load
from tracekit.capture import remote
from tracekit.cli import app
from tracekit.dataset import Dataset, capture_facts, segments_table
from tracekit.errors import CaptureFormatError, UsageError
from tracekit.fleet.summary import fleet_summary

runner = CliRunner()
UNREACHABLE_S3 = "s3://tracekit/fleet?region=us-east-1&endpoint_override=127.0.0.1:1&scheme=http"  # nothing listens


def test_a_file_url_summary_equals_the_golden():
    summary = fleet_summary([f"file://{SAMPLES}"], by="kernel")
    assert all(row["path"].startswith("file://") for row in summary.captures)
    assert comparable(summary) == load()


@pytest.fixture(scope="module")
def mock_s3(tmp_path_factory):
    """Two samples copied into an in-memory file system that ``s3a://bucket/...`` URLs resolve to."""
    fs = pafs._MockFileSystem()
    names = ["x86-dirty-log-2m.tkcap", "lab-arm64-contention.tkcap"]
    for name in names:
        pafs.copy_files(str(SAMPLES / name), f"bucket/fleet/{name}", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
    asked = []

    def from_uri(uri):
        if not uri.startswith("s3://bucket/"):
            return pafs.FileSystem.from_uri(uri)
        asked.append(uri)
        return fs, uri[len("s3://"):].split("?", 1)[0]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(remote, "_from_uri", from_uri)
        yield names, asked


def test_captures_at_a_url_read_as_their_local_copies(mock_s3):
    names, asked = mock_s3
    url = Dataset.open(["s3a://bucket/fleet/"])
    local = Dataset.open([SAMPLES / name for name in sorted(names)])
    assert asked == ["s3://bucket/fleet/"]  # s3a (Spark's name) read as s3; one file system for all below it
    assert [str(c.path) for c in url.captures] == [f"s3a://bucket/fleet/{name}" for name in sorted(names)]
    assert capture_facts(url, phases=False).drop(["path"]).equals(capture_facts(local, phases=False).drop(["path"]))
    files = segments_table(url).column("file").to_pylist()
    assert len(files) == segments_table(local).num_rows and all(f.startswith("s3a://bucket/fleet/") for f in files)
    for at_url, here in zip(url.captures, local.captures):  # data read through the file system too
        assert at_url.families() == here.families() and at_url.threads() == here.threads()
        assert all(at_url.table(family).equals(here.table(family)) for family in here.families())


def test_duckdb_refuses_a_url_it_cannot_read_in_one_line(mock_s3):
    with pytest.raises(UsageError, match=r"^s3a://bucket/fleet/.*: DuckDB reads local captures and file:// URLs; "
                                         r"use --engine spark for s3a:// captures$"):
        fleet_summary(["s3a://bucket/fleet"])


def test_a_damaged_capture_at_a_url_is_one_line(tmp_path):
    shutil.copytree(SAMPLES / "x86-dirty-log-2m.tkcap", tmp_path / "bad.tkcap")
    (tmp_path / "bad.tkcap" / "ioctl" / "part-000001.parquet").write_bytes(b"PAR1")
    with pytest.raises(CaptureFormatError, match=r"^file://.*/bad.tkcap/ioctl/part-000001.parquet: corrupt or "
                                                 r"truncated Parquet file \("):
        remote.open_url_capture(f"file://{tmp_path}/bad.tkcap")
    with pytest.raises(CaptureFormatError, match=r"^file://.*/nothing.tkcap: no such capture$"):
        remote.open_url_capture(f"file://{tmp_path}/nothing.tkcap")


@pytest.mark.parametrize("url, words", [
    ("ftp://host/fleet", "ftp://host/fleet: unsupported URL scheme 'ftp' (tracekit reads file://, hdfs://"),
    (UNREACHABLE_S3, "s3://tracekit/fleet: cannot read (When getting information for key"),
], ids=["unsupported", "unreachable"])
def test_an_unreadable_url_is_one_line_and_the_rest_is_summarised(url, words):
    result = runner.invoke(app, ["fleet", "summary", url, str(SAMPLES / "x86-dirty-log-2m.tkcap"), "--format", "json"])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracekit: warning: left out: ") and words in lines[0], lines
    assert '"captures"' in result.stdout
    if url.startswith("ftp"):  # the unreachable one takes the S3 client's retries, 6 s
        alone = runner.invoke(app, ["fleet", "summary", url])
        assert alone.exit_code == 1 and alone.stderr.count("\n") == 1 and words in alone.stderr, alone.stderr


@pytest.fixture(scope="module")
def s3_server():
    """A local S3 (moto's server on 127.0.0.1, a free port) holding two small samples under ``s3://fleet/runs/``;
    yields the query that points pyarrow's S3 client at it."""
    server_module = pytest.importorskip("moto.server", reason="moto is not installed (pip install -e '.[test]')")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"AWS_ACCESS_KEY_ID": "tracekit", "AWS_SECRET_ACCESS_KEY": "tracekit",
                           "AWS_DEFAULT_REGION": "us-east-1"}.items():
            patch.setenv(key, value)
        server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            query = f"?region=us-east-1&scheme=http&endpoint_override={host}:{port}"
            fs, _ = pafs.FileSystem.from_uri(f"s3://fleet{query}&allow_bucket_creation=true")
            fs.create_dir("fleet")
            for name in ("lab-arm64-eager-enable.tkcap", "lab-x86-tdp-1g.tkcap"):  # small ones: each file a request
                pafs.copy_files(str(SAMPLES / name), f"fleet/runs/{name}", source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=fs)
            yield query
        finally:
            server.stop()


def test_s3a_urls_read_through_pyarrows_s3_client(s3_server):
    """Manifests, segment lists and footers read from a real S3 endpoint (local), the URL in s3a form."""
    url = Dataset.open([f"s3a://fleet/runs{s3_server}"])
    local = Dataset.open([SAMPLES / "lab-arm64-eager-enable.tkcap", SAMPLES / "lab-x86-tdp-1g.tkcap"])
    assert [str(c.path) for c in url.captures] == ["s3a://fleet/runs/lab-arm64-eager-enable.tkcap",
                                                   "s3a://fleet/runs/lab-x86-tdp-1g.tkcap"]
    assert capture_facts(url, phases=False).drop(["path"]).equals(capture_facts(local, phases=False).drop(["path"]))
    assert segments_table(url).column("rows").equals(segments_table(local).column("rows"))
    with pytest.raises(CaptureFormatError, match=r"^s3a://fleet/none.tkcap: no such capture$"):
        remote.open_url_capture(f"s3a://fleet/none.tkcap{s3_server}")


def test_captures_at_a_url_are_read_by_the_local_reader_s_one_routine(tmp_path):
    """The families a summary does not read have only their segments' tails checked at a URL too (the
    same read_family as a local capture's): a truncated one is one line, and with footers=False the
    families it reads have their schemas only."""
    from tracekit.fleet.query import INPUT_COLUMNS
    from tracekit.fleet.summary import SUMMARY_FAMILIES

    cap = shutil.copytree(SAMPLES / "lab-arm64-eager-clear.tkcap", tmp_path / "cut.tkcap")
    segment = sorted((cap / "func_call").glob("part-*.parquet"))[0]
    url = f"file://{cap}"
    opened = remote.open_url_capture(url, SUMMARY_FAMILIES)
    assert opened.rows("func_call") is None and opened.rows("split") == 1024
    listed = remote.open_url_capture(url, INPUT_COLUMNS, footers=False)
    assert listed.schema("split") == opened.schema("split") and listed.rows("split") is None
    segment.write_bytes(segment.read_bytes()[:-3])
    for families, footers in ((SUMMARY_FAMILIES, True), (INPUT_COLUMNS, False)):
        with pytest.raises(CaptureFormatError, match=rf"^{url}/func_call/{segment.name}: corrupt or truncated Parquet "
                                                     r"file \(no footer at its end\)$"):
            remote.open_url_capture(url, families, footers=footers)
