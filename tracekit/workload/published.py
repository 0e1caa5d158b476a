"""Where the workload leaves its layout record for a recorder: published while it runs, or handed over.

:class:`LayoutPublisher` rewrites ``/run/tracekit/workload-PID.json`` (``/run/user/UID/tracekit`` for
other users) after every phase and removes it at the end; :func:`read_published_layout` returns it
only for that very process (pid, start time, owner) and never raises. A recorder that starts the
workload names a private directory in :data:`LAYOUT_DIR_ENV` instead; :func:`recorder_layout_path`
is the file the workload writes there when it ends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

from tracekit.procs import proc_start_ticks

__all__ = ["LayoutPublisher", "read_published_layout", "published_layout_path", "remove_stale_records",
           "LAYOUT_DIR_ENV", "recorder_layout_path"]

_ROOT_DIR = Path("/run/tracekit")
_USER_DIR = "/run/user/{uid}/tracekit"
_MAX_BYTES = 64 << 20

#: The environment variable naming the directory a recorder that started this process wants the layout in.
LAYOUT_DIR_ENV = "TRACEKIT_LAYOUT_DIR"


def recorder_layout_path(environ: Mapping[str, str] = os.environ) -> str | None:
    """``$TRACEKIT_LAYOUT_DIR/workload-PID.json`` for this process when a recorder asked for it, else None."""
    directory = environ.get(LAYOUT_DIR_ENV)
    return os.path.join(directory, f"workload-{os.getpid()}.json") if directory else None


def _process_uid(pid: int) -> int | None:
    try:
        return Path(f"/proc/{pid}").stat().st_uid
    except OSError:
        return None


def published_layout_path(pid: int, uid: int) -> Path:
    """Where process ``pid`` of user ``uid`` publishes its layout record."""
    directory = _ROOT_DIR if uid == 0 else Path(_USER_DIR.format(uid=uid))
    return directory / f"workload-{pid}.json"


class LayoutPublisher:
    """Publishes this process's layout record; a failure to publish never stops the workload."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.path = published_layout_path(self.pid, os.getuid())
        self._start = proc_start_ticks(self.pid)
        self.published = False

    def publish(self, layout: dict) -> None:
        record = {**layout, "proc_start": self._start}
        tmp = self.path.with_suffix(".tmp")
        try:
            if not self.published:
                self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                remove_stale_records(self.path.parent)
            with open(tmp, "w", encoding="utf-8") as out:
                json.dump(record, out)
            os.replace(tmp, self.path)
            self.published = True
        except OSError:
            pass

    def remove(self) -> None:
        for path in (self.path, self.path.with_suffix(".tmp")):
            try:
                path.unlink()
            except OSError:
                pass


def remove_stale_records(directory: Path) -> list[str]:
    """Remove this user's records in ``directory`` whose process no longer runs; return their names."""
    removed = []
    for path in directory.glob("workload-*.json"):
        pid = path.stem.removeprefix("workload-")
        try:
            if not pid.isdigit() or proc_start_ticks(int(pid)) is not None or path.lstat().st_uid != os.getuid():
                continue
            path.unlink()
            removed.append(path.name)
        except OSError:
            pass
    return removed


def read_published_layout(pid: int) -> dict | None:
    """The layout record process ``pid`` published, or None (see the module docstring)."""
    uid = _process_uid(pid)
    start = proc_start_ticks(pid)
    if uid is None or start is None:
        return None
    path = published_layout_path(pid, uid)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not (info.st_mode & 0o170000 == 0o100000 and info.st_uid == uid and info.st_size <= _MAX_BYTES):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            record = json.loads(f.read())
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if not isinstance(record, dict) or record.get("pid") != pid or record.get("proc_start") != start:
        return None
    record.pop("proc_start", None)
    return record
