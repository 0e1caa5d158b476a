"""A recording into a file system that fills up, for real: a small tmpfs out of inodes or out of bytes.

The recorder must stop with one line, leave a capture whose manifest says ``aborted`` with the reason and
whose finished segments read back, and leave nothing else behind (workload, tracefs instance, layout dir).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.livecheck import need_root, skip_or_fail
from tests.recorder.test_live import _need
from tests.recorder.test_live_signals import Trial
from tracekit.capture import open_capture

pytestmark = [pytest.mark.live, pytest.mark.slow]


@pytest.fixture
def small_tmpfs(request):
    """Mount a tmpfs with the options of the test's parameter; unmount it afterwards."""
    need_root()
    mountpoint = Path(tempfile.mkdtemp(prefix="tk-full-"))
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", request.param, "tracekit-test", str(mountpoint)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        mountpoint.rmdir()
        skip_or_fail(f"cannot mount a tmpfs here ({run.stderr.strip()})")
    yield mountpoint
    subprocess.run(["umount", str(mountpoint)], check=True)
    mountpoint.rmdir()


@pytest.mark.parametrize("small_tmpfs", ["size=64m,nr_inodes=40", "size=1m"], indirect=True,
                         ids=["out-of-inodes", "out-of-bytes"])
def test_a_full_output_ends_aborted_with_its_segments_readable(small_tmpfs, tmp_path):
    _need("bcc")
    t = Trial(tmp_path, "bcc", output=small_tmpfs / "c.tkcap", options=("--segment-seconds", "0.2"))
    try:
        rc = t.finish()
        errors = [line for line in t.stderr().splitlines() if line.startswith("tracekit: error:")]
        assert rc == 1 and "Traceback" not in t.stderr(), t.stderr()
        assert errors and "No space left on device" in errors[-1], t.stderr()
        manifest = json.loads((t.output / "capture.json").read_text())
        assert manifest["status"] == "aborted" and "No space left" in manifest["status_reason"]
        cap = open_capture(t.output)
        assert cap.manifest["status"] == "aborted"
        for family in cap.families():
            assert len(cap.table(family)) == cap.rows(family)  # every finished segment reads back
        assert t.leftovers() == []
    finally:
        t.cleanup()
