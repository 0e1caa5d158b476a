"""Gate of the workload's live tests: /dev/kvm usable and a workload backend for this architecture."""

from __future__ import annotations

from tests.livecheck import need_kvm, skip_or_fail
from tracekit.errors import WorkloadError
from tracekit.workload.dirtylog import backend_for


def need_workload() -> None:
    """Skip (or fail under TRACEKIT_REQUIRE_LIVE=1) unless the built-in workload can run here."""
    need_kvm()
    try:
        backend = backend_for()
    except WorkloadError as error:
        skip_or_fail(str(error))
        return
    if backend.arch != "x86_64":  # the arm64 backend runs in the arm64 lab (tests/lab)
        skip_or_fail(f"these live tests check the x86-64 backend; this host is {backend.arch}")


def need_log_mode(mode: str) -> None:
    """Skip (or fail) unless this host's KVM offers the dirty-log ``mode`` (clear, get or ring)."""
    from tracekit.workload import uapi
    from tracekit.workload.kvm import Kvm

    need_workload()
    cap = {"clear": uapi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, "ring": uapi.KVM_CAP_DIRTY_LOG_RING}.get(mode)
    if cap is None:
        return
    with Kvm() as kvm:
        offered = kvm.check_extension(cap)
    if not offered:
        skip_or_fail(f"this host's KVM does not offer the {mode} dirty-log mode (capability {cap})")
