"""`tracekit demo`: the embedded default job (README command 1)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests import livecheck
from tracekit.capture import open_capture
from tracekit.cli import app
from tracekit.demo import bundled_sample

runner = CliRunner()


def test_sample_fallback_analyses_the_bundled_capture():
    if bundled_sample() is None:
        pytest.fail("the source tree must ship the demo's sample capture")
    result = runner.invoke(app, ["demo", "--sample"])
    assert result.exit_code == 0, result.output
    assert "analysing the bundled sample" in result.stderr
    assert "model cross-check" in result.stdout and "KVM ioctl latency" in result.stdout


@pytest.mark.live
@pytest.mark.slow
def test_demo_records_the_workload_and_analyses_it(tmp_path):
    livecheck.need_kvm()
    livecheck.need_tracepoint("kvmmmu", "kvm_mmu_pagetable_walk")
    out = tmp_path / "demo.tkcap"
    result = runner.invoke(app, ["demo", "-o", str(out)])
    assert result.exit_code == 0, result.output
    cap = open_capture(out)
    assert cap.complete
    layout = cap.manifest["workload"]
    # Every guest walk of the test region: first touch + 3 dirty-logging write-fault passes (manual clear,
    # initially-set: iteration 1 takes no faults) -- the workload's own ground truth. Events the kernel
    # could not deliver (rare, on a loaded host) must be counted, never silently missing.
    expected = layout["ground_truth"]["test_region_write_faults"]
    lost_walks = sum(e["count"] for e in cap.manifest["lost"] if e["probe"].endswith("kvm_mmu_pagetable_walk"))
    assert cap.rows("walk") + lost_walks >= expected
    assert "Verdicts" in result.stdout and "model cross-check: match" in result.stdout
    # its Perfetto trace: the vCPU identified by its KVM_RUN fd has a named track with each KVM_RUN and walks
    from tests.analysis import pftrace

    trace = tmp_path / "demo.pftrace"
    assert runner.invoke(app, ["export", str(out), "--perfetto", str(trace)]).exit_code == 0
    summary = pftrace.summary(trace)
    tid = layout["vcpus"][0]["tid"]
    vcpu = next(path for path in summary["tracks"] if path.endswith(f"/ vCPU 0 (tid {tid})"))
    assert summary["tracks"][vcpu]["slices"]["KVM_RUN"] == layout["vcpus"][0]["kvm_run_count"]
    assert summary["tracks"][f"{vcpu} / guest walks"]["instants"]["guest walk"] == cap.rows("walk")
    assert summary["problems"] == []
