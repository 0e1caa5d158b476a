"""The command-line front ends: ``tracekit workload dirty-log`` (typer) and ``python3 -m tracekit.workload``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.workload.livegate import need_log_mode, need_workload
from tracekit.cli import app
from tracekit.workload.backing import hugetlb_pool

ROOT = Path(__file__).resolve().parents[2]


def _invoke(*args: str):
    return CliRunner().invoke(app, ["workload", "dirty-log", *args])


@pytest.mark.parametrize(
    "args,message",
    [
        (["-v", "0"], "--vcpus"),
        (["-b", "12x"], "bad size"),
        (["-s", "hugepages"], "--backing"),
        (["-w", "150"], "--write-percent"),
        (["--log-mode", "bitmap"], "--log-mode"),
        (["--guest-page-size", "16k"], "guest page size"),
        (["-g", "--log-mode", "ring"], "contradicts"),
        (["-b", "3M"], "guest page size"),
        (["-x", "3"], "-x 3"),
    ],
)
def test_bad_options_give_one_line_and_exit_1(args, message):
    result = _invoke(*args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracekit: error: ") and message in lines[0], result.output


def test_help_lists_the_selftest_options():
    result = _invoke("--help")
    assert result.exit_code == 0
    for flag in ("--vcpus", "-b", "--iterations", "--backing", "--write-percent", "--random-order", "--seed",
                 "--no-manual-protect", "--memslots", "--log-mode", "--layout", "--json"):  # fmt: skip
        assert flag in result.output


@pytest.mark.live
def test_run_prints_the_selftest_lines(tmp_path):
    need_log_mode("clear")
    layout = tmp_path / "layout.json"
    result = _invoke("-b", "16M", "-i", "2", "--layout", str(layout))
    assert result.exit_code == 0, result.output
    assert "Iteration 2 clear dirty log time: " in result.output
    record = json.loads(layout.read_text())
    assert record["schema"] == "tracekit.workload.layout/1" and record["verified"] is True


@pytest.mark.live
def test_json_output(tmp_path):
    need_workload()
    result = _invoke("-b", "16M", "-i", "2", "-g", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["log_mode"] == "get" and document["clear_dirty_log_total_ns"] is None
    assert [(it["iteration"], it["dirty_pages"], it["expected_dirty_pages"]) for it in document["iterations"]] == [
        (1, 4096, 4096),
        (2, 4096, 4096),
    ]
    assert document["get_dirty_log_total_ns"] == sum(it["get_dirty_log_ns"] for it in document["iterations"])
    assert document["verified"] is True and document["layout_file"] is None


@pytest.mark.live
def test_options_this_host_does_not_offer_give_one_line():
    need_workload()
    total, free = hugetlb_pool(1 << 30)
    if free >= 1:
        pytest.skip("1 GiB hugetlb pages are reserved on this host: the refusal cannot be observed")
    result = _invoke("-s", "anonymous_hugetlb_1gb", "-b", "1G")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "nr_hugepages" in result.output


@pytest.mark.live
def test_stdlib_entry_point_imports_no_third_party_module():
    """``python3 -m tracekit.workload`` runs with the standard library only (for minimal lab guests)."""
    need_workload()
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['tracekit.workload', 'dirty-log', '-b', '8M', '-i', '1']\n"
        "try:\n    runpy.run_module('tracekit.workload', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "bad = sorted(m for m in ('typer', 'click', 'numpy', 'pandas', 'pyarrow') if m in sys.modules)\n"
        "print('third-party:', bad)\nsys.exit(code)\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "Iteration 1 get dirty log time" in run.stdout
    assert run.stdout.strip().endswith("third-party: []")


@pytest.mark.parametrize("args, code, message", [
    (["dirty-log", "-w", "101"], 1, "--write-percent"),
    (["dirty-log", "-v", "x"], 2, "argument -v/--vcpus: invalid int value: 'x'"),
    (["dirty-log", "--no-such-option"], 2, "unrecognized arguments: --no-such-option"),
    ([], 2, "required: command")])
def test_stdlib_entry_point_errors_are_the_clis_one_line(args, code, message):
    """The same error line as ``tracekit``'s, for a bad value (the same text as the CLI) and bad syntax."""
    run = subprocess.run([sys.executable, "-m", "tracekit.workload", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == code and run.stdout == "", run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracekit: error: ") and message in lines[0], run.stderr
    if code == 1:
        assert lines[0] == _invoke(*args[1:]).output.strip()


@pytest.mark.live
def test_more_memory_than_the_host_has_gives_one_line():
    need_workload()
    result = _invoke("-b", "48G")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "available" in result.output, result.output


@pytest.mark.live
def test_sigterm_stops_cleanly_and_still_writes_the_layout(tmp_path):
    """SIGTERM mid-run: one error line, exit 1, the partial layout written, no process left."""
    need_workload()
    import signal
    import time

    layout = tmp_path / "layout.json"
    child = subprocess.Popen(
        [sys.executable, "-m", "tracekit.workload", "dirty-log", "-b", "16M", "-i", "100000", "--layout", str(layout)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for line in child.stdout:
            if line.startswith("Iteration 2 clear"):
                break
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 1
    assert stderr.strip() == "tracekit: error: stopped by SIGTERM before the run completed"
    record = json.loads(layout.read_text())
    assert record["verified"] is True and len(record["iterations"]) >= 2
    assert record["vcpus"][0]["thread_name"] == "tk-vcpu-0"
