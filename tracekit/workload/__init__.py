"""The built-in KVM workload: a VM driven straight through ``/dev/kvm`` (no QEMU).

Contract
--------
``run_dirty_log(DirtyLogOptions(...), emit=print)`` runs the equivalent of KVM selftests'
``dirty_log_perf_test`` and returns a :class:`DirtyLogResult` (phase times in CLOCK_MONOTONIC
nanoseconds, per-iteration ``dirty_pages``/``expected_dirty_pages``, and ``layout``: the
JSON-serialisable record of memslots, guest page tables, vCPU threads ``tk-vcpu-N``, ioctls and
phases documented in docs/workload.md). Failures raise :class:`tracekit.errors.WorkloadError`;
``DirtyLogResult.check()`` raises :class:`DirtyLogMismatch` if the dirty log differed from the
pages the guest wrote. The package imports only the standard library (the typer front end is
``tracekit.workload.cli``; ``python3 -m tracekit.workload dirty-log`` needs nothing else).
"""

from __future__ import annotations

from tracekit.workload.dirtylog import DirtyLogMismatch, DirtyLogResult, IterationResult, run_dirty_log
from tracekit.workload.options import DirtyLogOptions

__all__ = ["run_dirty_log", "DirtyLogOptions", "DirtyLogResult", "IterationResult", "DirtyLogMismatch"]
