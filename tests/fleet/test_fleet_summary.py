"""tracekit fleet summary on DuckDB: the samples' figures against the analyses' own numpy code, the
golden file the Spark test shares, grouping, outputs, and a mixed set with unreadable captures."""

from __future__ import annotations

import json
import shutil

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.fleet.golden import SAMPLES, comparable, load
from tracekit.analysis.analyze import analyze_capture
from tracekit.analysis.common import latency_summary
from tracekit.capture import open_capture
from tracekit.cli import app
from tracekit.dataset import Dataset
from tracekit.fleet.engines import duckdb_engine
from tracekit.fleet.query import FIGURES
from tracekit.fleet.summary import CAPTURE_COLUMNS, fleet_summary

X86 = SAMPLES / "x86-dirty-log-2m.tkcap"
ARM = SAMPLES / "lab-arm64-contention.tkcap"


@pytest.fixture(scope="module")
def by_kernel():
    return fleet_summary([str(SAMPLES)], by="kernel")


def _row(summary, path):
    return next(r for r in summary.captures if r["path"] == str(path))


def _latency(frame, column="duration_ns"):
    return latency_summary(frame, [], value=column).iloc[0].to_dict()


def test_golden_samples_by_kernel(by_kernel):
    assert comparable(by_kernel) == load()
    assert sum(g["captures"] for g in by_kernel.groups) == len(by_kernel.captures) == 75


def test_per_capture_tables_built_in_batches_give_the_golden():
    """DuckDB builds the per-capture tables a batch of captures at a time: 7 a batch (11 batches, the
    last short, groups spanning batches) gives the same figures as one batch."""
    assert comparable(fleet_summary([str(SAMPLES)], by="kernel", batch_captures=7)) == load()


def test_x86_figures_match_the_analyses(by_kernel):
    row = _row(by_kernel, X86)
    cap = open_capture(X86)
    ioctl = cap.dataframe("ioctl")
    timed = ioctl[ioctl["duration_ns"].notna()]
    expected = _latency(timed)
    assert (row["ioctl_count"], row["ioctl_p50_ns"], row["ioctl_p90_ns"], row["ioctl_p99_ns"], row["ioctl_max_ns"]) == (
        expected["count"], expected["p50_ns"], expected["p90_ns"], expected["p99_ns"], expected["max_ns"])
    clear = _latency(timed[timed["cmd_name"] == "KVM_CLEAR_DIRTY_LOG"])
    assert (row["clear_count"], row["clear_p99_ns"], row["clear_total_ns"]) == (clear["count"], clear["p99_ns"],
                                                                                 clear["total_ns"])
    analysis = analyze_capture(cap)
    per_op = analysis.tables["split_ioctls"]
    assert row["dirty_log_ops"] == len(per_op) == 4
    assert row["ops_splits"] == int(per_op["splits"].sum())
    depth = analysis.tables["walk_depth"].groupby("depth")["walks"].sum()
    assert row["walks"] == int(depth.sum()) == 49217
    assert {d: row[f"walks_depth_{d}"] for d in (3, 4)} == {3: int(depth[3]), 4: int(depth[4])}
    lock = _latency(cap.dataframe("lock"), "wait_ns")
    assert (row["lock_wait_count"], row["lock_wait_p99_ns"], row["lock_wait_max_ns"]) == (
        lock["count"], lock["p99_ns"], lock["max_ns"])
    assert row["lost_events"] == cap.lost_total() == 0 and row["clean_captures"] == 1


def test_arm64_figures_match_the_capture(by_kernel):
    row = _row(by_kernel, ARM)
    cap = open_capture(ARM)
    split = cap.dataframe("split")
    timed = _latency(split[split["duration_ns"] >= 0])
    assert (row["splits"], row["split_count"], row["split_p50_ns"], row["split_p99_ns"]) == (
        len(split), timed["count"], timed["p50_ns"], timed["p99_ns"])
    visit = cap.dataframe("stage2_visit")
    per_level = visit.groupby("level")["count"].sum()
    assert row["stage2_visits"] == int(per_level.sum())
    assert [row[f"stage2_visits_l{lv}"] for lv in range(4)] == [
        int(per_level[lv]) if lv in per_level else None for lv in range(4)]
    assert row["stage2_walks"] == cap.rows("stage2_walk")
    assert row["ioctl_count"] == 0 and row["ioctl_p99_ns"] is None and row["splits_per_op"] is None


