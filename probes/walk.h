/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * walk.h - event of the "walk" family: KVM's software guest page-table walker
 * (kvmmmu:kvm_mmu_pagetable_walk, kvm_mmu_paging_element, kvm_mmu_walker_error).
 */
#ifndef TK_WALK_H
#define TK_WALK_H

#include "tk_common.h"

#define TK_WALK_START	0	/* kvm_mmu_pagetable_walk: value = addr, aux = pferr */
#define TK_WALK_ELEMENT	1	/* kvm_mmu_paging_element: value = pte, aux = level */
#define TK_WALK_ERROR	2	/* kvm_mmu_walker_error: aux = pferr */
#define TK_WALK_KINDS	3	/* the kinds are the probes' numbers (walk_lost indices) */

#define TK_WALK_MAX_ELEMENTS	64	/* elements kept per walk: 5 levels and a few walker retries fit many times over */
#define TK_WALK_PARTIAL_NO_START	0	/* walk_partial index: an element or error of a walk begun before the window */
#define TK_WALK_PARTIAL_TOO_LONG	1	/* walk_partial index: an element beyond TK_WALK_MAX_ELEMENTS */
#define TK_WALK_PARTIALS	2

struct walk_event {
	struct tk_header hdr;
	__u64 walk_id;	/* unique in the capture: (cpu << 48) | per-CPU sequence + 1; 0 = no open walk */
	__u64 value;
	__u32 aux;
	__u32 index;	/* order of an element inside its walk, from 0 */
};

#endif /* TK_WALK_H */
