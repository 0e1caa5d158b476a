"""Fixtures for recording the kernel's own KVM selftests with ``tracekit record --``.

- ``kvm_selftests`` (session): the directory of ``dirty_log_perf_test``, ``dirty_log_test``,
  ``kvm_page_table_test`` and ``memslot_perf_test``, built once from Debian's ``linux-source`` into the lab
  cache (:mod:`tracekit.lab.selftests`; ``TRACEKIT_LAB_CACHE`` moves it). Where the source cannot be fetched
  or built here, every test using it skips with the reason (fails under ``TRACEKIT_REQUIRE_LIVE=1``).
- ``record_selftest(name, *args, probes=..., extra=(), may_fail=False)`` records one selftest under
  ``tracekit record -q -o CAPTURE --`` (after checking KVM, tracefs, the walk tracepoint and bcc) and returns
  a :class:`Recorded`: the capture path, the selftest's stdout as the user saw it, and the recorder's stderr.

Guest code at CPL0 is emulated on hosts like the development machine (about 1 M instructions/s), so keep
guest memory at 16-64 MiB.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import livecheck


@dataclass
class Recorded:
    capture: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def kvm_selftests() -> Path:
    from tracekit.errors import LabError, MissingCapability
    from tracekit.lab.fetch import cache_dir
    from tracekit.lab.selftests import build_kvm_selftests

    try:
        return build_kvm_selftests(cache_dir())
    except MissingCapability as error:
        livecheck.skip_or_fail(f"cannot build the KVM selftests: {error}")
    except LabError as error:
        if "cannot read the Debian" in str(error) or "apt-get download" in str(error):
            livecheck.skip_or_fail(f"no route to the Debian mirror for linux-source: {error}")
        raise


@pytest.fixture
def record_selftest(kvm_selftests, tmp_path):
    livecheck.need_kvm()
    livecheck.need_tracepoint("kvmmmu", "kvm_mmu_pagetable_walk")
    livecheck.need_bcc()
    counter = iter(range(100))

    def run(name: str, *args: str, probes: str = "walk,ioctl,lock,mmu", extra: tuple[str, ...] = (),
            timeout: float = 300, may_fail: bool = False) -> Recorded:
        """Record selftest ``name``; the recorder must succeed, and so must the selftest unless
        ``may_fail`` (then its failure is only the status the recorder passes on)."""
        out = tmp_path / f"{name}-{next(counter)}.tkcap"
        argv = [sys.executable, "-m", "tracekit.cli", "record", "-q", "-o", str(out), "--probes", probes, *extra,
                "--", str(kvm_selftests / name), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        passed_on = may_fail and done.returncode != 0 and "tracekit: error: the traced command " in done.stderr
        assert done.returncode == 0 or passed_on, f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}"
        return Recorded(out, done.stdout, done.stderr)

    return run