def test_groups_pool_their_captures(by_kernel):
    for group in by_kernel.groups:
        members = [r for r in by_kernel.captures if r["group"] == group["group"]]
        assert group["captures"] == len(members)
        for figure in ("splits", "walks", "lock_wait_count", "ioctl_count", "stage2_walks", "dirty_log_ops"):
            assert group[figure] == sum(r[figure] for r in members), figure
        maxima = [r["lock_wait_max_ns"] for r in members if r["lock_wait_max_ns"] is not None]
        assert group["lock_wait_max_ns"] == (max(maxima) if maxima else None)
    pooled = next(g for g in by_kernel.groups if g["group"] == "6.12.117+deb13-cloud-arm64")
    waits = np.sort(np.concatenate([open_capture(r["path"]).dataframe("lock")["wait_ns"].to_numpy()
                                    for r in by_kernel.captures if r["group"] == pooled["group"]
                                    and open_capture(r["path"]).rows("lock")]))
    assert pooled["lock_wait_p99_ns"] == waits[int(np.ceil(0.99 * len(waits))) - 1]


def test_grouping_keys():
    summary = fleet_summary([str(SAMPLES / "x86-dirty-log-2m.tkcap"), str(ARM)], by="arch,backend")
    assert [g["group"] for g in summary.groups] == ["aarch64 / tracefs-kprobe-events", "x86_64 / bcc"]
    assert set(summary.captures[0]) >= {"group", "capture", "label", *FIGURES}


def _mixed_set(tmp_path):
    for name in ("x86-dirty-log-4k.tkcap", "lab-arm64-eager-clear.tkcap", "lab-x86-tdp-clear.tkcap"):
        shutil.copytree(SAMPLES / name, tmp_path / name)
    segment = sorted((tmp_path / "lab-x86-tdp-clear.tkcap" / "split").glob("part-*.parquet"))[0]
    segment.write_bytes(segment.read_bytes()[:200])  # damaged: a truncated segment
    newer = tmp_path / "newer.tkcap"
    newer.mkdir()
    (newer / "capture.json").write_text(json.dumps({"format": "tracekit-capture", "format_version": 99}))
    return segment


def test_mixed_set_names_the_bad_captures_and_summarises_the_rest(tmp_path):
    segment = _mixed_set(tmp_path)
    result = CliRunner().invoke(app, ["fleet", "summary", str(tmp_path), "--by", "arch", "--format", "json"])
    assert result.exit_code == 1, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("tracekit: warning: left out: ")]
    assert len(warnings) == 2 and len(result.stderr.splitlines()) == 2, result.stderr
    assert any(segment.name in line and "lab-x86-tdp-clear.tkcap" in line for line in warnings)
    assert any("newer.tkcap" in line for line in warnings)
    document = json.loads(result.stdout)
    assert sorted(r["label"] for r in document["captures"]) == ["lab-arm64-eager-clear", "x86-dirty-log-4k"]
    assert len(document["left_out"]) == 2 and document["schema"] == "tracekit.fleet-summary/1"
    alone = fleet_summary([str(tmp_path / "x86-dirty-log-4k.tkcap")], by="arch")
    assert next(r for r in document["captures"] if r["label"] == "x86-dirty-log-4k")["walks"] == alone.captures[0]["walks"]


def test_nothing_readable_is_one_line(tmp_path):
    _mixed_set(tmp_path)
    result = CliRunner().invoke(app, ["fleet", "summary", str(tmp_path / "newer.tkcap")])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("tracekit: error: ") and "newer.tkcap" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--by", "colour"], "--by 'colour'"), (["--engine", "oracle"], "--engine must be one of"),
    (["--format", "xml"], "--format must be one of"), (["--master", "local[1]"], "--master applies to --engine spark")])
