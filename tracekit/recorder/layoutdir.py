"""The private directory a command started by the recorder leaves the workload's layout record in.

:func:`make_layout_dir` creates ``<tmp>/tracekit-layout-<pid>-<random>`` (mode 0700) for this recorder;
its path reaches the command in ``$TRACEKIT_LAYOUT_DIR`` (:mod:`tracekit.workload.published`), and
:func:`read_layout_record` reads what the workload wrote there. A recorder killed with SIGKILL cannot
remove its directory: :func:`reclaim_stale_layout_dirs`, run at every recorder start, removes the
plain directories of this user whose recorder pid no longer runs and returns their names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from tracekit.procs import pid_alive

__all__ = ["LAYOUT_PREFIX", "make_layout_dir", "read_layout_record", "reclaim_stale_layout_dirs"]

LAYOUT_PREFIX = "tracekit-layout-"
_LAYOUT_RE = re.compile(rf"^{LAYOUT_PREFIX}(\d+)-[A-Za-z0-9_]+$")
_RECORD_RE = re.compile(r"^workload-\d+\.json$")


def make_layout_dir() -> str:
    """A new private directory named after this recorder's pid."""
    return tempfile.mkdtemp(prefix=f"{LAYOUT_PREFIX}{os.getpid()}-")


def read_layout_record(directory: str, pid: int) -> dict | None:
    """The record ``workload-PID.json`` of the started command ``pid``, else the only record in
    ``directory`` (the workload ran under a shell); None when there is none, several or it is unreadable."""
    try:
        names = sorted(n for n in os.listdir(directory) if _RECORD_RE.match(n))
    except OSError:
        return None
    own = f"workload-{pid}.json"
    name = own if own in names else names[0] if len(names) == 1 else None
    if name is None:
        return None
    path = Path(directory) / name
    try:
        if path.is_symlink() or not path.is_file():
            return None
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def reclaim_stale_layout_dirs(directory: str | os.PathLike | None = None) -> list[str]:
    """Remove the layout directories of recorders that no longer run (see the module docstring)."""
    root = Path(directory if directory is not None else tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        match = _LAYOUT_RE.match(entry.name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.lexists(entry.path):
            removed.append(entry.name)
    return sorted(removed)
