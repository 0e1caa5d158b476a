"""Debian kernels other than the default, end to end: fetched by name from the host's mirror, booted, checked.

bookworm's 6.1 on x86 (virtio and KVM loaded from the kernel's own package; the split tracepoint gives
the 32 eager splits while its kprobes cannot take BTF arguments), trixie-backports' 7.3 on arm64 (the
7.x split packaging: linux-binary, linux-modules, linux-base), and a scenario 6.1 cannot run, refused
before booting. About 2.5 minutes with a warm cache; the first fetch downloads about 150 MB. Live tests:
they skip with the reason when QEMU or the route to the Debian mirror is missing, and fail instead under
TRACEKIT_REQUIRE_LIVE=1.
"""

from __future__ import annotations

import pytest

from tests import livecheck
from tracekit.capture import open_capture
from tracekit.errors import NotApplicable

MiB = 1 << 20


@pytest.mark.live
@pytest.mark.slow
def test_x86_bookworm_6_1_eager_split_from_the_tracepoint(tmp_path):
    run = livecheck.run_lab_or_skip("x86", "tdp-eager", tmp_path / "lab.tkcap", kernel="debian:bookworm", timeout=400)
    assert run.kernel_release.startswith("6.1.") and run.kernel["spec"] == "debian:bookworm"
    assert run.kernel["modules"][-3:] == ["irqbypass", "kvm", "kvm_amd"] and "virtio_console" in run.kernel["modules"]
    assert run.ok, run.checks
    steps = {step["op"]: step["counts"] for step in run.steps}
    assert steps["enable_dirty_logging"]["kvm_mmu_split_huge_page"] == 64 * MiB // (2 * MiB)
    manifest = open_capture(run.output).manifest
    assert manifest["lab_kernel"]["release"] == run.kernel_release and manifest["kvm_params"]["kvm.tdp_mmu"] == "Y"


@pytest.mark.live
@pytest.mark.slow
def test_arm64_trixie_backports_7_3_from_its_split_packages(tmp_path):
    run = livecheck.run_lab_or_skip("arm64", "eager-enable", tmp_path / "lab.tkcap", kernel="debian:trixie-backports",
                                    timeout=400)  # fmt: skip
    assert run.kernel_release.startswith("7.3.") and "linux-binary-7.3" in run.kernel["source"]
    assert run.ok, run.checks
    enable = {step["op"]: step["counts"] for step in run.steps}["enable_dirty_logging"]
    assert (enable["stage2_split"], enable["split_walker"]) == (128, 128 * (1 + 512))


@pytest.mark.live
def test_a_scenario_the_kernel_predates_is_refused_before_booting(tmp_path):
    with pytest.raises(NotApplicable, match=r"eager-enable is not applicable on 6\.1\..*eager page splitting .* 6\.5"):
        livecheck.run_lab_or_skip("arm64", "eager-enable", tmp_path / "lab.tkcap", kernel="debian:bookworm")
    assert not (tmp_path / "lab.tkcap.console.log").exists()
