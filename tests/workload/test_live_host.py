"""Live tests that borrow host resources: hugetlb pages and a tracefs instance (both returned in finally).

- hugetlb backing: reserves 2 MiB pages through /proc/sys/vm/nr_hugepages for one run, then
  restores the previous value (the workload itself never reserves);
- ground truth: under shadow paging every write fault of the guest is one
  ``kvmmmu:kvm_mmu_pagetable_walk``; counted in a throwaway tracefs instance, the events of the
  vCPU threads whose address lies in the test region must equal
  ``DirtyLogResult.expected_write_faults``. For the default layout (64 MiB, 16,384 pages, manual
  clear with initially-set, 4 iterations) that is 16,384 (populate) + 0 (iteration 1: nothing is
  write-protected yet) + 3 x 16,384 = 65,536.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.livecheck import TRACEFS, need_root, need_tracepoint, skip_or_fail
from tests.workload.livegate import need_log_mode, need_workload
from tracekit.workload.backing import hugetlb_pool
from tracekit.workload.dirtylog import TEST_GVA, run_dirty_log
from tracekit.workload.options import DirtyLogOptions

pytestmark = pytest.mark.live

MIB = 1 << 20
NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
WALK = re.compile(r"^\s*.+?-(\d+)\s+\[\d+\].*?kvm_mmu_pagetable_walk: addr ([0-9a-f]+) pferr")


def test_hugetlb_2mb_backing():
    need_workload()
    need_root()
    pages = 32  # 64 MiB
    previous = int(NR_HUGEPAGES.read_text())
    try:
        NR_HUGEPAGES.write_text(str(previous + pages))
        if hugetlb_pool(2 * MIB)[1] < pages:
            skip_or_fail(f"could not reserve {pages} free 2 MiB hugetlb pages (memory fragmented?)")
        result = run_dirty_log(DirtyLogOptions(backing="anonymous_hugetlb_2mb", bytes_per_vcpu=64 * MIB, iterations=2))
        result.check()
        assert [it.dirty_pages for it in result.iterations] == [16384, 16384]
        assert result.layout["memslots"][1]["backing"] == "anonymous_hugetlb_2mb"
    finally:
        NR_HUGEPAGES.write_text(str(previous))
    assert int(NR_HUGEPAGES.read_text()) == previous


def _shadow_paging() -> bool:
    """True when KVM walks guest page tables in software (shadow MMU): PVM, or EPT/NPT off."""
    params = Path("/sys/module")
    if (params / "kvm_pvm").is_dir():
        return True
    for module, name in (("kvm_intel", "ept"), ("kvm_amd", "npt")):
        path = params / module / "parameters" / name
        if path.exists():
            return path.read_text().strip() in ("N", "0")
    return False


@pytest.mark.slow  # runs the workload and parses the text trace of every walk (about 7 s)
@pytest.mark.parametrize(
    "changes",
    [{}, {"vcpus": 2, "bytes_per_vcpu": 16 * MIB, "random_order": True, "write_percent": 30, "log_mode": "get"}],
    ids=["default", "2vcpu-random-30pct-get"],
)
def test_guest_writes_produce_the_predicted_walks(changes):
    need_workload()
    need_tracepoint("kvmmmu", "kvm_mmu_pagetable_walk")
    if not changes:
        need_log_mode("clear")  # the default layout's arithmetic assumes manual clear with initially-set
    if not _shadow_paging():
        skip_or_fail("KVM uses TDP (EPT/NPT) here: guest page-table walks are done by hardware, not traced")
    instance = TRACEFS / "instances" / f"tracekit-workload-test-{os.getpid()}"
    instance.mkdir()
    try:
        (instance / "buffer_size_kb").write_text("8192")
        (instance / "events" / "kvmmmu" / "kvm_mmu_pagetable_walk" / "enable").write_text("1")
        result = run_dirty_log(DirtyLogOptions(**changes))
        (instance / "tracing_on").write_text("0")
        result.check()
        tids = {vcpu["tid"] for vcpu in result.layout["vcpus"]}
        end = TEST_GVA + result.options.total_bytes
        counts: Counter[str] = Counter()
        with open(instance / "trace") as trace:
            for line in trace:
                match = WALK.match(line)
                if match and int(match.group(1)) in tids:
                    counts["test" if TEST_GVA <= int(match.group(2), 16) < end else "system"] += 1
        for stats in (instance / "per_cpu").glob("cpu*/stats"):
            text = stats.read_text()
            assert "overrun: 0" in text, f"{stats}: events were lost, the count would be wrong\n{text}"
    finally:
        (instance / "events" / "kvmmmu" / "kvm_mmu_pagetable_walk" / "enable").write_text("0")
        instance.rmdir()
    if not changes:
        assert result.expected_write_faults == 16384 + 0 + 3 * 16384
    assert counts["test"] == result.expected_write_faults == result.layout["ground_truth"]["test_region_write_faults"]
    # Outside the region: first touches of the code and plan pages, plus the emulator's walks for each 'out'.
    assert counts["system"] >= 1 + result.options.vcpus * (result.options.bytes_per_vcpu // 4096 * 8 // 4096)
