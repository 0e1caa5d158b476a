/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * stage2.h - events of the "stage2" function-probe family (arm64 KVM stage-2):
 * one summary per stage-2 kvm_pgtable_walk with its visits counted in the kernel
 * per (visitor, level, PTE kind), a bounded sample of raw visits, and timed spans
 * of the other probed functions (split, map, relax_perms, wrprotect, faults).
 */
#ifndef TK_STAGE2_H
#define TK_STAGE2_H

#include "tk_common.h"

#define TK_S2_WALK	0	/* stage2_walk_event: one kvm_pgtable_walk of a stage-2 table */
#define TK_S2_VISIT	1	/* stage2_visit_event: one sampled visitor call */
#define TK_S2_SPAN	2	/* stage2_span_event: one timed call of another function */

#define TK_S2_LEVELS	4	/* levels 0..3 (LPA2's level -1 is counted at 0) */
#define TK_S2_KINDS	4	/* PTE kind: 0 invalid, 1 page, 2 block, 3 table */
#define TK_S2_VISITORS	2	/* 0 stage2_split_walker, 1 stage2_map_walker */
#define TK_S2_COUNTS	32	/* TK_S2_VISITORS * TK_S2_LEVELS * TK_S2_KINDS */

/* func of a span (index into stage2_lost is func + 3) */
#define TK_S2_FN_SPLIT		0	/* kvm_pgtable_stage2_split(pgt, addr, size, mc) */
#define TK_S2_FN_MAP		1	/* kvm_pgtable_stage2_map(pgt, addr, size, phys, prot, mc, flags) */
#define TK_S2_FN_RELAX		2	/* kvm_pgtable_stage2_relax_perms(pgt, addr, prot, ...) */
#define TK_S2_FN_WRPROTECT	3	/* kvm_pgtable_stage2_wrprotect(pgt, addr, size) */
#define TK_S2_FN_ABORT		4	/* kvm_handle_guest_abort(vcpu) */
#define TK_S2_FN_LOG_MASKED	5	/* kvm_arch_mmu_enable_log_dirty_pt_masked(kvm, slot, gfn_offset, mask) */
#define TK_S2_FN_SPLIT_PAGES	6	/* kvm_mmu_split_huge_pages(kvm, addr, end) (a .isra clone: no args) */
#define TK_S2_FUNCS		7

/* stage2_counts indices: facts that are not losses */
#define TK_S2_HOST_WALKS	0	/* kvm_pgtable_walk entries on host user page tables (pgt->mmu == NULL) */
#define TK_S2_UNPAIRED		1	/* returns with no open call (entered before the recording) */
#define TK_S2_MISSED		2	/* entries of a function already open on the thread */
#define TK_S2_NCOUNTS		3

struct stage2_walk_event {
	struct tk_header hdr;	/* ts_ns = walk entry */
	__u64 walk_id;		/* (cpu << 48) | per-CPU sequence */
	__u64 addr;		/* IPA, bytes */
	__u64 size;		/* bytes */
	__u64 cb;		/* walker->cb, symbolised in user space */
	__u64 duration_ns;
	__u32 flags;		/* walker->flags */
	__s32 ret;
	__u32 counts[TK_S2_COUNTS];	/* [visitor][level][kind] visits */
	__u32 sampled;		/* raw visits of this walk sent as stage2_visit_event */
	__u32 dropped;		/* visits not counted: level outside 0..3 or no open walk slot */
};

struct stage2_visit_event {
	struct tk_header hdr;
	__u64 walk_id;		/* 0 = outside any stage-2 walk */
	__u64 addr;		/* ctx->addr */
	__u64 old;		/* ctx->old */
	__s32 level;		/* ctx->level */
	__u32 visit;		/* LEAF 1, TABLE_PRE 2, TABLE_POST 4 */
	__u32 visitor;		/* 0 split walker, 1 map walker */
	__u32 pad;
};

struct stage2_span_event {
	struct tk_header hdr;	/* ts_ns = entry */
	__u64 walk_id;		/* innermost open walk at entry, 0 = none */
	__u64 arg0;		/* addr (IPA) or gfn_offset */
	__u64 arg1;		/* size, prot or mask */
	__u64 duration_ns;
	__s64 ret;
	__u32 func;		/* TK_S2_FN_* */
	__u32 pad;
};

#endif /* TK_STAGE2_H */
