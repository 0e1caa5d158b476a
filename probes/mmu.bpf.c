// SPDX-License-Identifier: GPL-2.0-only
/*
 * mmu.bpf.c - the "mmu" family: the kvmmmu and kvm tracepoints that describe MMU
 * work, one mmu_event per hit, hdr.kind = TK_MMU_<EVENT> (see mmu.h).
 * Each probe is compiled only when user space found its tracepoint with every
 * field used here (cflag TK_MMU_HAVE_<EVENT>), so a host that lacks one still
 * records the others.
 *
 * Events are batched per CPU (see tk_bpf.h): an mmu_events ring record is one
 * struct mmu_batch. Within a CPU, records keep the order of the events.
 *
 * Every event reads the clock (bpf_ktime_get_ns(), about 55 ns here: as much as the rest of
 * a program) except kvm_mmu_set_spte, which carries the time of its fault's
 * kvm_mmu_spte_requested (mmu_fault_time below).
 *
 * cflags: TK_TARGET_TGID, TK_MMU_PAGES, TK_MMU_HAVE_<EVENT>, TK_BATCH_EVENTS,
 * TK_BATCH_FLUSH_NS, TK_FAKE_FD_<map> of the batching maps (tk_bpf.h).
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

TK_BATCHING(mmu, mmu_event, TK_MMU_NEVENTS)

BPF_RINGBUF_OUTPUT(mmu_events, TK_MMU_PAGES);
BPF_PERCPU_ARRAY(mmu_lost, __u64, TK_MMU_NEVENTS);
BPF_PERCPU_ARRAY(mmu_staging, struct mmu_batch, 2);
BPF_ARRAY(mmu_failures, struct tk_ring_failure, TK_FAILURE_SLOTS);
BPF_ARRAY(mmu_failure_count, __u64, 1);

#define TK_MMU_FAULT_SPTES 16	/* set_spte events timed by one fault's clock read, at most */
struct mmu_fault_clock {
	__u64 ts;		/* when the fault's kvm_mmu_spte_requested ran */
	__u32 tid;		/* the thread handling it (0: none yet) */
	__u32 spte_events;	/* set_spte events given ts so far */
};
BPF_PERCPU_ARRAY(mmu_fault_clock, struct mmu_fault_clock, 1);

/* The start of every handler, for an event of process pid_tgid (a target) at time ts: this
 * CPU's staging batch (mmu_open) with the header of its next slot filled; 0 when none is free. */
static __always_inline struct mmu_batch *mmu_begin(__u32 kind, __u64 pid_tgid, __u64 ts)
{
	struct mmu_batch *b = mmu_open(kind);
	if (!b)
		return 0;
	/* The slot still holds an older event: every handler sets valid and user space reads
	 * only the fields valid names, so the 136 bytes are not cleared. */
	struct mmu_event *e = TK_BATCH_SLOT(b);
	tk_fill_header_at(&e->hdr, pid_tgid, kind, ts);
	e->flags = 0;
	return b;
}

/* kvm_mmu_spte_requested: a clock read, left in this CPU's mmu_fault_clock for the
 * kvm_mmu_set_spte events of the same fault. KVM traces both inside one mmu_lock section
 * (preemption off), spte_requested first, then the SPTE it installs and the ones it
 * prefetches (PTE_PREFETCH_NUM, 8), in the same thread and on the same CPU. */
static __always_inline __u64 mmu_fault_start(__u32 tid)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 zero = 0;
	struct mmu_fault_clock *c = mmu_fault_clock.lookup(&zero);
	if (c) {
		c->ts = now;
		c->tid = tid;
		c->spte_events = 0;
	}
	return now;
}

/* kvm_mmu_set_spte: the time of the fault thread tid is handling on this CPU (mmu_fault_start);
 * a clock read of its own with no such fault (another thread's time there, or more SPTEs than
 * one fault installs). */
static __always_inline __u64 mmu_fault_time(__u32 tid)
{
	__u32 zero = 0;
	struct mmu_fault_clock *c = mmu_fault_clock.lookup(&zero);
	if (c && c->tid == tid && c->spte_events < TK_MMU_FAULT_SPTES) {
		c->spte_events += 1;
		return c->ts;
	}
	return bpf_ktime_get_ns();
}

/* Every handler: MMU_BEGIN(kind) (a clock read of its own) or MMU_BEGIN_TIMED(kind, time_of),
 * time_of(tid) giving the time of thread tid's event; fill e; MMU_END. Other processes' events
 * end the handler at once. */
