"""libc's ``prctl``, looked up once here for the few process settings tracekit makes (name, parent-death signal)."""

from __future__ import annotations

import ctypes
from typing import Callable

__all__ = ["PR_SET_PDEATHSIG", "PR_SET_NAME", "libc_prctl"]

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def libc_prctl() -> Callable[..., int] | None:
    """libc's prctl, or None without one; look it up before a fork when the child is to call it."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
