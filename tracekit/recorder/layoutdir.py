"""The private temporary directory a recorded built-in workload writes its layout record into.

Contract: :func:`make_layout_dir` creates ``<tmp>/tracekit-layout-<pid>-<random>`` (mode 0700, ``<tmp>``
from :func:`tempfile.gettempdir`) for the recorder ``pid`` (this process). A recorder killed with
SIGKILL cannot remove its directory; :func:`reclaim_stale_layout_dirs`, run at every recorder start
like the reclaim of stale tracefs instances, removes the directories whose recorder pid no longer
runs, only plain directories owned by this user (never through a symlink), and returns their names.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from tracekit.procs import pid_alive

__all__ = ["LAYOUT_PREFIX", "make_layout_dir", "reclaim_stale_layout_dirs"]

LAYOUT_PREFIX = "tracekit-layout-"
_LAYOUT_RE = re.compile(rf"^{LAYOUT_PREFIX}(\d+)-[A-Za-z0-9_]+$")


def make_layout_dir() -> str:
    """A new private directory named after this recorder's pid."""
    return tempfile.mkdtemp(prefix=f"{LAYOUT_PREFIX}{os.getpid()}-")


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
