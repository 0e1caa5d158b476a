"""The ``tdp`` function-probe family: x86 KVM TDP-MMU faults, eager splits and dirty-log clearing.

:data:`TDP_PROBES` lists the probed functions of ``arch/x86/kvm/mmu/{mmu.c,tdp_mmu.c,tdp_iter.c}``
and the vendor exit handlers with the fields to fetch (meanings and units in docs/probes/tdp.md;
``tdp_iter_next`` steps are attributed to the innermost open ``split_root`` or ``wrprot_slot``
walk); :data:`TRACEPOINT_SPLITS` the tracepoint recorded next to them. Standard library only (it
runs inside the x86 lab).
"""

from __future__ import annotations

from tracekit.funcprobes.spec import FuncProbe

__all__ = ["TDP_PROBES", "TRACEPOINT_SPLITS"]

#: Tracepoints (system, event) recorded with this family: one event per huge page split.
TRACEPOINT_SPLITS = (("kvmmmu", "kvm_mmu_split_huge_page"),)

_EAGER = "v5.17 (eager page splitting)"
_INLINED_CALLER = "global, but its only caller inlines it in some builds: present in kallsyms and never fires there"

TDP_PROBES: tuple[FuncProbe, ...] = (
    FuncProbe("page_fault", "kvm_mmu_page_fault", "fault", (("gpa", "cr2_or_gpa"), ("error_code", "error_code"))),
    FuncProbe("npf", "npf_interception", "fault", (("vcpu_id", "vcpu->vcpu_id"),), optional=True,
              note="kvm-amd only (SVM hosts)"),  # fmt: skip
    FuncProbe("ept_violation", "handle_ept_violation", "fault", (("vcpu_id", "vcpu->vcpu_id"),), optional=True,
              note="kvm-intel only (VMX hosts)"),  # fmt: skip
    FuncProbe("tdp_map", "kvm_tdp_mmu_map", "call", (("gfn", "fault->gfn"), ("goal_level", "fault->goal_level"))),
    FuncProbe("fast_page_fault", "fast_page_fault", "call", (), optional=True),
    FuncProbe("slot_try_split", "kvm_mmu_slot_try_split_huge_pages", "call", (("target_level", "target_level"),),
              returns_value=False, since=_EAGER),  # fmt: skip
    FuncProbe("mmu_try_split", "kvm_mmu_try_split_huge_pages", "call",
              (("start", "start"), ("end", "end"), ("target_level", "target_level")), returns_value=False,
              optional=True, note=_INLINED_CALLER, since=_EAGER),  # fmt: skip
    FuncProbe("tdp_try_split", "kvm_tdp_mmu_try_split_huge_pages", "call",
              (("start", "start"), ("end", "end"), ("target_level", "target_level"), ("shared", "shared")),
              returns_value=False, since=_EAGER),  # fmt: skip
    FuncProbe("split_root", "tdp_mmu_split_huge_pages_root", "walk",
              (("start", "start"), ("end", "end"), ("target_level", "target_level")), optional=True,
              note="static; one TDP iterator loop over a root (a 'walk': tdp_iter_next steps are attributed to it)",
              since=_EAGER),
    FuncProbe("wrprot_slot", "kvm_tdp_mmu_wrprot_slot", "walk", (("min_level", "min_level"),), optional=True,
              note="the write-protect pass over the whole slot at dirty-log enable (a 'walk' of every SPTE)"),  # fmt: skip
    FuncProbe("split_huge_page", "tdp_mmu_split_huge_page", "split", (("gfn", "iter->gfn"), ("level", "iter->level")),
              optional=True, note="static; inlined into tdp_mmu_split_huge_pages_root by some builds",
              since=_EAGER),  # fmt: skip
    FuncProbe("enable_log_dirty", "kvm_arch_mmu_enable_log_dirty_pt_masked", "call",
              (("kvm", "kvm"), ("gfn_offset", "gfn_offset"), ("mask", "mask")), returns_value=False),  # fmt: skip
    FuncProbe("clear_dirty_masked", "kvm_tdp_mmu_clear_dirty_pt_masked", "call", (("gfn", "gfn"), ("mask", "mask")),
              returns_value=False),  # fmt: skip
    FuncProbe("zap_collapsible", "kvm_tdp_mmu_zap_collapsible_sptes", "call", (), returns_value=False, optional=True,
              note="replaced by kvm_tdp_mmu_recover_huge_pages in v6.13"),  # fmt: skip
    FuncProbe("recover_huge_pages", "kvm_tdp_mmu_recover_huge_pages", "call", (), returns_value=False, optional=True,
              note="replaces kvm_tdp_mmu_zap_collapsible_sptes", since="v6.13"),  # fmt: skip
    FuncProbe("iter_next", "tdp_iter_next", "visit", (("level", "iter->level"),), timed=False, hot=True),
)
