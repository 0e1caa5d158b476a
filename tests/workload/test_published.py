"""The layout record a running workload publishes for a recorder attaching later (no KVM needed)."""

from __future__ import annotations

import os

import pytest

from tracekit.workload import published


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(published, "_ROOT_DIR", tmp_path / "root")
    monkeypatch.setattr(published, "_USER_DIR", str(tmp_path / "user-{uid}"))
    return tmp_path


def test_published_for_this_process_is_read_back_then_removed(run_dir):
    publisher = published.LayoutPublisher()
    publisher.publish({"pid": os.getpid(), "phases": [{"name": "setup"}]})
    assert published.read_published_layout(os.getpid()) == {"pid": os.getpid(), "phases": [{"name": "setup"}]}
    publisher.publish({"pid": os.getpid(), "phases": [{"name": "setup"}, {"name": "populate"}]})
    assert len(published.read_published_layout(os.getpid())["phases"]) == 2  # republished, replaced
    publisher.remove()
    assert published.read_published_layout(os.getpid()) is None and not publisher.path.exists()


def test_a_record_of_another_process_with_the_same_pid_is_ignored(run_dir):
    """A stale file (a reused pid: another start time) or one naming another pid is not this process's."""
    publisher = published.LayoutPublisher()
    publisher._start = (publisher._start or 0) + 1
    publisher.publish({"pid": os.getpid()})
    assert published.read_published_layout(os.getpid()) is None
    publisher = published.LayoutPublisher()
    publisher.publish({"pid": os.getpid() + 1})
    assert published.read_published_layout(os.getpid()) is None


def test_symlinks_and_garbage_are_refused(run_dir):
    path = published.published_layout_path(os.getpid(), os.getuid())
    path.parent.mkdir(parents=True)
    target = run_dir / "elsewhere.json"
    target.write_text('{"pid": %d}' % os.getpid())
    path.symlink_to(target)
    assert published.read_published_layout(os.getpid()) is None
    path.unlink()
    path.write_bytes(b"\xff not json")
    assert published.read_published_layout(os.getpid()) is None
    assert published.read_published_layout(2**22 + 12345) is None  # no such process


def test_an_unwritable_directory_never_stops_the_workload(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a directory should be")
    monkeypatch.setattr(published, "_ROOT_DIR", blocker / "tracekit")
    monkeypatch.setattr(published, "_USER_DIR", str(blocker / "user-{uid}"))
    publisher = published.LayoutPublisher()
    publisher.publish({"pid": os.getpid()})
    assert not publisher.published
    publisher.remove()


def test_records_of_processes_that_are_gone_are_removed_by_the_next_publisher(run_dir):
    """A workload killed with SIGKILL leaves its record; the next one to publish removes it."""
    gone = published.published_layout_path(2**22 + 4321, os.getuid())  # above pid_max: never a process
    gone.parent.mkdir(parents=True)
    gone.write_text("{}")
    alive = published.published_layout_path(1, os.getuid())  # init runs: kept
    alive.write_text("{}")
    publisher = published.LayoutPublisher()
    publisher.publish({"pid": os.getpid()})
    assert not gone.exists() and alive.exists() and publisher.path.exists()
    publisher.remove()
