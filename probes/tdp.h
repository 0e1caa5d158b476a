/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * tdp.h - events of the "tdp" function-probe family (x86 KVM TDP MMU): timed
 * spans of the fault, eager-split and dirty-log functions, one event per huge
 * page split (tdp_mmu_split_huge_page), and the TDP iterator's steps counted
 * per level in the kernel (walk depth), sent with each span that iterates.
 */
#ifndef TK_TDP_H
#define TK_TDP_H

#include "tk_common.h"

#define TK_TDP_SPAN	0	/* tdp_span_event */

#define TK_TDP_LEVELS	8	/* PG_LEVEL_4K = 1 .. PG_LEVEL_256T = 5; 0, 6, 7 unused */

#define TK_TDP_FN_PAGE_FAULT	0	/* kvm_mmu_page_fault(vcpu, cr2_or_gpa, error_code, ...) */
#define TK_TDP_FN_MAP		1	/* kvm_tdp_mmu_map(vcpu, fault) */
#define TK_TDP_FN_FAST_FAULT	2	/* fast_page_fault* (no args) */
#define TK_TDP_FN_SLOT_SPLIT	3	/* kvm_mmu_slot_try_split_huge_pages(kvm, slot, target_level) */
#define TK_TDP_FN_TRY_SPLIT	4	/* kvm_tdp_mmu_try_split_huge_pages(kvm, slot, start, end, level, shared) */
#define TK_TDP_FN_SPLIT_ROOT	5	/* tdp_mmu_split_huge_pages_root(kvm, root, start, end, level, shared) */
#define TK_TDP_FN_SPLIT_PAGE	6	/* tdp_mmu_split_huge_page(kvm, iter, sp, shared) */
#define TK_TDP_FN_LOG_MASKED	7	/* kvm_arch_mmu_enable_log_dirty_pt_masked(kvm, slot, gfn_offset, mask) */
#define TK_TDP_FN_CLEAR_MASKED	8	/* kvm_tdp_mmu_clear_dirty_pt_masked(kvm, root, gfn, mask, wrprot) */
#define TK_TDP_FN_ZAP_COLLAPSE	9	/* kvm_tdp_mmu_zap_collapsible_sptes(kvm, slot) */
#define TK_TDP_FN_VENDOR_EXIT	10	/* npf_interception / handle_ept_violation (vcpu) */
#define TK_TDP_FN_WRPROT	11	/* kvm_tdp_mmu_wrprot_slot(kvm, slot, min_level): arg1 = min_level */
#define TK_TDP_FUNCS		12

/* tdp_counts indices: facts that are not losses */
#define TK_TDP_UNPAIRED		0	/* returns with no open span (entered before the recording) */
#define TK_TDP_MISSED		1	/* returns not of the innermost open span (its return was missed) */
#define TK_TDP_NCOUNTS		2

struct tdp_span_event {
	struct tk_header hdr;	/* ts_ns = entry */
	__u64 arg0;		/* gpa, gfn or start (per func) */
	__u64 arg1;		/* error_code, end, mask or level */
	__u64 duration_ns;
	__s64 ret;
	__u32 func;		/* TK_TDP_FN_* */
	__u32 depth;		/* nesting of spans on this thread at entry */
	__u32 iter_steps[TK_TDP_LEVELS];	/* tdp_iter_next steps per level during the span */
};

#endif /* TK_TDP_H */
