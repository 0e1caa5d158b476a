"""The ``stage2`` function-probe family: arm64 KVM stage-2 page-table walks, splits and faults.

Contract
--------
:data:`STAGE2_PROBES` lists the probed functions of ``arch/arm64/kvm/hyp/pgtable.c`` and
``arch/arm64/kvm/mmu.c`` with the BTF argument expressions to fetch. Field meanings (units):

- ``pgtable_walk`` (``kvm_pgtable_walk``): ``addr``/``size`` in bytes of IPA, ``flags`` the walker
  flags (LEAF=1, TABLE_PRE=2, TABLE_POST=4, SHARED=8, HANDLE_FAULT=16, SKIP_BBM_TLBI=32,
  SKIP_CMO=64; SKIP_LEVEL3=128 from the project's skip-level patch), ``cb`` the visitor's address (symbolised on the host), ``mmu`` is
  ``pgt->mmu``: 0 for the host user page-table walks this function also serves, which the decoder
  drops (stage-2 walks only).
- ``split_walker`` (``stage2_split_walker``): ``level`` (s8), ``addr`` (IPA), ``old`` (the PTE
  read before the callback), ``visit`` (LEAF/TABLE_PRE/TABLE_POST); one event per visited entry:
  hot, aggregate in the kernel.
- ``map_walker`` (``stage2_map_walker``): as ``split_walker`` for map walks (faults and the
  subtrees built by a split); a ``table_pre:table`` visit at level 1 or 2 in a block-sized map is
  a table-to-block replacement (block rebuild after dirty logging stops).
- ``stage2_split``, ``stage2_map``, ``relax_perms``, ``wrprotect``: the exported stage-2 operations.
- ``guest_abort`` (``kvm_handle_guest_abort``) and ``user_mem_abort`` (inlined in Debian's 6.12).
- ``enable_log_dirty`` (``kvm_arch_mmu_enable_log_dirty_pt_masked``): ``kvm`` (the ``struct kvm``
  address: with ``offsetof(struct kvm, mmu_lock)`` from BTF it names the mmu_lock in lock-contention
  events), ``gfn_offset`` (pages from the slot base), ``mask`` (64 pages); ``split_huge_pages`` (``kvm_mmu_split_huge_pages``, a
  ``.isra`` clone in Debian's 6.12, so it is probed without arguments there).
Nothing here touches the kernel; standard library only (it runs inside the arm64 lab).
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
