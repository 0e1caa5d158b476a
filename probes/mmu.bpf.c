// SPDX-License-Identifier: GPL-2.0-only
/*
 * mmu.bpf.c - the "mmu" family: the kvmmmu and kvm tracepoints that describe MMU
 * work, one mmu_event per hit, hdr.kind = TK_MMU_<EVENT> (see mmu.h).
 * Each probe is compiled only when user space found its tracepoint with every
 * field used here (cflag TK_MMU_HAVE_<EVENT>), so a host that lacks one still
 * records the others.
 *
 * cflags: TK_TARGET_TGID, TK_MMU_PAGES, TK_MMU_HAVE_<EVENT>.
 * Probes (index into mmu_lost): the TK_MMU_<EVENT> number.
 *
 * Note: the dirty-ring and hva events run in the context of whoever causes them
 * (a vCPU thread, the VMM's main thread, or an mm notifier called by another
 * process for unmap/age), so the target filter can drop the last ones.
 */
#include "tk_common.h"
#include "tk_bpf.h"
#include "mmu.h"

/* Field types that bcc copies from the tracepoint format files. */
typedef __u64 gpa_t;

#ifndef TK_MMU_PAGES
#define TK_MMU_PAGES 2048
#endif

BPF_RINGBUF_OUTPUT(mmu_events, TK_MMU_PAGES);
BPF_PERCPU_ARRAY(mmu_lost, __u64, TK_MMU_NEVENTS);

/* The start of every handler: nothing (0) for other processes' events; else a zeroed
 * mmu_event of this kind with its header filled, or 0 with the loss counted. */
static __always_inline struct mmu_event *mmu_reserve(__u32 kind)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	struct mmu_event *e = mmu_events.ringbuf_reserve(sizeof(struct mmu_event));
	if (!e) {
		__u64 *lost = mmu_lost.lookup(&kind);
		if (lost)
			(*lost)++;
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	tk_fill_header(&e->hdr, pid_tgid, kind);
	return e;
}

/* The end of every handler. */
static __always_inline int mmu_submit(struct mmu_event *e)
{
	mmu_events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

#ifdef TK_MMU_HAVE_SET_SPTE
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_set_spte)
{
	struct mmu_event *e = mmu_reserve(TK_MMU_SET_SPTE);
	if (!e)
		return 0;
	e->gfn = args->gfn;
	e->spte = args->spte;
	e->sptep = args->sptep;
	e->level = args->level;
	e->flags = (args->r ? 1 : 0) | (args->x ? 2 : 0) |
		   (args->u < 0 ? 0 : (args->u ? 0x20 : 0x10));
	e->valid = TK_MMU_F_GFN | TK_MMU_F_SPTE | TK_MMU_F_SPTEP | TK_MMU_F_LEVEL | TK_MMU_F_FLAGS;
	return mmu_submit(e);
}
#endif

#ifdef TK_MMU_HAVE_SPTE_REQUESTED
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_spte_requested)
{
	struct mmu_event *e = mmu_reserve(TK_MMU_SPTE_REQUESTED);
	if (!e)
		return 0;
	e->gfn = args->gfn;
	e->pfn = args->pfn;
	e->level = args->level;
	e->valid = TK_MMU_F_GFN | TK_MMU_F_PFN | TK_MMU_F_LEVEL;
	return mmu_submit(e);
}
#endif

#ifdef TK_MMU_HAVE_SET_ACCESSED_BIT
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_set_accessed_bit)
{
	struct mmu_event *e = mmu_reserve(TK_MMU_SET_ACCESSED_BIT);
	if (!e)
		return 0;
	e->addr = args->gpa;
	e->valid = TK_MMU_F_ADDR;
	return mmu_submit(e);
}
#endif

