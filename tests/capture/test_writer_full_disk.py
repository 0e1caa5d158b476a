"""The writer's last manifest write when the file system refuses more: out of inodes, or a failing final
flush (no root needed; the recorder's run into a real inode-starved tmpfs is a live recorder test)."""

from __future__ import annotations

import errno
import json
import os

import pytest

from tests.capture.test_writer import SCHEMA, rows
from tracekit.capture import CaptureWriter, open_capture
from tracekit.capture import writer as writer_module
from tracekit.capture.writer import CaptureWriteError

MANIFEST_TMP = ".capture.json.tmp"


def test_the_next_manifest_file_is_kept_made_until_the_last_write(tmp_path):
    out = tmp_path / "c.tkcap"
    with CaptureWriter(out, segment_rows=2) as w:
        w.declare("walk", SCHEMA)
        assert (out / MANIFEST_TMP).is_file()
        w.append("walk", rows(3))  # one segment closed, one manifest rewrite
        assert (out / MANIFEST_TMP).is_file()
    assert not (out / MANIFEST_TMP).exists()
    assert open_capture(out).manifest["status"] == "complete"


def test_no_new_inode_needed_for_the_final_status(tmp_path, monkeypatch):
    """Every creation of a new file fails with ENOSPC, as on a file system out of inodes (the manifest
    through Python's open, a segment through pyarrow): the manifest still takes the final status."""
    out = tmp_path / "c.tkcap"
    w = CaptureWriter(out)
    w.declare("walk", SCHEMA)
    w.append("walk", rows(2))

    def refuse_new(path):
        if not os.path.exists(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def open_existing_only(path, *args, **kwargs):
        refuse_new(path)
        return open(path, *args, **kwargs)

    def os_open_existing_only(path, flags, *args, **kwargs):
        refuse_new(path)
        return real_os_open(path, flags, *args, **kwargs)

    def write_table(table, where, **kwargs):
        refuse_new(where)

    real_os_open = os.open
    monkeypatch.setattr(writer_module, "open", open_existing_only, raising=False)
    monkeypatch.setattr(os, "open", os_open_existing_only)
    monkeypatch.setattr(writer_module.pq, "write_table", write_table)
    with pytest.raises(CaptureWriteError, match="No space left"):
        with w:
            w.flush()  # the segment's temporary file cannot be created
    monkeypatch.undo()
    manifest = json.loads((out / "capture.json").read_text())
    assert manifest["status"] == "aborted" and "No space left" in manifest["status_reason"]
    assert not (out / MANIFEST_TMP).exists()


def test_a_failing_final_flush_is_not_complete(tmp_path, monkeypatch):
    out = tmp_path / "c.tkcap"
    with pytest.raises(CaptureWriteError):
        with CaptureWriter(out) as w:
            w.declare("walk", SCHEMA)
            w.append("walk", rows(2))

            def refuse(family):
                raise CaptureWriteError(f"cannot write segment 1 of {family}: Disk quota exceeded")

            monkeypatch.setattr(w, "_close_segment", refuse)
    manifest = json.loads((out / "capture.json").read_text())
    assert manifest["status"] == "aborted" and "Disk quota exceeded" in manifest["status_reason"]
