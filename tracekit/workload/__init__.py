"""The built-in KVM workload: a VM driven straight through ``/dev/kvm`` (no QEMU).

:func:`tracekit.workload.dirtylog.run_dirty_log` runs the equivalent of KVM selftests'
``dirty_log_perf_test`` and returns its phase times, per-iteration dirty-page counts and the layout
record (docs/workload.md). The package imports only the standard library:
``python3 -m tracekit.workload dirty-log`` needs nothing else (the typer front end is
:mod:`tracekit.workload.cli`).
"""

from __future__ import annotations

from tracekit.workload.dirtylog import DirtyLogMismatch, DirtyLogResult, IterationResult, run_dirty_log
from tracekit.workload.options import DirtyLogOptions

__all__ = ["run_dirty_log", "DirtyLogOptions", "DirtyLogResult", "IterationResult", "DirtyLogMismatch"]
