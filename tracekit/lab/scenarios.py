"""Lab scenarios: what the nested VM does inside an emulated machine, as data.

A :class:`Scenario` names the architecture, the nested VM's memory, KVM switches and steps, with the
exact counts expected and the probes and kernel features they need (docs/lab.md); standard library only
(runs in the guests).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tracekit.errors import UsageError
from tracekit.funcprobes.spec import FuncProbe
from tracekit.lab import kernel_features

__all__ = ["Scenario", "SCENARIOS", "VARIANT_SETTINGS", "LOCK_STANDIN", "get", "with_variant", "names", "smallest"]

MiB = 1 << 20
_BLOCK = 2 * MiB

#: Where a kernel has no ``lock:contention_*`` tracepoints (before 5.19), a scenario that records them gets this
#: probe instead: a spinlock wait is a call of the qspinlock slow path, from entry to return (spin mode only).
LOCK_STANDIN = FuncProbe("spin_wait", "queued_spin_lock_slowpath", "call", (("lock_addr", "lock"),),
                         returns_value=False, note="lock:contention_* stand-in before 5.19: spinlock waits only")


@dataclass(frozen=True)
class Scenario:
    name: str
    arch: str
    description: str
    memory_mib: int
    steps: tuple[tuple, ...]
    backing: str = "thp"
    eager_split_chunk: int = 0
    manual_protect: bool = False
    vcpus: int = 1
    eager_page_split: bool = True
    kernel_args: str = ""
    guest_ram_mib: int = 0
    tracepoints: tuple[tuple[str, str], ...] = ()
    workload_args: dict = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    expected_note: str = ""
    #: kernel features (:mod:`tracekit.lab.kernel_features`) without which the scenario does not apply
    needs: tuple[str, ...] = ()
    #: probes that must fire for the run to show anything (where no exact count does)
    evidence: tuple[str, ...] = ()
    #: capability -> the expected counts of a kernel without it (that kernel's semantics)
    expected_without: dict[str, dict[str, int]] = field(default_factory=dict)
    #: counts whose expected value the reference model computes for the kernel that ran
    model_counts: tuple[str, ...] = ()

    @property
    def workload_only(self) -> bool:
        """True when the scenario is just the dirty-log workload (it can run under ``tracekit record``)."""
        return [step[0] for step in self.steps] == ["workload"]

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "arch": self.arch,
            "description": self.description,
            "memory_mib": self.memory_mib,
            "backing": self.backing,
            "eager_split_chunk": self.eager_split_chunk,
            "manual_protect": self.manual_protect,
            "vcpus": self.vcpus,
            "eager_page_split": self.eager_page_split,
            "kernel_args": self.kernel_args,
            "guest_ram_mib": self.guest_ram_mib,
            "tracepoints": [f"{system}:{event}" for system, event in self.tracepoints],
            "workload_args": dict(self.workload_args),
            "steps": [list(s) for s in self.steps],
            "expected": dict(self.expected),
            "expected_note": self.expected_note,
            "needs": list(self.needs),
            "evidence": list(self.evidence),
            "expected_without": {k: dict(v) for k, v in self.expected_without.items()},
            "model_counts": list(self.model_counts),
        }


_FAULT_IN = (("prefault",), ("touch", _BLOCK))
#: The built-in dirty-log workload with one iteration: populate (faults the blocks in), enable dirty
#: logging, one pass + GET (+ CLEAR with manual protect), disable.
_WORKLOAD = (("workload", 1),)

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "eager-enable",
        "arm64",
        "256 MiB THP faulted in as 2 MiB blocks, eager split (2 MiB chunks) when dirty logging is enabled",
        256,
        _WORKLOAD,
        eager_split_chunk=_BLOCK,
        expected={"stage2_split": 128},
        model_counts=("split_walker",),
        expected_note="split_walker (model): 128 blocks x (1 block visit + 512 visits of the new level-3 table) = "
        "65,664 unpatched; 128 with the project's split-skip-level3 patch",
        needs=("eager-split",),
    ),
    Scenario(
        "eager-chunk-1g",
        "arm64",
        "eager-enable with a 1 GiB chunk: one split call covers the 256 MiB slot (the cache holds 513 tables)",
        256,
        _WORKLOAD,
        eager_split_chunk=1 << 30,
        expected={"stage2_split": 1},
        model_counts=("split_walker",),
        expected_note="one kvm_pgtable_stage2_split over [slot); the same 128 + 128 x 512 visits",
        needs=("eager-split",),
    ),
    Scenario(
        "eager-clear",
        "arm64",
        "256 MiB THP, manual protect + initially-set: the split moves into KVM_CLEAR_DIRTY_LOG",
        256,
        _WORKLOAD,
        eager_split_chunk=_BLOCK,
        manual_protect=True,
        expected={"stage2_split": 1024},
        model_counts=("split_walker",),
        expected_note="one split call per 64-page mask word: 256 MiB / 256 KiB = 1,024; visits as at enable",
        needs=("eager-split",),
    ),
    Scenario(
        "lazy",
        "arm64",
        "256 MiB THP, eager split off: blocks split on the first write fault after enabling dirty logging",
        256,
        _WORKLOAD,
        expected={"stage2_split": 0},
        evidence=("guest_abort", "stage2_map"),
    ),
    Scenario(
        "rebuild",
        "arm64",
        "256 MiB THP: eager split at enable, then logging off and every block faulted back in",
        256,
        _FAULT_IN + (("log", True), ("log", False), ("touch", _BLOCK)),
        eager_split_chunk=_BLOCK,
        expected={"stage2_split": 128},
        needs=("eager-split",),
        evidence=("map_walker",),
    ),
    Scenario(
        "resplit",
        "arm64",
        "256 MiB THP: eager split at enable, logging off, then on again: the second split walks memory already "
        "split to 4 KiB pages",
        256,
        _FAULT_IN + (("log", True), ("log", False), ("log", True)),
        eager_split_chunk=_BLOCK,
        expected={"stage2_split": 256},
        model_counts=("split_walker",),
        expected_note="two enables of 128 split calls; split_walker (model): 65,664 + 65,536 unpatched, "
        "128 + 0 with the split-skip-level3 patch",
        needs=("eager-split",),
    ),
    Scenario(
        "rebuild-shared",
        "arm64",
        "rebuild with 2 vCPUs writing every page of the slot in the same order: both fault on each block while "
        "the table that maps it is replaced by the block (faults in the invalid window)",
        256,
        _FAULT_IN + (("log", True), ("log", False), ("touch_together", 4096)),
        eager_split_chunk=_BLOCK,
        vcpus=2,
        expected={"stage2_split": 128},
        needs=("eager-split",),
        evidence=("map_walker",),
    ),
    Scenario(
        "contention",
        "arm64",
        "2 vCPUs write 256 MiB while the VMM clears the dirty log (mmu_lock read/write contention)",
        256,
        (("prefault",), ("touch_parallel", _BLOCK), ("log", True), ("clear_while_touching", 4096)),
        eager_split_chunk=_BLOCK,
        manual_protect=True,
        vcpus=2,
        tracepoints=(("lock", "contention_begin"), ("lock", "contention_end")),
        needs=("eager-split",),
        evidence=("guest_abort", "stage2_split"),
    ),
    Scenario(
        "hugetlb-2m",
        "arm64",
        "256 MiB of 2 MiB hugetlb pages, eager split at enable",
        256,
        _WORKLOAD,
        backing="hugetlb-2m",
        eager_split_chunk=_BLOCK,
        expected={"stage2_split": 128},
        model_counts=("split_walker",),
        needs=("eager-split",),
    ),
    Scenario(
        "overhead",
        "arm64",
        "eager-enable twice on fresh VMs: first without the per-entry visitor probes, then with them (step times)",
        256,
        _FAULT_IN + (("hot", False), ("log", True), ("new_vm",)) + _FAULT_IN + (("hot", True), ("log", True)),
        eager_split_chunk=_BLOCK,
        expected={"stage2_split": 256, "split_walker": 65_664},
        expected_note="two enables of 128 splits each; visitor events only from the second (128 + 65,536)",
        needs=("eager-split",),
    ),
    Scenario(
        "workload",
        "arm64",
        "the project's dirty-log workload (arm64 backend: EL1 guest, stage-1 MMU on) over 64 MiB THP, 2 MiB guest pages",
        64,
        _WORKLOAD,
        evidence=("guest_abort", "stage2_map"),
    ),
    Scenario(
        "tdp-eager",
        "x86",
        "64 MiB THP, TDP MMU, eager_page_split=Y: the huge pages split when dirty logging is enabled",
        64,
        _WORKLOAD,
        expected={"kvm_mmu_split_huge_page": 32},
        expected_note="64 MiB / 2 MiB = 32 level-2 SPTEs split once each",
        needs=("eager-page-split",),
    ),
    Scenario(
        "tdp-clear",
        "x86",
        "64 MiB THP, manual protect + initially-set: the split happens at the first KVM_CLEAR_DIRTY_LOG",
        64,
        _WORKLOAD,
        manual_protect=True,
        expected={"kvm_mmu_split_huge_page": 32},
        needs=("eager-page-split",),
    ),
    Scenario(
        "tdp-lazy",
        "x86",
        "64 MiB THP, eager_page_split=N: each huge page splits on its first write fault after enabling logging",
        64,
        _WORKLOAD,
        eager_page_split=False,
        expected={"kvm_mmu_split_huge_page": 32},
        expected_note="each of the 32 huge SPTEs splits on its first write fault (tdp_mmu_split_huge_page from the map)",
        evidence=("page_fault", "tdp_map"),
        expected_without={"split-on-fault": {"kvm_mmu_split_huge_page": 0}},
    ),
    Scenario(
        "nvhe",
        "arm64",
        "eager-enable with KVM in nVHE mode (kvm-arm.mode=nvhe): the host kernel still walks guest stage-2",
        256,
        _WORKLOAD,
        eager_split_chunk=_BLOCK,
        kernel_args="kvm-arm.mode=nvhe",
        expected={"stage2_split": 128},
        model_counts=("split_walker",),
        needs=("eager-split",),
    ),
    Scenario(
        "hugetlb-1g",
        "arm64",
        "one 1 GiB hugetlb page mapped as a level-1 block, eager split in 2 MiB chunks at enable; the pass only reads",
        1024,
        _WORKLOAD,
        backing="hugetlb-1g",
        eager_split_chunk=_BLOCK,
        kernel_args="hugepagesz=1G hugepages=1",
        guest_ram_mib=4096,
        workload_args={"write_percent": 0},
        expected={"stage2_split": 512},
        model_counts=("split_walker",),
        expected_note="512 chunks of 2 MiB; the first call turns the level-1 block into 512 level-2 blocks: "
        "1 + 512 block visits + 512 x 512 page visits = 262,657",
        needs=("eager-split",),
    ),
    Scenario(
        "tdp-hugetlb-2m",
        "x86",
        "64 MiB of 2 MiB hugetlb pages, eager_page_split=Y",
        64,
        _WORKLOAD,
        backing="hugetlb-2m",
        expected={"kvm_mmu_split_huge_page": 32},
        needs=("eager-page-split",),
    ),
    Scenario(
        "tdp-4k",
        "x86",
        "64 MiB without huge pages: nothing to split at enable, 16,384 4K SPTEs write-protected",
        64,
        _WORKLOAD,
        backing="4k",
        expected={"kvm_mmu_split_huge_page": 0},
        evidence=("page_fault", "tdp_map"),
    ),
    Scenario(
        "tdp-1g",
        "x86",
        "one 1 GiB hugetlb page, eager split at enable: 1 split at level 3 + 512 at level 2; the pass only reads",
        1024,
        _WORKLOAD,
        backing="hugetlb-1g",
        kernel_args="hugepagesz=1G hugepages=1",
        guest_ram_mib=4096,
        workload_args={"write_percent": 0},
        expected={"kvm_mmu_split_huge_page": 513},
        expected_note="1 GiB -> 512 x 2 MiB (one event at level 3), then each 2 MiB -> 4 KiB (512 events at level 2)",
        needs=("eager-page-split",),
    ),
    Scenario(
        "4k",
        "arm64",
        "256 MiB without THP (4 KiB pages): enabling dirty logging walks every level-3 PTE and splits nothing",
        256,
        _WORKLOAD,
        backing="4k",
        eager_split_chunk=_BLOCK,
        expected={"stage2_split": 128},
        model_counts=("split_walker",),
        expected_note="256 MiB / 2 MiB chunks = 128 split calls, each visiting 512 level-3 PTEs and splitting none",
        needs=("eager-split",),
    ),
)


def not_applicable(scenario: Scenario, version: tuple[int, int]) -> str | None:
    """Why a ``version`` kernel cannot run ``scenario`` (the kernel features it lacks), or None."""
    lacking = kernel_features.missing(version, scenario.arch, scenario.needs)
    return "; ".join(c.reason() for c in lacking) or None


def expected_on(scenario: Scenario, version: tuple[int, int]) -> dict[str, int]:
    """The scenario's exact expected counts on a ``version`` kernel (its ``expected_without`` where it lacks a
    capability that changes them)."""
    expected = dict(scenario.expected)
    for name, counts in scenario.expected_without.items():
        if not kernel_features.has(version, scenario.arch, name):
            expected.update(counts)
    return expected


def names(arch: str | None = None) -> list[str]:
    """Scenario names, optionally of one architecture."""
    return [s.name for s in SCENARIOS if arch is None or s.arch == arch]


def get(name: str, arch: str) -> Scenario:
    """The scenario ``name`` (``NAME`` or ``NAME@SETTING=VALUE,...``) of ``arch`` (UsageError naming the valid ones
    otherwise)."""
    base, _, variant = name.partition("@")
    for scenario in SCENARIOS:
        if scenario.name == base and scenario.arch == arch:
            return with_variant(scenario, variant) if variant else scenario
    raise UsageError(f"unknown {arch} lab scenario {base!r}; choose one of: {', '.join(names(arch))}")


def _yes_no(text: str) -> bool:
    value = {"y": True, "yes": True, "1": True, "true": True, "n": False, "no": False, "0": False, "false": False}
    if text.lower() not in value:
        raise ValueError("Y or N")
    return value[text.lower()]


def _vcpu_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise ValueError("a number from 1 to 64")
    return int(text)


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _chunk_size(text: str) -> int:
    unit = text[-1:].upper() if text[-1:].upper() in ("K", "M", "G") else ""
    number = text[:-1] if unit else text
    if not number.isdigit():
        raise ValueError("0 (off) or a size such as 2M or 1G")
    return int(number) * _SIZE_UNITS[unit]


def _size_text(size: int) -> str:
    unit = next((u for u in "GMK" if size and size % _SIZE_UNITS[u] == 0), "")
    return f"{size // _SIZE_UNITS[unit]}{unit}"


#: Settings a scenario variant may change: name -> (parser, canonical text of a value).
VARIANT_SETTINGS = {
    "vcpus": (_vcpu_count, str),
    "eager_page_split": (_yes_no, lambda on: "Y" if on else "N"),  # x86: the kvm module parameter
    "eager_split_chunk": (_chunk_size, _size_text),  # arm64: KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE, 0 = off
}


#: Exact counts (and those of a kernel without a capability) of a variant that changes a scenario's eager split
#: (``(scenario, setting, new value)``); a change not listed here drops the base scenario's counts, which assume it.
_SWITCHED_EXPECTED = {
    # the CLEAR write-protects the huge pages without splitting them, and no pass follows it
    ("tdp-clear", "eager_page_split", False): ({"kvm_mmu_split_huge_page": 0}, {}),
    # tdp-lazy's semantics: each huge page splits on its first write (6.2+), before that it is zapped
    ("tdp-eager", "eager_page_split", False): ({"kvm_mmu_split_huge_page": 32},
                                               {"split-on-fault": {"kvm_mmu_split_huge_page": 0}}),
    ("tdp-lazy", "eager_page_split", True): ({"kvm_mmu_split_huge_page": 32}, {}),
}


def _switched(scenario: Scenario, changes: dict) -> dict:
    """The expectation fields of a variant that changes the eager split (empty when it does not)."""
    for key, capability in (("eager_page_split", "eager-page-split"), ("eager_split_chunk", "eager-split")):
        if key in changes and changes[key] != getattr(scenario, key):
            expected, without = _SWITCHED_EXPECTED.get((scenario.name, key, changes[key]), ({}, {}))
            note = "" if expected else f"{key} changed: the base scenario's exact counts assume its own setting"
            # switched off, the eager split's own probes have nothing to show
            gone = kernel_features.get(capability).probes if not changes[key] else ()
            return {"expected": expected, "expected_without": without, "expected_note": note, "model_counts": (),
                    "evidence": tuple(p for p in scenario.evidence if p not in gone)}  # fmt: skip
    return {}


def with_variant(scenario: Scenario, variant: str) -> Scenario:
    """``scenario`` with the settings of ``variant`` (``vcpus=4,eager_page_split=N``), named ``NAME@variant``
    in canonical form (settings sorted, values as :data:`VARIANT_SETTINGS` prints them); an eager split switched
    on needs its capability, one switched off no longer does, and its exact counts are those of the switched
    semantics (:data:`_SWITCHED_EXPECTED`) or none."""
    changes = {}
    for item in filter(None, variant.split(",")):
        key, sep, text = item.partition("=")
        if not sep or key not in VARIANT_SETTINGS:
            raise UsageError(f"scenario setting {item!r} is not SETTING=VALUE with SETTING one of "
                             f"{', '.join(VARIANT_SETTINGS)}")  # fmt: skip
        try:
            changes[key] = VARIANT_SETTINGS[key][0](text)
        except ValueError as error:
            raise UsageError(f"scenario setting {key}={text!r}: expected {error}") from None
    if "eager_page_split" in changes and scenario.arch != "x86":
        raise UsageError("eager_page_split is an x86 kvm parameter; arm64 scenarios set eager_split_chunk")
    if "eager_split_chunk" in changes and scenario.arch != "arm64":
        raise UsageError("eager_split_chunk is an arm64 capability; x86 scenarios set eager_page_split")
    vcpus = changes.get("vcpus", scenario.vcpus)
    if (scenario.memory_mib // vcpus) % 2 or scenario.memory_mib % vcpus:
        raise UsageError(f"{scenario.name}'s {scenario.memory_mib} MiB do not split into {vcpus} shares of whole 2 MiB")
    canonical = ",".join(f"{key}={VARIANT_SETTINGS[key][1](changes[key])}" for key in sorted(changes))
    # the capability a switched-on eager split needs, or no longer needs when switched off
    needs = dict.fromkeys(scenario.needs)
    for key, capability in (("eager_split_chunk", "eager-split"), ("eager_page_split", "eager-page-split")):
        if key in changes:
            needs.pop(capability, None)
            if changes[key]:
                needs[capability] = None
    return replace(scenario, name=f"{scenario.name}@{canonical}" if canonical else scenario.name, needs=tuple(needs),
                   **changes, **_switched(scenario, changes))  # fmt: skip


def smallest(arch: str) -> Scenario:
    """The scenario the lab's own end-to-end test runs for ``arch``."""
    return get("eager-enable" if arch == "arm64" else "tdp-eager", arch)
