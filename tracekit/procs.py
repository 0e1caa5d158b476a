"""Process helpers shared by the capture reader and the recorder.

Contract: :func:`pid_alive` says whether a process id exists on this host (a process we may not signal
counts as alive); :func:`proc_start_ticks` gives its start time (clock ticks since boot, None when it
is gone). Neither raises.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["pid_alive", "proc_start_ticks"]


def pid_alive(pid: object) -> bool:
    """True when ``pid`` is a positive int naming an existing process."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def proc_start_ticks(pid: int, proc: Path = Path("/proc")) -> int | None:
    """Field 22 (starttime) of ``/proc/PID/stat``: when ``pid`` started, in clock ticks since boot."""
    try:
        return int((proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