#ifdef TK_MMU_HAVE_SET_DIRTY_BIT
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_set_dirty_bit)
{
	struct mmu_event *e = mmu_reserve(TK_MMU_SET_DIRTY_BIT);
	if (!e)
		return 0;
	e->addr = args->gpa;
	e->valid = TK_MMU_F_ADDR;
	return mmu_submit(e);
}
#endif

#ifdef TK_MMU_HAVE_GET_PAGE
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_get_page)
{
	struct mmu_event *e = mmu_reserve(TK_MMU_GET_PAGE);
	if (!e)
		return 0;
	e->gfn = args->gfn;
	e->role = args->role;
	e->level = args->role & 0xf;
	e->count = args->root_count;
	e->mmu_valid_gen = args->mmu_valid_gen;
	e->flags = (args->unsync ? 4 : 0) | (args->created ? 8 : 0);
	e->valid = TK_MMU_F_GFN | TK_MMU_F_ROLE | TK_MMU_F_LEVEL | TK_MMU_F_COUNT | TK_MMU_F_GEN |
		   TK_MMU_F_FLAGS;
	return mmu_submit(e);
}
#endif

#ifdef TK_MMU_HAVE_PREPARE_ZAP_PAGE
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_prepare_zap_page)
{
	struct mmu_event *e = mmu_reserve(TK_MMU_PREPARE_ZAP_PAGE);
	if (!e)
		return 0;
	e->gfn = args->gfn;
	e->role = args->role;
	e->level = args->role & 0xf;
	e->count = args->root_count;
	e->mmu_valid_gen = args->mmu_valid_gen;
	e->flags = args->unsync ? 4 : 0;
	e->valid = TK_MMU_F_GFN | TK_MMU_F_ROLE | TK_MMU_F_LEVEL | TK_MMU_F_COUNT | TK_MMU_F_GEN |
		   TK_MMU_F_FLAGS;
	return mmu_submit(e);
}
#endif

#ifdef TK_MMU_HAVE_SPLIT_HUGE_PAGE
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_split_huge_page)
{
	struct mmu_event *e = mmu_reserve(TK_MMU_SPLIT_HUGE_PAGE);
	if (!e)
		return 0;
	e->gfn = args->gfn;
	e->spte = args->spte;
	e->level = args->level;
	e->errno_ = args->errno;
	e->valid = TK_MMU_F_GFN | TK_MMU_F_SPTE | TK_MMU_F_LEVEL | TK_MMU_F_ERRNO;
	return mmu_submit(e);
}
#endif

#ifdef TK_MMU_HAVE_TDP_SPTE_CHANGED
TRACEPOINT_PROBE(kvmmmu, kvm_tdp_mmu_spte_changed)
{
	struct mmu_event *e = mmu_reserve(TK_MMU_TDP_SPTE_CHANGED);
	if (!e)
		return 0;
	e->gfn = args->gfn;
	e->old_spte = args->old_spte;
	e->new_spte = args->new_spte;
	e->level = args->level;
	e->as_id = args->as_id;
	e->valid = TK_MMU_F_GFN | TK_MMU_F_OLD_SPTE | TK_MMU_F_NEW_SPTE | TK_MMU_F_LEVEL | TK_MMU_F_AS_ID;
	return mmu_submit(e);
}
#endif

#ifdef TK_MMU_HAVE_FAST_PAGE_FAULT
TRACEPOINT_PROBE(kvmmmu, fast_page_fault)
{
	struct mmu_event *e = mmu_reserve(TK_MMU_FAST_PAGE_FAULT);
	if (!e)
		return 0;
	e->vcpu_id = args->vcpu_id;
	e->addr = args->cr2_or_gpa;
	e->error_code = args->error_code;
	e->sptep = (__u64)args->sptep;
	e->old_spte = args->old_spte;
	e->new_spte = args->new_spte;
	e->ret = args->ret;
	e->valid = TK_MMU_F_VCPU_ID | TK_MMU_F_ADDR | TK_MMU_F_ERROR_CODE | TK_MMU_F_SPTEP |
		   TK_MMU_F_OLD_SPTE | TK_MMU_F_NEW_SPTE | TK_MMU_F_RET;
	return mmu_submit(e);
}
#endif