def test_usage_errors_are_one_line(args, message):
    result = CliRunner().invoke(app, ["fleet", "summary", str(X86), *args])
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_table_and_html(tmp_path):
    result = CliRunner().invoke(app, ["fleet", "summary", str(SAMPLES), "--by", "arch"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Fleet summary by arch (duckdb)"
    assert lines[2].split()[:4] == ["aarch64", "50", "50", "0"] and lines[3].split()[:4] == ["x86_64", "25", "25", "0"]
    out = tmp_path / "fleet.html"
    result = CliRunner().invoke(app, ["fleet", "summary", str(SAMPLES), "--by", "kernel", "--format", "html", "-o",
                                      str(out)])
    assert result.exit_code == 0, result.stderr
    page = out.read_text()
    for figure in ("latency", "walk-depth", "splits-per-op"):
        assert f"data-figure='{figure}' src='data:image/png;base64," in page
    assert page.count("<tr>") == 1 + 15 + 1 + 75  # header + groups, header + captures


def test_json_output_is_documented():
    page = (SAMPLES.parent / "docs" / "cli-json" / "fleet.md").read_text()
    document = json.loads(CliRunner().invoke(app, ["fleet", "summary", str(ARM), "--format", "json"]).stdout)
    keys = set(document) | set(document["groups"][0]) | set(document["captures"][0])
    assert keys >= set(FIGURES) and keys >= set(CAPTURE_COLUMNS)
    assert [k for k in sorted(keys) if f'"{k}"' not in page] == []


def test_table_is_sized_to_the_terminal_and_natural_in_a_pipe(tmp_path):
    """The shared renderer's widths: within COLUMNS (columns shown again under the key, none dropped), one
    block per table into a pipe, and a file written with -o at its natural width whatever COLUMNS says."""
    piped = CliRunner().invoke(app, ["fleet", "summary", str(X86)], env={"COLUMNS": None})
    assert piped.exit_code == 0, piped.stderr
    blocks = piped.stdout.split("\n\n")
    assert len(blocks) == 2 and max(len(line) for line in piped.stdout.splitlines()) > 100  # groups, captures
    narrow = CliRunner().invoke(app, ["fleet", "summary", str(X86)], env={"COLUMNS": "72"})
    assert narrow.exit_code == 0 and max(len(line) for line in narrow.stdout.splitlines()) <= 72
    assert len(narrow.stdout.split("\n\n")) > 2 and set(piped.stdout.split()) <= set(narrow.stdout.split())
    out = tmp_path / "fleet.txt"
    written = CliRunner().invoke(app, ["fleet", "summary", str(X86), "-o", str(out)], env={"COLUMNS": "72"})
    assert written.exit_code == 0 and out.read_text() == piped.stdout


def _without_columns(source, target, family, columns):
    """A copy of capture ``source`` whose ``family`` files lack ``columns`` (as a capture of an older format)."""
    shutil.copytree(source, target)
    for path in [*(target / family).glob("part-*.parquet"), target / family / "_schema.parquet"]:
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(columns).replace_schema_metadata(table.schema.metadata), path)
    return target


def test_older_captures_without_newer_columns(tmp_path):
    x86 = SAMPLES / "x86-dirty-log-4k.tkcap"
    old = _without_columns(x86, tmp_path / "old.tkcap", "ioctl", ["memory_size", "guest_phys_addr", "slot"])
    result = fleet_summary([str(old), str(ARM)], by="capture")
    row, new = next(r for r in result.captures if r["path"] == str(old)), fleet_summary([str(x86)]).captures[0]
    same = [f for f in FIGURES if not f.startswith(("dirty_log_ops", "ops_splits", "splits_per_op"))]
    assert {f: row[f] for f in same} == {f: new[f] for f in same} and row["ioctl_count"] > 0
    assert row["dirty_log_ops"] == new["clear_count"] < new["dirty_log_ops"]  # no slot: only the CLEARs
    assert result.problems == [] and _row(result, ARM)["split_count"] == 1024


def test_a_failed_engine_setup_leaves_no_spill_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # tempfile reads TMPDIR again
    dataset = Dataset.open([str(ARM)])
    with pytest.raises(duckdb.Error):
        duckdb_engine(dataset, {"split": ("duration_ns",)}, memory_limit="not a size")
    assert list(tmp_path.iterdir()) == []
    engine = duckdb_engine(dataset, {"split": ("duration_ns",)})
    assert [p.name for p in tmp_path.iterdir()] == [engine.spill.rsplit("/", 1)[1]]
    engine.close()
    assert list(tmp_path.iterdir()) == []


def _damage_footer(segment):
    """``segment`` with the first half of its footer overwritten (its length and magic kept); returned."""
    data = bytearray(segment.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    data[-8 - footer:-8 - footer // 2] = b"\xff" * (footer - footer // 2)
    segment.write_bytes(bytes(data))
    return segment


def test_only_the_families_the_summary_reads_have_their_footers_checked(tmp_path):
    """A segment of a family the summary neither reads nor takes verdicts from (``func_call``) is only
    checked to end as a Parquet file: truncated, it is one line leaving its capture out; its footer
    damaged inside, the capture is summarised, and ``tracekit info`` still refuses it."""
    truncated, damaged = (shutil.copytree(SAMPLES / "lab-arm64-eager-clear.tkcap", tmp_path / name)
                          for name in ("truncated.tkcap", "damaged.tkcap"))
    cut = sorted((truncated / "func_call").glob("part-*.parquet"))[0]
    cut.write_bytes(cut.read_bytes()[:-3])
    inside = _damage_footer(sorted((damaged / "func_call").glob("part-*.parquet"))[0])
    result = CliRunner().invoke(app, ["fleet", "summary", str(tmp_path), "--format", "json"])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1, result.output
    assert f"truncated.tkcap/func_call/{cut.name}: corrupt or truncated Parquet file" in result.stderr
    document = json.loads(result.stdout)
    assert [r["label"] for r in document["captures"]] == ["damaged"] and document["captures"][0]["splits"] == 1024
    info = CliRunner().invoke(app, ["info", str(damaged)])
    assert info.exit_code == 1 and inside.name in info.stderr


def test_the_summary_on_duckdb_reads_no_segment_footer_of_the_families_its_query_reads(monkeypatch):
    """DuckDB reads those footers in its scans: the captures are opened reading only each such family's
    schema (its schema file); the verdicts' row counts are then the manifest's, and equal the footers'."""
    from tracekit.capture import reader
    from tracekit.fleet.query import INPUT_COLUMNS

    read = []
    footer = reader._read_footer
    monkeypatch.setattr(reader, "_read_footer", lambda path, *a: read.append(path) or footer(path, *a))
    summary = fleet_summary([str(X86)], by="kernel")
    assert read and all(p.name == "_schema.parquet" and p.parent.name in INPUT_COLUMNS for p in read)
    read.clear()
    checked = fleet_summary([str(X86)], by="kernel", dataset=Dataset.open([str(X86)]))
    assert any(p.name.startswith("part-") for p in read) and checked.captures == summary.captures


def test_a_segment_duckdb_cannot_read_is_found_by_the_check_and_its_capture_left_out(tmp_path):
    """A damaged footer inside a segment the query reads (not truncated: its tail is a footer's) fails
    DuckDB's read; every footer is then checked, the capture named on one line, the rest summarised."""
    for name in ("lab-arm64-eager-clear.tkcap", "x86-dirty-log-4k.tkcap"):
        shutil.copytree(SAMPLES / name, tmp_path / name)
    segment = _damage_footer(sorted((tmp_path / "x86-dirty-log-4k.tkcap" / "ioctl").glob("part-*.parquet"))[-1])
    result = CliRunner().invoke(app, ["fleet", "summary", str(tmp_path), "--format", "json"])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1, result.output
    assert f"x86-dirty-log-4k.tkcap/ioctl/{segment.name}: corrupt or truncated Parquet file" in result.stderr
    assert [r["label"] for r in json.loads(result.stdout)["captures"]] == ["lab-arm64-eager-clear"]


def test_duckdb_draws_no_progress_bar_into_a_redirected_stderr():
    """A long summary, query or export on DuckDB drew its progress bar's frames into standard error even
    when it was a file or a pipe (where tracekit writes one line per problem); on a terminal it may."""
    from tracekit.dataset import connect

    engine = duckdb_engine(Dataset.open([str(ARM)]), {"split": ("duration_ns",)})
    con = connect([str(ARM)])
    try:
        for db in (engine.con, con):
            assert db.sql("SELECT current_setting('enable_progress_bar')").fetchall() == [(False,)]
    finally:
        engine.close()
        con.close()


def test_a_manifest_without_row_counts_has_its_footers_read_and_its_verdicts_kept(tmp_path):
    """The summary on DuckDB takes the analysed families' rows from the manifest; one that records none
    (``families`` is optional) has those families' footers read, so its stored verdicts still count and
    DuckDB's summary equals the one over fully checked captures (as Spark's)."""
    cap = shutil.copytree(X86, tmp_path / "x86.tkcap")
    manifest = json.loads((cap / "capture.json").read_text())
    del manifest["families"]
    (cap / "capture.json").write_text(json.dumps(manifest))
    listed = fleet_summary([str(cap)], by="kernel")
    checked = fleet_summary([str(cap)], by="kernel", dataset=Dataset.open([str(cap)]))
    assert listed.captures == checked.captures and listed.captures[0]["crosscheck"] == "match"
    assert listed.groups[0]["analysed_captures"] == 1
