"""Layout directories of killed recorders are reclaimed, others are left alone (no root needed)."""

from __future__ import annotations

import os
import subprocess
import sys

from tracekit.recorder.layoutdir import LAYOUT_PREFIX, make_layout_dir, read_layout_record, reclaim_stale_layout_dirs
from tracekit.workload.published import LAYOUT_DIR_ENV, recorder_layout_path


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_the_directories_of_dead_recorders_are_reclaimed(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f"{LAYOUT_PREFIX}{dead}-abc123"
    stale.mkdir()
    (stale / "layout.json").write_text("{}")
    alive = tmp_path / f"{LAYOUT_PREFIX}{os.getpid()}-def456"
    alive.mkdir()
    unnamed = tmp_path / f"{LAYOUT_PREFIX}q1w2e3r4"  # no pid: its owner is unknown
    unnamed.mkdir()
    target = tmp_path / "keep"
    target.mkdir()
    link = tmp_path / f"{LAYOUT_PREFIX}{dead}-link"
    link.symlink_to(target)
    plain_file = tmp_path / f"{LAYOUT_PREFIX}{dead}-file"
    plain_file.write_text("")

    assert reclaim_stale_layout_dirs(tmp_path) == [stale.name]
    assert not stale.exists()
    assert alive.is_dir() and unnamed.is_dir() and target.is_dir() and link.is_symlink() and plain_file.is_file()


def test_a_new_directory_is_private_and_named_after_this_recorder(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    path = make_layout_dir()
    assert os.path.dirname(path) == str(tmp_path)
    assert os.path.basename(path).startswith(f"{LAYOUT_PREFIX}{os.getpid()}-")
    assert os.stat(path).st_mode & 0o777 == 0o700
    assert reclaim_stale_layout_dirs(tmp_path) == [] and os.path.isdir(path)


def test_a_missing_temporary_directory_reclaims_nothing(tmp_path):
    assert reclaim_stale_layout_dirs(tmp_path / "absent") == []


def test_the_workload_writes_where_the_recorder_asks_and_nowhere_otherwise(tmp_path):
    assert recorder_layout_path({}) is None
    assert recorder_layout_path({LAYOUT_DIR_ENV: str(tmp_path)}) == str(tmp_path / f"workload-{os.getpid()}.json")


def test_the_started_commands_own_record_wins_else_the_only_one(tmp_path):
    assert read_layout_record(str(tmp_path), 10) is None  # nothing written
    (tmp_path / "workload-11.json").write_text('{"pid": 11}')
    assert read_layout_record(str(tmp_path), 10) == {"pid": 11}  # the workload ran under a shell
    (tmp_path / "workload-12.json").write_text('{"pid": 12}')
    assert read_layout_record(str(tmp_path), 10) is None  # two workloads: neither is the command's
    (tmp_path / "workload-10.json").write_text('{"pid": 10}')
    assert read_layout_record(str(tmp_path), 10) == {"pid": 10}
    assert read_layout_record(str(tmp_path / "absent"), 10) is None


def test_a_layout_record_that_is_a_link_or_not_an_object_is_ignored(tmp_path):
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text('{"secret": 1}')
    (tmp_path / "workload-10.json").symlink_to(elsewhere)
    assert read_layout_record(str(tmp_path), 10) is None
    (tmp_path / "workload-10.json").unlink()
    (tmp_path / "workload-10.json").write_text("[1, 2]")
    assert read_layout_record(str(tmp_path), 10) is None
    (tmp_path / "workload-10.json").write_text("{not json")
    assert read_layout_record(str(tmp_path), 10) is None