#ifdef TK_MMU_HAVE_KVM_PAGE_FAULT
TRACEPOINT_PROBE(kvm, kvm_page_fault)
{
	struct mmu_event *e = mmu_reserve(TK_MMU_KVM_PAGE_FAULT);
	if (!e)
		return 0;
	e->vcpu_id = args->vcpu_id;
	e->addr = args->fault_address;
	e->error_code = args->error_code;
	e->valid = TK_MMU_F_VCPU_ID | TK_MMU_F_ADDR | TK_MMU_F_ERROR_CODE;
	return mmu_submit(e);
}
#endif

#ifdef TK_MMU_HAVE_DIRTY_RING_PUSH
TRACEPOINT_PROBE(kvm, kvm_dirty_ring_push)
{
	struct mmu_event *e = mmu_reserve(TK_MMU_DIRTY_RING_PUSH);
	if (!e)
		return 0;
	e->vcpu_id = args->index;
	e->count = args->dirty_index;
	e->slot = args->slot;
	e->gfn = args->offset;
	e->valid = TK_MMU_F_VCPU_ID | TK_MMU_F_COUNT | TK_MMU_F_SLOT | TK_MMU_F_GFN;
	return mmu_submit(e);
}
#endif

#ifdef TK_MMU_HAVE_DIRTY_RING_RESET
TRACEPOINT_PROBE(kvm, kvm_dirty_ring_reset)
{
	struct mmu_event *e = mmu_reserve(TK_MMU_DIRTY_RING_RESET);
	if (!e)
		return 0;
	e->vcpu_id = args->index;
	e->count = args->dirty_index;
	e->ret = args->reset_index;
	e->valid = TK_MMU_F_VCPU_ID | TK_MMU_F_COUNT | TK_MMU_F_RET;
	return mmu_submit(e);
}
#endif

#ifdef TK_MMU_HAVE_DIRTY_RING_EXIT
TRACEPOINT_PROBE(kvm, kvm_dirty_ring_exit)
{
	struct mmu_event *e = mmu_reserve(TK_MMU_DIRTY_RING_EXIT);
	if (!e)
		return 0;
	e->vcpu_id = args->vcpu_id;
	e->valid = TK_MMU_F_VCPU_ID;
	return mmu_submit(e);
}
#endif

#ifdef TK_MMU_HAVE_UNMAP_HVA_RANGE
TRACEPOINT_PROBE(kvm, kvm_unmap_hva_range)
{
	struct mmu_event *e = mmu_reserve(TK_MMU_UNMAP_HVA_RANGE);
	if (!e)
		return 0;
	e->addr = args->start;
	e->addr_end = args->end;
	e->valid = TK_MMU_F_ADDR | TK_MMU_F_ADDR_END;
	return mmu_submit(e);
}
#endif

#ifdef TK_MMU_HAVE_AGE_HVA
TRACEPOINT_PROBE(kvm, kvm_age_hva)
{
	struct mmu_event *e = mmu_reserve(TK_MMU_AGE_HVA);
	if (!e)
		return 0;
	e->addr = args->start;
	e->addr_end = args->end;
	e->valid = TK_MMU_F_ADDR | TK_MMU_F_ADDR_END;
	return mmu_submit(e);
}
#endif

#ifdef TK_MMU_HAVE_ZAP_ALL_FAST
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_zap_all_fast)
{
	struct mmu_event *e = mmu_reserve(TK_MMU_ZAP_ALL_FAST);
	if (!e)
		return 0;
	e->mmu_valid_gen = args->mmu_valid_gen;
	e->count = args->mmu_used_pages;
	e->valid = TK_MMU_F_GEN | TK_MMU_F_COUNT;
	return mmu_submit(e);
}
#endif
