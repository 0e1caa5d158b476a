/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * mmu.h - event of the "mmu" family: the kvmmmu and kvm tracepoints that describe
 * MMU work. One struct for all of them; hdr.kind names the tracepoint (the
 * numbering is the order of MMU_EVENTS in tracekit/recorder/tracepoint_families.py and
 * of the TK_MMU_* constants below).
 */
#ifndef TK_MMU_H
#define TK_MMU_H

#include "tk_common.h"

#define TK_MMU_SET_SPTE		0
#define TK_MMU_SPTE_REQUESTED	1
#define TK_MMU_SET_ACCESSED_BIT	2
#define TK_MMU_SET_DIRTY_BIT	3
#define TK_MMU_GET_PAGE		4
#define TK_MMU_PREPARE_ZAP_PAGE	5
#define TK_MMU_SPLIT_HUGE_PAGE	6
#define TK_MMU_TDP_SPTE_CHANGED	7
#define TK_MMU_FAST_PAGE_FAULT	8
#define TK_MMU_KVM_PAGE_FAULT	9
#define TK_MMU_DIRTY_RING_PUSH	10
#define TK_MMU_DIRTY_RING_RESET	11
#define TK_MMU_DIRTY_RING_EXIT	12
#define TK_MMU_UNMAP_HVA_RANGE	13
#define TK_MMU_AGE_HVA		14
#define TK_MMU_ZAP_ALL_FAST	15
#define TK_MMU_NEVENTS		16

struct mmu_event {
	struct tk_header hdr;
	__u64 gfn;
	__u64 addr;	/* gpa, gva, guest_rip-free fault address, or hva start */
	__u64 addr_end;	/* hva end */
	__u64 spte;
	__u64 old_spte;
	__u64 new_spte;
	__u64 pfn;
	__u64 error_code;
	__u64 sptep;
	__u32 role;
	__u32 count;	/* root_count, mmu_used_pages, dirty_index */
	__s32 level;
	__s32 errno_;
	__s32 vcpu_id;
	__s32 ret;
	__u32 slot;
	__u32 valid;	/* bit mask of the fields above that hold data (TK_MMU_F_*) */
	__u8 flags;	/* bit 0 r, 1 x, 2 unsync, 3 created; set_spte u in bits 4-5 (0 none, 1 u=0, 2 u=1) */
	__u8 as_id;
	__u8 mmu_valid_gen;
	__u8 pad[5];
};

#define TK_MMU_F_GFN		(1 << 0)
#define TK_MMU_F_ADDR		(1 << 1)
#define TK_MMU_F_ADDR_END	(1 << 2)
#define TK_MMU_F_SPTE		(1 << 3)
#define TK_MMU_F_OLD_SPTE	(1 << 4)
#define TK_MMU_F_NEW_SPTE	(1 << 5)
#define TK_MMU_F_PFN		(1 << 6)
#define TK_MMU_F_ERROR_CODE	(1 << 7)
#define TK_MMU_F_SPTEP		(1 << 8)
#define TK_MMU_F_ROLE		(1 << 9)
#define TK_MMU_F_COUNT		(1 << 10)
#define TK_MMU_F_LEVEL		(1 << 11)
#define TK_MMU_F_ERRNO		(1 << 12)
#define TK_MMU_F_VCPU_ID	(1 << 13)
#define TK_MMU_F_RET		(1 << 14)
#define TK_MMU_F_SLOT		(1 << 15)
#define TK_MMU_F_FLAGS		(1 << 16)
#define TK_MMU_F_AS_ID		(1 << 17)
#define TK_MMU_F_GEN		(1 << 18)

#endif /* TK_MMU_H */
