// SPDX-License-Identifier: GPL-2.0-only
/*
 * walk.bpf.c - the "walk" family: guest page-table walks done by KVM's software
 * walker. Every kvm_mmu_pagetable_walk opens a walk in the walking thread's
 * state (walk_id, element index); the paging elements and the walker error that
 * follow in the same thread carry that walk_id and their order.
 *
 * cflags: TK_TARGET_TGID, TK_WALK_PAGES (ring buffer pages, a power of 2).
 * Probes (index into walk_lost): 0 pagetable_walk, 1 paging_element, 2 walker_error.
 */
#include "tk_common.h"
#include "tk_bpf.h"
#include "walk.h"

#ifndef TK_WALK_PAGES
#define TK_WALK_PAGES 4096
#endif

struct walk_state {
	__u64 walk_id;
	__u32 next_index;
	__u32 pad;
};

BPF_RINGBUF_OUTPUT(walk_events, TK_WALK_PAGES);
BPF_PERCPU_ARRAY(walk_lost, __u64, 3);
BPF_PERCPU_ARRAY(walk_seq, __u64, 1);
BPF_HASH(walk_state_by_tid, __u32, struct walk_state, 16384);

static __always_inline struct walk_event *walk_reserve(__u32 probe)
{
	struct walk_event *e = walk_events.ringbuf_reserve(sizeof(struct walk_event));
	if (!e) {
		__u64 *lost = walk_lost.lookup(&probe);
		if (lost)
			(*lost)++;
	}
	return e;
}

TRACEPOINT_PROBE(kvmmmu, kvm_mmu_pagetable_walk)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	__u32 zero = 0, tid = (__u32)pid_tgid;
	__u64 *seq = walk_seq.lookup(&zero);
	if (!seq)
		return 0;
	*seq += 1;
	struct walk_state st = {};
	st.walk_id = ((__u64)bpf_get_smp_processor_id() << 48) | *seq;
	walk_state_by_tid.update(&tid, &st);

	struct walk_event *e = walk_reserve(0);
	if (!e)
		return 0;
	tk_fill_header(&e->hdr, pid_tgid, TK_WALK_START);
	e->walk_id = st.walk_id;
	e->value = args->addr;
	e->aux = args->pferr;
	e->index = 0;
	walk_events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

TRACEPOINT_PROBE(kvmmmu, kvm_mmu_paging_element)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	__u32 tid = (__u32)pid_tgid;
	__u64 walk_id = 0;
	__u32 index = 0;
	struct walk_state *st = walk_state_by_tid.lookup(&tid);
	if (st) {
		walk_id = st->walk_id;
		index = st->next_index;
		st->next_index = index + 1;
	}
	struct walk_event *e = walk_reserve(1);
	if (!e)
		return 0;
	tk_fill_header(&e->hdr, pid_tgid, TK_WALK_ELEMENT);
	e->walk_id = walk_id;
	e->value = args->pte;
	e->aux = args->level;
	e->index = index;
	walk_events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

TRACEPOINT_PROBE(kvmmmu, kvm_mmu_walker_error)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	__u32 tid = (__u32)pid_tgid;
	__u64 walk_id = 0;
	struct walk_state *st = walk_state_by_tid.lookup(&tid);
	if (st)
		walk_id = st->walk_id;
	struct walk_event *e = walk_reserve(2);
	if (!e)
		return 0;
	tk_fill_header(&e->hdr, pid_tgid, TK_WALK_ERROR);
	e->walk_id = walk_id;
	e->value = 0;
	e->aux = args->pferr;
	e->index = 0;
	walk_events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}
