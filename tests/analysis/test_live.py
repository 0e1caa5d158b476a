"""End to end on the live kernel: record the built-in workload, then every analysis must agree with it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests import livecheck
from tracekit.analysis.analyze import analyze_capture
from tracekit.capture import open_capture


@pytest.mark.live
@pytest.mark.slow
def test_record_workload_and_crosscheck(tmp_path):
    """8 MiB, 2 MiB guest pages, 2 iterations: 2,048 first touches + 2,048 write faults of the second pass,
    each one 4>3>2 walk matching the model, on the workload's own phases."""
    livecheck.need_kvm()
    livecheck.need_tracepoint("kvmmmu", "kvm_mmu_pagetable_walk")
    livecheck.need_bcc()
    out = tmp_path / "live.tkcap"
    tracekit = [sys.executable, "-m", "tracekit.cli"]
    run = subprocess.run([*tracekit, "record", "-q", "-o", str(out), "--probes", "walk,ioctl,lock", "--",
                          *tracekit, "workload", "dirty-log", "-b", "8M", "-i", "2"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = analyze_capture(open_capture(out))
    if result.info["lost_events"]:
        pytest.fail(f"the recorder lost {result.info['lost_events']} events on an 8 MiB run")
    walks = result.walk_frame()
    data = walks[walks["level_path"] == 432]
    assert len(data) == 2 * 2048
    assert data.groupby("phase").size().to_dict() == {"populate": 2048, "dirty-memory#2": 2048}
    assert result.verdicts["crosscheck"]["match_rate"] == 1.0
    assert {"get-dirty-log#1", "clear-dirty-log#2"} <= set(result.tables["phases"]["phase"])
