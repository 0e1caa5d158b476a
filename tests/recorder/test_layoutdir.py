"""Layout directories of killed recorders are reclaimed, others are left alone (no root needed)."""

from __future__ import annotations

import os
import subprocess
import sys

from tracekit.recorder.layoutdir import LAYOUT_PREFIX, make_layout_dir, reclaim_stale_layout_dirs


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
