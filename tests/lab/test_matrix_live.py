"""``tracekit lab matrix`` for real: two Debian kernels, one small x86 scenario, the table, then a resume.

Live and slow (two emulated boots: 195 s measured with a warm cache on the shared 2-core host): skips with the reason when QEMU
or the route to Debian's mirror is missing, and fails instead under TRACEKIT_REQUIRE_LIVE=1.
"""

from __future__ import annotations

import pytest

from tests import livecheck
from tracekit.lab import matrix

KERNELS = ["debian:bookworm", "debian:trixie"]


def _lab(arch, scenario, output, **options):
    return livecheck.run_lab_or_skip(arch, scenario, output, **options)


def _refuse(*args, **options):
    raise AssertionError("a resumed matrix booted a lab again")


@pytest.mark.live
@pytest.mark.slow
def test_two_kernels_eager_split_then_resume(tmp_path):
    """x86 ``tdp-eager`` on bookworm's 6.1 and trixie's 6.12: both split the 32 huge pages of the slot at
    dirty-log enable (eager splitting is 5.18+), the table says so per kernel, and a second invocation reuses
    both captures."""
    cells = matrix.plan("x86", KERNELS, ["tdp-eager"], tmp_path)
    outcomes = matrix.run_matrix("x86", cells, timeout=400, run_lab=_lab)
    assert [o["status"] for o in outcomes] == ["ok", "ok"], outcomes
    (table,) = matrix.build_tables("x86", cells, outcomes)
    rows = {row["label"]: row["values"] for row in table.rows}
    releases = rows["kernel"]
    assert releases[0].startswith("6.1.") and releases[1].startswith("6.12."), releases
    assert rows["enable_dirty_logging: `kvmmmu:kvm_mmu_split_huge_page`"] == [32, 32]
    assert rows["check: kvm_mmu_split_huge_page (exact)"] == ["32 (ok: expected 32)"] * 2
    # 6.1 has no kprobe arguments by BTF name (6.8+): its probes read them by register and BTF offset
    assert rows["probe arguments"][0].startswith("no-args") and "register" in rows["probe arguments"][0]
    assert all(matrix.EMULATED in row["label"] for row in table.rows if row["kind"] == "emulated")
    again = matrix.run_matrix("x86", cells, run_lab=_refuse)
    assert again == outcomes