#define MMU_BEGIN_AT(kind, ts)						\
	__u64 pid_tgid = bpf_get_current_pid_tgid();			\
	if (!tk_is_target(pid_tgid))					\
		return 0;						\
	struct mmu_batch *b = mmu_begin(kind, pid_tgid, ts);		\
	if (!b)								\
		return 0;						\
	struct mmu_event *e = TK_BATCH_SLOT(b)
#define MMU_BEGIN(kind) MMU_BEGIN_AT(kind, bpf_ktime_get_ns())
#define MMU_BEGIN_TIMED(kind, time_of) MMU_BEGIN_AT(kind, time_of((__u32)pid_tgid))
#define MMU_END return mmu_close(b, e->hdr.kind, e->hdr.ts_ns)

#ifdef TK_MMU_HAVE_SET_SPTE
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_set_spte)
{
	MMU_BEGIN_TIMED(TK_MMU_SET_SPTE, mmu_fault_time);
	e->gfn = args->gfn;
	e->spte = args->spte;
	e->sptep = args->sptep;
	e->level = args->level;
	e->flags = (args->r ? 1 : 0) | (args->x ? 2 : 0) |
		   (args->u < 0 ? 0 : (args->u ? 0x20 : 0x10));
	e->valid = TK_MMU_F_GFN | TK_MMU_F_SPTE | TK_MMU_F_SPTEP | TK_MMU_F_LEVEL | TK_MMU_F_FLAGS;
	MMU_END;
}
#endif

#ifdef TK_MMU_HAVE_SPTE_REQUESTED
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_spte_requested)
{
	MMU_BEGIN_TIMED(TK_MMU_SPTE_REQUESTED, mmu_fault_start);
	e->gfn = args->gfn;
	e->pfn = args->pfn;
	e->level = args->level;
	e->valid = TK_MMU_F_GFN | TK_MMU_F_PFN | TK_MMU_F_LEVEL;
	MMU_END;
}
#endif

#ifdef TK_MMU_HAVE_SET_ACCESSED_BIT
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_set_accessed_bit)
{
	MMU_BEGIN(TK_MMU_SET_ACCESSED_BIT);
	e->addr = args->gpa;
	e->valid = TK_MMU_F_ADDR;
	MMU_END;
}
#endif

#ifdef TK_MMU_HAVE_SET_DIRTY_BIT
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_set_dirty_bit)
{
	MMU_BEGIN(TK_MMU_SET_DIRTY_BIT);
	e->addr = args->gpa;
	e->valid = TK_MMU_F_ADDR;
	MMU_END;
}
#endif

#ifdef TK_MMU_HAVE_GET_PAGE
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_get_page)
{
	MMU_BEGIN(TK_MMU_GET_PAGE);
	e->gfn = args->gfn;
	e->role = args->role;
	e->level = args->role & 0xf;
	e->count = args->root_count;
	e->mmu_valid_gen = args->mmu_valid_gen;
	e->flags = (args->unsync ? 4 : 0) | (args->created ? 8 : 0);
	e->valid = TK_MMU_F_GFN | TK_MMU_F_ROLE | TK_MMU_F_LEVEL | TK_MMU_F_COUNT | TK_MMU_F_GEN |
		   TK_MMU_F_FLAGS;
	MMU_END;
}
#endif

#ifdef TK_MMU_HAVE_PREPARE_ZAP_PAGE
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_prepare_zap_page)
{
	MMU_BEGIN(TK_MMU_PREPARE_ZAP_PAGE);
	e->gfn = args->gfn;
	e->role = args->role;
	e->level = args->role & 0xf;
	e->count = args->root_count;
	e->mmu_valid_gen = args->mmu_valid_gen;
	e->flags = args->unsync ? 4 : 0;
	e->valid = TK_MMU_F_GFN | TK_MMU_F_ROLE | TK_MMU_F_LEVEL | TK_MMU_F_COUNT | TK_MMU_F_GEN |
		   TK_MMU_F_FLAGS;
	MMU_END;
}
#endif

#ifdef TK_MMU_HAVE_SPLIT_HUGE_PAGE
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_split_huge_page)
{
	MMU_BEGIN(TK_MMU_SPLIT_HUGE_PAGE);
	e->gfn = args->gfn;
	e->spte = args->spte;
	e->level = args->level;
	e->errno_ = args->errno;
	e->valid = TK_MMU_F_GFN | TK_MMU_F_SPTE | TK_MMU_F_LEVEL | TK_MMU_F_ERRNO;
	MMU_END;
}
#endif

