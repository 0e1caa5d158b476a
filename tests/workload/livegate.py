"""Gate of the workload's live tests: /dev/kvm usable and a workload backend for this architecture."""

from __future__ import annotations

from tests.livecheck import need_kvm, skip_or_fail
from tracekit.errors import WorkloadError
from tracekit.workload.backend import backend_for


def need_workload() -> None:
    """Skip (or fail under TRACEKIT_REQUIRE_LIVE=1) unless the built-in workload can run here."""
    need_kvm()
    try:
        backend_for()
    except WorkloadError as error:
        skip_or_fail(str(error))
