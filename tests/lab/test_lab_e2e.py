"""The smallest scenario of each lab, end to end: fetch (cached), boot under QEMU, trace, decode, check.

Each run takes about 30 s on a 2-core host once the cache (~/.cache/tracekit/lab, or
$TRACEKIT_LAB_CACHE) holds the kernels and userlands; the first fetch downloads about 150 MB.
Live tests: they skip with the reason when QEMU or the route to the Debian mirror is missing,
and fail instead under TRACEKIT_REQUIRE_LIVE=1.
"""

from __future__ import annotations

import shutil

import pytest

from tests import livecheck
from tracekit.capture import open_capture
from tracekit.errors import LabError, MissingCapability
from tracekit.lab import fetch, scenarios
from tracekit.lab.runner import run_lab


def _run(arch: str, tmp_path):
    binary, package = fetch.QEMU_BINARY[arch], fetch.QEMU_PACKAGE[arch]
    if shutil.which(binary) is None:
        livecheck.skip_or_fail(f"{binary} is not installed (apt-get install {package})")
    try:
        return run_lab(arch, scenarios.smallest(arch).name, tmp_path / "lab.tkcap", timeout=300)
    except MissingCapability as error:
        livecheck.skip_or_fail(str(error))
    except LabError as error:
        if "cannot read the Debian" in str(error) or "apt-get download" in str(error):
            livecheck.skip_or_fail(f"no route to the Debian mirror for the lab's packages: {error}")
        raise


@pytest.mark.live
@pytest.mark.slow
def test_arm64_eager_split_at_enable(tmp_path):
    """128 kvm_pgtable_stage2_split calls and 65,664 stage2_split_walker visits, as measured on the seed's setup."""
    run = _run("arm64", tmp_path)
    assert run.ok, run.checks
    assert run.counts["stage2_split"] == 128 and run.counts["split_walker"] == 65_664
    assert run.kernel_histograms["split_walker"] == {"level:2 visit:1": 128, "level:3 visit:1": 65_536}
    cap = open_capture(run.output)
    assert cap.manifest["source"]["kind"] == "lab" and cap.rows("split") == 128
    assert run.console_log.exists() and "tk-done rc=0" in run.console_log.read_text()
    assert "user_mem_abort" in {f["probe"] for f in run.probes["failed"]}  # inlined in Debian's 6.12


@pytest.mark.live
@pytest.mark.slow
def test_x86_tdp_eager_split(tmp_path):
    """64 MiB of THP: 32 kvmmmu:kvm_mmu_split_huge_page events when dirty logging is enabled."""
    run = _run("x86", tmp_path)
    assert run.ok, run.checks
    assert run.counts["kvm_mmu_split_huge_page"] == 32 == run.counts["split_huge_page"]
    assert "tdp_map" in run.probes["attached"]


@pytest.mark.live
@pytest.mark.slow
def test_a_guest_that_does_not_finish_is_killed_and_its_console_kept(tmp_path):
    """A 3 s limit cannot fit a boot under TCG: QEMU is killed, the error names the kept console log."""
    if shutil.which(fetch.QEMU_BINARY["arm64"]) is None:
        livecheck.skip_or_fail("qemu-system-aarch64 is not installed (apt-get install qemu-system-arm)")
    if not any(fetch.cache_dir().glob("kernel-*-arm64/.complete")):
        livecheck.skip_or_fail("the arm64 lab cache is empty (tracekit lab fetch arm64)")
    with pytest.raises(LabError, match="did not finish within 3 s") as error:
        run_lab("arm64", "eager-enable", tmp_path / "hung.tkcap", timeout=3)
    assert str(tmp_path / "hung.tkcap.console.log") in str(error.value)
    assert (tmp_path / "hung.tkcap.console.log").exists()
    assert not (tmp_path / "hung.tkcap").exists()
