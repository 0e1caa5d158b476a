"""Stored analysis verdicts in the fleet summary: the samples' verdicts.json equal what analyze says now,
groups count them, ``tracekit fleet verdicts`` writes and keeps them, stale ones are not shown and a
damaged one leaves its capture out with one line."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from tests.fleet.golden import SAMPLES
from tracekit.analysis.analyze import ANALYSED_FAMILIES, analyze_capture
from tracekit.capture import open_capture
from tracekit.cli import app
from tracekit.dataset import find_captures
from tracekit.fleet.summary import fleet_summary
from tracekit.fleet.verdicts import VERDICT_COLUMNS, VERDICTS_NAME, stored_verdicts, verdict_values

X86 = SAMPLES / "x86-dirty-log-2m.tkcap"
ARM = SAMPLES / "lab-arm64-skip3-eager-clear.tkcap"


@pytest.mark.parametrize("name", ["x86-dirty-log-2m.tkcap", "x86-dirty-log-4k.tkcap", "lab-arm64-contention.tkcap",
                                  "lab-arm64-skip3-eager-clear.tkcap", "compare/dirty-log-4k-1.tkcap"])
def test_stored_sample_verdicts_are_analyze_s(name):
    cap = open_capture(SAMPLES / name)
    assert stored_verdicts(cap) == verdict_values(analyze_capture(cap).verdicts)


def test_every_sample_has_current_verdicts():
    missing = [str(p.relative_to(SAMPLES)) for p in find_captures([SAMPLES]) if stored_verdicts(open_capture(p)) is None]
    assert missing == [], "run: tracekit fleet verdicts samples"


def test_summary_counts_the_verdicts():
    summary = fleet_summary([str(SAMPLES)], by="arch")
    rows = {r["label"]: r for r in summary.captures}
    x86 = rows["x86-dirty-log-2m"]
    assert (x86["crosscheck"], x86["mmu_lock"], x86["crosscheck_match_captures"], x86["walks_fault"]) == (
        "match", "found", 1, 49184)
    assert rows["lab-arm64-skip3-eager-clear"]["skip_levels"] == "yes"
    for group in summary.groups:
        members = [r for r in summary.captures if r["group"] == group["group"]]
        assert group["analysed_captures"] == len(members)
        assert group["skip_levels_yes_captures"] == sum(r["skip_levels"] == "yes" for r in members)
        assert group["skip_levels_no_captures"] == sum(r["skip_levels"] == "no" for r in members)
        assert group["mmu_lock_found_captures"] == sum(r["mmu_lock"] == "found" for r in members)
        assert group["crosscheck_match_captures"] == sum(r["crosscheck"] == "match" for r in members)
        faults = [r["walks_fault"] for r in members if r["walks_fault"] is not None]
        assert group["walks_fault"] == (sum(faults) if faults else None)


def _copy(tmp_path, source=X86):
    target = tmp_path / source.name
    shutil.copytree(source, target)
    return target


def test_verdicts_command_writes_then_keeps(tmp_path):
    cap = _copy(tmp_path)
    (cap / VERDICTS_NAME).unlink()
    first = CliRunner().invoke(app, ["fleet", "verdicts", str(cap)])
    assert first.exit_code == 0, first.stderr
    assert "crosscheck match" in first.stdout and "(kept)" not in first.stdout
    assert stored_verdicts(open_capture(cap))["walks_emulation"] == 33
    again = CliRunner().invoke(app, ["fleet", "verdicts", str(cap)])
    assert again.exit_code == 0 and again.stdout.rstrip().endswith("(kept)")
    assert "(kept)" not in CliRunner().invoke(app, ["fleet", "verdicts", str(cap), "--again"]).stdout


def test_a_capture_without_analysed_families_is_stored_without_verdicts(tmp_path):
    cap = _copy(tmp_path)
    for family in ANALYSED_FAMILIES:
        shutil.rmtree(cap / family, ignore_errors=True)
    result = CliRunner().invoke(app, ["fleet", "verdicts", str(cap)])
    assert result.exit_code == 0 and "no verdicts" in result.stdout, result.output
    assert stored_verdicts(open_capture(cap)) == dict.fromkeys(VERDICT_COLUMNS)


def test_stale_verdicts_are_not_shown(tmp_path):
    cap = _copy(tmp_path)
    record = json.loads((cap / VERDICTS_NAME).read_text())
    record["family_rows"]["walk"] += 1  # taken of other rows
    (cap / VERDICTS_NAME).write_text(json.dumps(record))
    row = fleet_summary([str(cap)]).captures[0]
    assert (row["analysed_captures"], row["crosscheck"], row["walks_fault"]) == (0, None, None)


@pytest.mark.parametrize("text, reason", [
    ("{", "not JSON text"), ('{"schema": "tracekit.verdicts/1"}', "capture_id: missing"),
    (None, "verdicts.crosscheck: expected one of"), ("x" * 70000, "larger than 64 KiB")])
def test_a_damaged_verdicts_file_leaves_its_capture_out(tmp_path, text, reason):
    cap = _copy(tmp_path)
    other = _copy(tmp_path, ARM)
    if text is None:
        record = json.loads((cap / VERDICTS_NAME).read_text())
        record["verdicts"]["crosscheck"] = "probably"
        text = json.dumps(record)
    (cap / VERDICTS_NAME).write_text(text)
    result = CliRunner().invoke(app, ["fleet", "summary", str(tmp_path), "--format", "json"])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1, result.output
    assert result.stderr.startswith("tracekit: warning: left out: ") and f"{cap.name}/{VERDICTS_NAME}" in result.stderr
    assert reason in result.stderr
    assert [r["label"] for r in json.loads(result.stdout)["captures"]] == [other.name.removesuffix(".tkcap")]


def test_a_symlinked_verdicts_file_is_refused(tmp_path):
    cap = _copy(tmp_path)
    outside = tmp_path / "outside.json"
    (cap / VERDICTS_NAME).rename(outside)
    (cap / VERDICTS_NAME).symlink_to(outside)
    result = CliRunner().invoke(app, ["fleet", "summary", str(cap)])
    assert result.exit_code == 1 and "symbolic link" in result.stderr and len(result.stderr.splitlines()) == 1
    written = CliRunner().invoke(app, ["fleet", "verdicts", str(cap), "--again"])
    assert written.exit_code == 1 and "symbolic link" in written.stderr and outside.read_text().startswith("{")


def test_an_unwritable_verdicts_file_is_one_line(tmp_path):
    cap = _copy(tmp_path)
    (cap / VERDICTS_NAME).unlink()
    (cap / VERDICTS_NAME).mkdir()  # in the way of the rename, even for root
    result = CliRunner().invoke(app, ["fleet", "verdicts", str(cap)])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1, result.output
    assert cap.name in result.stderr and "cannot write verdicts.json" in result.stderr
    assert not list(cap.glob(".verdicts.json.tmp"))


def test_verdicts_of_a_capture_at_a_url_are_written_through_its_file_system(tmp_path):
    """``fleet verdicts URL`` analyses a capture read at a URL and writes its verdicts there (a traceback
    before: the local writer's symlink check on a URL), no temporary file left, then kept."""
    cap = _copy(tmp_path)
    stored = (cap / VERDICTS_NAME).read_bytes()
    (cap / VERDICTS_NAME).unlink()
    result = CliRunner().invoke(app, ["fleet", "verdicts", f"file://{cap}"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"file://{cap}: crosscheck match") and "(kept)" not in result.stdout
    assert json.loads((cap / VERDICTS_NAME).read_bytes())["verdicts"] == json.loads(stored)["verdicts"]
    assert [p.name for p in cap.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    again = CliRunner().invoke(app, ["fleet", "verdicts", f"file://{cap}"])
    assert again.exit_code == 0 and again.stdout.rstrip().endswith("(kept)")


def test_verdicts_lines_fit_the_terminal_and_stay_whole_in_a_pipe(tmp_path, monkeypatch):
    """On an 80-column terminal (COLUMNS) each capture's line is wrapped at words (it was 152 characters);
    into a pipe it stays one line per capture, for grep."""
    cap = _copy(tmp_path)
    piped = CliRunner().invoke(app, ["fleet", "verdicts", str(cap)])
    assert piped.exit_code == 0 and len(piped.stdout.splitlines()) == 1 and len(piped.stdout.rstrip()) > 80
    monkeypatch.setenv("COLUMNS", "80")
    shown = CliRunner().invoke(app, ["fleet", "verdicts", str(cap)])
    assert shown.exit_code == 0 and all(len(line) <= 80 for line in shown.stdout.splitlines())
    assert len(shown.stdout.splitlines()) > 1 and "".join(shown.stdout.split()) == "".join(piped.stdout.split())
