"""The kernel feature table and what it does to a scenario's checks, without booting: which scenarios a
kernel cannot run, that kernel's expected counts, probes it cannot have, and runs that must not pass."""

from __future__ import annotations

import pytest

from tracekit.lab import kernel_features, results, scenarios
from tracekit.lab.runner import scenario_checks


@pytest.mark.parametrize(
    "arch, name, version, present",
    [("arm64", "eager-split", (6, 1), False), ("arm64", "eager-split", (6, 12), True),
     ("arm64", "eager-split", (5, 10), False), ("x86", "eager-split", (5, 10), True),  # another architecture's
     ("x86", "eager-page-split", (5, 10), False), ("x86", "eager-page-split", (6, 1), True),
     ("x86", "split-on-fault", (6, 1), False), ("x86", "split-on-fault", (6, 12), True),
     ("arm64", "lock-contention-tracepoints", (5, 10), False), ("x86", "lock-contention-tracepoints", (6, 1), True),
     ("arm64", "kprobe-btf-args", (6, 12), True), ("x86", "kprobe-btf-args", (6, 1), False),
     ("arm64", "kprobe-btf-args", (7, 3), True), ("arm64", "eager-split", (0, 0), True)],  # unknown version
)  # fmt: skip
def test_capability_table(arch, name, version, present):
    assert kernel_features.has(version, arch, name) is present


def test_every_scenario_names_known_capabilities():
    names = {c.name for c in kernel_features.FEATURES}
    for scenario in scenarios.SCENARIOS:
        assert set(scenario.needs) <= names and set(scenario.expected_without) <= names, scenario.name
        assert scenario.expected or scenario.evidence, f"{scenario.name} would pass on probes that saw nothing"


def test_which_scenarios_each_debian_kernel_runs():
    runs = {version: sorted(s.name for s in scenarios.SCENARIOS if s.arch == "arm64"
                            and scenarios.not_applicable(s, version) is None)
            for version in ((5, 10), (6, 1), (6, 12))}  # fmt: skip
    assert runs[(5, 10)] == runs[(6, 1)] == ["lazy", "workload"]
    assert len(runs[(6, 12)]) == len(scenarios.names("arm64"))
    reason = scenarios.not_applicable(scenarios.get("contention", "arm64"), (5, 10))
    assert "eager page splitting" in reason and "lock:contention" not in reason  # 5.10: the qspinlock stand-in
    assert scenarios.not_applicable(scenarios.get("contention@eager_split_chunk=0", "arm64"), (5, 10)) is None
    x86 = sorted(s.name for s in scenarios.SCENARIOS if s.arch == "x86" and not scenarios.not_applicable(s, (5, 10)))
    assert x86 == ["tdp-4k", "tdp-lazy"]


def test_tdp_lazy_expects_zaps_not_splits_before_6_2():
    lazy = scenarios.get("tdp-lazy", "x86")
    assert scenarios.expected_on(lazy, (6, 12)) == {"kvm_mmu_split_huge_page": 32}
    assert scenarios.expected_on(lazy, (6, 1)) == {"kvm_mmu_split_huge_page": 0}


def _probes(failed=(), tracepoints=None):
    return {"failed": [{"probe": p, "reason": r} for p, r in failed], "tracepoints": tracepoints}


def test_lazy_on_6_1_with_no_probe_attached_fails_with_the_guests_reasons():
    """The run the issue saw pass: lazy on 6.1, every BTF-argument kprobe refused, an empty capture."""
    refused = "Invalid fetch argument (kprobe_events: stage2_map)"
    checks = scenario_checks(scenarios.get("lazy", "arm64"), "6.1.0-50-cloud-arm64", {},
                             _probes([("stage2_split", "absent"), ("guest_abort", refused), ("stage2_map", refused)]))
    by_name = {c["count"]: c for c in checks}
    assert by_name["stage2_split"]["applicable"] is False
    assert by_name["stage2_split"]["reason"].startswith("not applicable on 6.1.0-50-cloud-arm64: arm64 eager page")
    assert not by_name["stage2_map"]["ok"] and by_name["stage2_map"]["reason"] == (
        f"stage2_map not attached: {refused} (kprobe event arguments by BTF name (PROBE_EVENTS_BTF_ARGS) arrived in 6.8)")
    assert not all(c["ok"] for c in checks)


def test_evidence_that_never_fired_fails_and_counts_that_match_pass():
    lazy = scenarios.get("lazy", "arm64")
    quiet = scenario_checks(lazy, "6.12.117+deb13-cloud-arm64", {"stage2_split": 0, "guest_abort": 5}, _probes())
    assert [c["reason"] for c in quiet if not c["ok"]] == ["stage2_map attached but never fired"]
    good = scenario_checks(lazy, "6.12.117+deb13-cloud-arm64", {"guest_abort": 5, "stage2_map": 65_536}, _probes())
    assert all(c["ok"] and c["applicable"] for c in good)


def test_a_missing_split_tracepoint_is_not_applicable_before_5_17_and_a_failure_after():
    lazy = scenarios.get("tdp-lazy", "x86")
    counts = {"page_fault": 9, "tdp_map": 9}
    old = scenario_checks(lazy, "5.10.0-32-cloud-amd64", counts, _probes(tracepoints=[]))
    assert [c["count"] for c in old if not c["applicable"]] == ["kvm_mmu_split_huge_page"] and all(c["ok"] for c in old)
    new = scenario_checks(lazy, "6.12.117+deb13-cloud-amd64", counts, _probes(tracepoints=[]))
    bad = [c for c in new if not c["ok"]]
    assert bad[0]["reason"] == "kvm_mmu_split_huge_page not attached: tracepoint kvmmmu:kvm_mmu_split_huge_page is not in this kernel"


def test_the_guests_own_reason_from_its_console():
    console = ("[    1.2] virtio_pci: probe\r\ntk-guest-error: insmod kvm failed: Unknown symbol\r\n"
               "tk-guest-error: no virtio port named tracekit.out\r\ntk-done rc=3\r\n")
    assert results.guest_reason(console) == (": guest says insmod kvm failed: Unknown symbol / "
                                             "no virtio port named tracekit.out")
    assert results.guest_reason("[ 0.9] Kernel panic - not syncing: VFS: Unable to mount root fs\n") == (
        ": guest says Kernel panic - not syncing: VFS: Unable to mount root fs")
    assert results.guest_reason("tk-booted arch=arm64\n") == ""
    said = "RuntimeError: tracekit record exited with 1: BPF program failed to load"
    assert results.guest_reason(f"tk-guest-error: {said}\n", known=said) == ""  # not said twice
