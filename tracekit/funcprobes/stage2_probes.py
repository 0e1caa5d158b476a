"""The ``stage2`` function-probe family: arm64 KVM stage-2 page-table walks, splits and faults.

:data:`STAGE2_PROBES` lists the probed functions of ``arch/arm64/kvm/hyp/pgtable.c`` and
``arch/arm64/kvm/mmu.c`` with the fields to fetch (meanings and units in docs/probes/stage2.md);
:data:`VISITOR_ARGS` the visitors' fields in both prototypes (``ctx`` from 6.2, parameters before);
:data:`WALK_FLAGS` the walker flags. Standard library only (it runs inside the arm64 lab).
"""

from __future__ import annotations

from tracekit.funcprobes.spec import FuncProbe

__all__ = ["STAGE2_PROBES", "VISITOR_ARGS", "WALK_FLAGS", "VISIT_KINDS", "pte_kind", "walk_flag_names", "PAGE_LEVEL"]

#: ``enum kvm_pgtable_walk_flags`` bits (KERNEL-FACTS §1.4).
WALK_FLAGS = {
    "LEAF": 1 << 0,
    "TABLE_PRE": 1 << 1,
    "TABLE_POST": 1 << 2,
    "SHARED": 1 << 3,
    "HANDLE_FAULT": 1 << 4,
    "SKIP_BBM_TLBI": 1 << 5,
    "SKIP_CMO": 1 << 6,
    # tracekit's own patch (tracekit/lab/patches/split-skip-level3.patch): not in any upstream kernel.
    "SKIP_LEVEL3": 1 << 7,
}

def walk_flag_names(flags: int) -> str:
    """``flags`` as ``LEAF|SKIP_LEVEL3``; a bit no kernel known here defines shows as ``BIT(n)``.

    >>> walk_flag_names(129), walk_flag_names(1 | 1 << 9), walk_flag_names(0)
    ('LEAF|SKIP_LEVEL3', 'LEAF|BIT(9)', '0')
    """
    names = [name for name, bit in WALK_FLAGS.items() if flags & bit]
    unknown = flags & ~sum(WALK_FLAGS.values())
    names += [f"BIT({n})" for n in range(unknown.bit_length()) if unknown >> n & 1]
    return "|".join(names) or "0"


#: ``visit`` argument values of a visitor callback.
VISIT_KINDS = {1: "leaf", 2: "table_pre", 4: "table_post"}

#: arm64 stage-2 leaf level with 4K pages (pages, never blocks).
PAGE_LEVEL = 3


def pte_kind(old: int, level: int) -> str:
    """Classify a stage-2 descriptor: ``invalid``, ``page`` (level 3), ``table`` or ``block``.

    >>> pte_kind(0, 2), pte_kind(0x3, 3), pte_kind(0x3, 2), pte_kind(0x1, 2)
    ('invalid', 'page', 'table', 'block')
    """
    if not old & 1:
        return "invalid"
    if level >= PAGE_LEVEL:
        return "page"
    return "table" if old & 2 else "block"


#: Visitor arguments: ``struct kvm_pgtable_visit_ctx`` from v6.2, separate parameters before it.
VISITOR_ARGS = (("level", "ctx->level|level"), ("addr", "ctx->addr|addr"), ("old", "ctx->old|*ptep"),
                 ("visit", "visit|flag"))  # fmt: skip

STAGE2_PROBES: tuple[FuncProbe, ...] = (
    FuncProbe(
        "pgtable_walk",
        "kvm_pgtable_walk",
        "walk",
        (
            ("addr", "addr"),
            ("size", "size"),
            ("flags", "walker->flags"),
            ("cb", "walker->cb"),
            ("mmu", "pgt->mmu"),
            ("start_level", "pgt->start_level"),
        ),
    ),
    FuncProbe(
        "split_walker",
        "stage2_split_walker",
        "visit",
        VISITOR_ARGS,
        timed=False,
        hot=True,
        since="v6.5 (eager splitting)",
    ),
    FuncProbe(
        "map_walker",
        "stage2_map_walker",
        "visit",
        VISITOR_ARGS,
        timed=False,
        hot=True,
        note="static, address-taken visitor: a TABLE_PRE visit of a table at a block level is a table-to-block rebuild",
    ),
    FuncProbe("stage2_split", "kvm_pgtable_stage2_split", "split", (("addr", "addr"), ("size", "size")),
              since="v6.5 (eager splitting)"),  # fmt: skip
    FuncProbe(
        "stage2_map",
        "kvm_pgtable_stage2_map",
        "call",
        (("addr", "addr"), ("size", "size"), ("phys", "phys"), ("prot", "prot"), ("flags", "flags")),
    ),
    FuncProbe(
        "relax_perms", "kvm_pgtable_stage2_relax_perms", "call", (("addr", "addr"), ("prot", "prot"))
    ),
    FuncProbe("wrprotect", "kvm_pgtable_stage2_wrprotect", "call", (("addr", "addr"), ("size", "size"))),
    FuncProbe("guest_abort", "kvm_handle_guest_abort", "fault", (("vcpu_id", "vcpu->vcpu_id"),)),
    FuncProbe(
        "user_mem_abort",
        "user_mem_abort",
        "fault",
        (("ipa", "fault_ipa|s2fd->fault_ipa"), ("perm", "fault_is_perm")),
        optional=True,
        note="static with one caller: inlined into kvm_handle_guest_abort by Debian's 6.12 build",
    ),
    FuncProbe(
        "enable_log_dirty",
        "kvm_arch_mmu_enable_log_dirty_pt_masked",
        "call",
        (("kvm", "kvm"), ("gfn_offset", "gfn_offset"), ("mask", "mask")),
        returns_value=False,
    ),
    FuncProbe(
        "split_huge_pages",
        "kvm_mmu_split_huge_pages",
        "call",
        (("addr", "addr"), ("end", "end")),
        optional=True,
        note="static; a .isra clone in Debian's 6.12 (no BTF prototype, probed without arguments)",
        since="v6.5 (eager splitting)",
    ),
)
