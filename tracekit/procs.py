"""Process helpers shared by the capture reader and the recorder.

Contract: :func:`pid_alive` says whether a process id exists on this host (a process we may not signal
counts as alive); it never raises.
"""

from __future__ import annotations

import os

__all__ = ["pid_alive"]


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
