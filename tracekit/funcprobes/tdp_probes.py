"""The ``tdp`` function-probe family: x86 KVM TDP-MMU faults, eager splits and dirty-log clearing.

Contract
--------
:data:`TDP_PROBES` lists the probed functions of ``arch/x86/kvm/mmu/{mmu.c,tdp_mmu.c,tdp_iter.c}``
and the vendor exit handlers, with BTF argument expressions. Field meanings (units):

- ``page_fault`` (``kvm_mmu_page_fault``): ``gpa`` (bytes; a GVA under shadow paging),
  ``error_code``; ``npf`` / ``ept_violation``: the vendor exits that lead to it.
- ``tdp_map`` (``kvm_tdp_mmu_map``): ``gfn`` (pages), ``goal_level`` (1 = 4K, 2 = 2M, 3 = 1G).
- ``fast_page_fault``: lockless fast path (a ``.part``/``.isra`` clone on some builds).
- ``slot_try_split`` (``kvm_mmu_slot_try_split_huge_pages``, enable path), ``mmu_try_split``
  (``kvm_mmu_try_split_huge_pages``, CLEAR path: a global symbol that Debian's 6.12 also inlines into
  its only caller, so it can exist and never fire), ``tdp_try_split``,
  ``split_root`` (``tdp_mmu_split_huge_pages_root``) and ``split_huge_page``
  (``tdp_mmu_split_huge_page``: one span per huge SPTE split, ``gfn`` and ``level`` of the huge
  page, ret 0 or -errno).
- ``enable_log_dirty``, ``clear_dirty_masked`` (``kvm_tdp_mmu_clear_dirty_pt_masked``: ``gfn``,
  ``mask`` of 64 pages), ``zap_collapsible`` (``kvm_tdp_mmu_zap_collapsible_sptes``, dirty logging
  off; replaced by ``kvm_tdp_mmu_recover_huge_pages`` in later kernels, probed too).
- ``iter_next`` (``tdp_iter_next``): ``level`` of the iterator's position at each step; hot,
  aggregated in the kernel (walk depth) and attributed to the innermost open TDP "walk":
  ``split_root`` (one iterator loop over a root, ``start``/``end`` in gfns) or ``wrprot_slot``
  (``kvm_tdp_mmu_wrprot_slot``, the write-protect pass at dirty-log enable), written to
  ``stage2_walk`` with the function as ``initiator``.
:data:`TRACEPOINT_SPLITS` names the tracepoint recorded next to them for cross-checking.
Standard library only (it runs inside the x86 lab).
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
