"""Leftover tracefs instances of killed recorders are removed once, whoever gets there first (no root needed)."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from tracekit.errors import RecorderError
from tracekit.recorder.backend_tracefs import cleanup_stale_instances


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _rmdir_failing_with(monkeypatch, code: int) -> list[Path]:
    tried = []

    def rmdir(self):
        tried.append(self)
        raise OSError(code, "failed on purpose")

    monkeypatch.setattr(Path, "rmdir", rmdir)
    return tried


def test_an_instance_another_recorder_removed_meanwhile_counts_as_removed(tmp_path, monkeypatch):
    stale = tmp_path / "instances" / f"tracekit-{_dead_pid()}-abcd1234"
    stale.mkdir(parents=True)
    tried = _rmdir_failing_with(monkeypatch, errno.ENODEV)  # what tracefs says for an instance already gone
    assert cleanup_stale_instances(tmp_path) == [stale.name] and tried == [stale]


def test_an_instance_that_cannot_be_removed_is_one_error(tmp_path, monkeypatch):
    stale = tmp_path / "instances" / f"tracekit-{_dead_pid()}-abcd1234"
    stale.mkdir(parents=True)
    _rmdir_failing_with(monkeypatch, errno.EPERM)
    with pytest.raises(RecorderError, match="cannot remove tracefs instance"):
        cleanup_stale_instances(tmp_path)
