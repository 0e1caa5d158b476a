"""The kernel feature table: which mainline version brought each KVM or tracing feature a lab scenario needs.

Not the host's capability report (:mod:`tracekit.capabilities`): :func:`missing` lists the features a
kernel version lacks, :func:`absent_probes` the probes that cannot exist there (reported "not applicable").
Standard library only (runs in the guests).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KernelFeature", "FEATURES", "get", "has", "missing", "absent_probes", "describe"]


@dataclass(frozen=True)
class KernelFeature:
    name: str
    arch: str | None  # None: both lab architectures
    since: tuple[int, int]
    what: str
    probes: tuple[str, ...] = ()  # probe and tracepoint names that do not exist before ``since``

    def reason(self) -> str:
        return f"{self.what} arrived in {self.since[0]}.{self.since[1]}"


FEATURES: tuple[KernelFeature, ...] = (
    KernelFeature("eager-split", "arm64", (6, 5),
               "arm64 eager page splitting (KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE, stage2_split_walker)",
               ("split_walker", "stage2_split", "split_huge_pages")),
    KernelFeature("mmu-rwlock", "arm64", (5, 18),
               "the arm64 mmu_lock as an rwlock with a read-locked permission-relax fast path"),
    KernelFeature("eager-page-split", "x86", (5, 17),
               "x86 eager page splitting (kvm.eager_page_split, the kvmmmu:kvm_mmu_split_huge_page tracepoint)",
               ("slot_try_split", "mmu_try_split", "tdp_try_split", "split_root", "split_huge_page",
                "kvm_mmu_split_huge_page")),
    KernelFeature("split-on-fault", "x86", (6, 2),
               "TDP MMU split of a huge page on a write fault (before it, the huge SPTE is zapped and refaulted)"),
    KernelFeature("recover-huge-pages", "x86", (6, 13),
               "in-place huge page recovery at dirty-log disable (kvm_tdp_mmu_recover_huge_pages)",
               ("recover_huge_pages",)),
    KernelFeature("lock-contention-tracepoints", None, (5, 19), "the lock:contention_begin/end tracepoints",
               ("contention_begin", "contention_end")),
    KernelFeature("kprobe-btf-args", None, (6, 8), "kprobe event arguments by BTF name (PROBE_EVENTS_BTF_ARGS)"),
)  # fmt: skip


def get(name: str) -> KernelFeature:
    for capability in FEATURES:
        if capability.name == name:
            return capability
    raise KeyError(name)


def has(version: tuple[int, int], arch: str, name: str) -> bool:
    """True when a ``version`` kernel of lab ``arch`` has capability ``name`` (always for another architecture's)."""
    capability = get(name)
    return capability.arch not in (None, arch) or version >= capability.since or version == (0, 0)


def missing(version: tuple[int, int], arch: str, names) -> list[KernelFeature]:
    """The capabilities of ``names`` a ``version`` kernel lacks ((0, 0): unknown version, none missing)."""
    return [get(name) for name in names if not has(version, arch, name)]


def absent_probes(version: tuple[int, int], arch: str) -> dict[str, KernelFeature]:
    """Probe or tracepoint name -> the capability whose absence means it cannot exist on that kernel."""
    return {probe: c for c in FEATURES if not has(version, arch, c.name) for probe in c.probes}


def describe(version: tuple[int, int], arch: str) -> list[dict]:
    """The table for one kernel: ``[{"name", "since", "what", "present"}]``."""
    return [{"name": c.name, "since": f"{c.since[0]}.{c.since[1]}", "what": c.what, "present": has(version, arch, c.name)}
            for c in FEATURES if c.arch in (None, arch)]  # fmt: skip