#ifdef TK_MMU_HAVE_TDP_SPTE_CHANGED
TRACEPOINT_PROBE(kvmmmu, kvm_tdp_mmu_spte_changed)
{
	MMU_BEGIN(TK_MMU_TDP_SPTE_CHANGED);
	e->gfn = args->gfn;
	e->old_spte = args->old_spte;
	e->new_spte = args->new_spte;
	e->level = args->level;
	e->as_id = args->as_id;
	e->valid = TK_MMU_F_GFN | TK_MMU_F_OLD_SPTE | TK_MMU_F_NEW_SPTE | TK_MMU_F_LEVEL | TK_MMU_F_AS_ID;
	MMU_END;
}
#endif

#ifdef TK_MMU_HAVE_FAST_PAGE_FAULT
TRACEPOINT_PROBE(kvmmmu, fast_page_fault)
{
	MMU_BEGIN(TK_MMU_FAST_PAGE_FAULT);
	e->vcpu_id = args->vcpu_id;
	e->addr = args->cr2_or_gpa;
	e->error_code = args->error_code;
	e->sptep = (__u64)args->sptep;
	e->old_spte = args->old_spte;
	e->new_spte = args->new_spte;
	e->ret = args->ret;
	e->valid = TK_MMU_F_VCPU_ID | TK_MMU_F_ADDR | TK_MMU_F_ERROR_CODE | TK_MMU_F_SPTEP |
		   TK_MMU_F_OLD_SPTE | TK_MMU_F_NEW_SPTE | TK_MMU_F_RET;
	MMU_END;
}
#endif

#ifdef TK_MMU_HAVE_KVM_PAGE_FAULT
TRACEPOINT_PROBE(kvm, kvm_page_fault)
{
	MMU_BEGIN(TK_MMU_KVM_PAGE_FAULT);
	e->vcpu_id = args->vcpu_id;
	e->addr = args->fault_address;
	e->error_code = args->error_code;
	e->valid = TK_MMU_F_VCPU_ID | TK_MMU_F_ADDR | TK_MMU_F_ERROR_CODE;
	MMU_END;
}
#endif

#ifdef TK_MMU_HAVE_DIRTY_RING_PUSH
TRACEPOINT_PROBE(kvm, kvm_dirty_ring_push)
{
	MMU_BEGIN(TK_MMU_DIRTY_RING_PUSH);
	e->vcpu_id = args->index;
	e->count = args->dirty_index;
	e->slot = args->slot;
	e->gfn = args->offset;
	e->valid = TK_MMU_F_VCPU_ID | TK_MMU_F_COUNT | TK_MMU_F_SLOT | TK_MMU_F_GFN;
	MMU_END;
}
#endif

#ifdef TK_MMU_HAVE_DIRTY_RING_RESET
TRACEPOINT_PROBE(kvm, kvm_dirty_ring_reset)
{
	MMU_BEGIN(TK_MMU_DIRTY_RING_RESET);
	e->vcpu_id = args->index;
	e->count = args->dirty_index;
	e->ret = args->reset_index;
	e->valid = TK_MMU_F_VCPU_ID | TK_MMU_F_COUNT | TK_MMU_F_RET;
	MMU_END;
}
#endif

#ifdef TK_MMU_HAVE_DIRTY_RING_EXIT
TRACEPOINT_PROBE(kvm, kvm_dirty_ring_exit)
{
	MMU_BEGIN(TK_MMU_DIRTY_RING_EXIT);
	e->vcpu_id = args->vcpu_id;
	e->valid = TK_MMU_F_VCPU_ID;
	MMU_END;
}
#endif

#ifdef TK_MMU_HAVE_UNMAP_HVA_RANGE
TRACEPOINT_PROBE(kvm, kvm_unmap_hva_range)
{
	MMU_BEGIN(TK_MMU_UNMAP_HVA_RANGE);
	e->addr = args->start;
	e->addr_end = args->end;
	e->valid = TK_MMU_F_ADDR | TK_MMU_F_ADDR_END;
	MMU_END;
}
#endif

#ifdef TK_MMU_HAVE_AGE_HVA
TRACEPOINT_PROBE(kvm, kvm_age_hva)
{
	MMU_BEGIN(TK_MMU_AGE_HVA);
	e->addr = args->start;
	e->addr_end = args->end;
	e->valid = TK_MMU_F_ADDR | TK_MMU_F_ADDR_END;
	MMU_END;
}
#endif

#ifdef TK_MMU_HAVE_ZAP_ALL_FAST
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_zap_all_fast)
{
	MMU_BEGIN(TK_MMU_ZAP_ALL_FAST);
	e->mmu_valid_gen = args->mmu_valid_gen;
	e->count = args->mmu_used_pages;
	e->valid = TK_MMU_F_GEN | TK_MMU_F_COUNT;
	MMU_END;
}
#endif
