// SPDX-License-Identifier: GPL-2.0-only
/*
 * walk.bpf.c - the "walk" family: guest page-table walks done by KVM's software
 * walker. Every kvm_mmu_pagetable_walk opens a walk in the walking thread's
 * state (walk_id, element index); the paging elements and the walker error that
 * follow in the same thread carry that walk_id and their order. A paging element
 * carries its walk's start time rather than a clock read of its own: KVM reads the
 * elements within the same walker call, and bpf_ktime_get_ns() costs as much as the
 * whole rest of the program here (about 50 ns of a ~100 ns program per element).
 *
 * The walk state of a thread lives in a direct-mapped array slot (tid % 65536, an
 * inlined lookup) or, when another target thread holds that slot, in a hash.
 *
 * Only walks that start inside the recording window open a walk state (a start
 * outside it closes the thread's state), and elements are recorded only into an
 * open walk, whether or not the window is still armed: so the elements of a walk
 * whose start was missed are dropped and counted (walk_partial[0]) rather than
 * glued onto an older walk, and a walk begun before the window closes keeps its
 * last elements. More than TK_WALK_MAX_ELEMENTS elements in one walk are dropped
 * and counted (walk_partial[1]): a walk that long is malformed.
 *
 * Events are batched per CPU (see tk_bpf.h): a walk_events ring record is one
 * struct walk_batch. Within a CPU, records keep the order of the events.
 *
 * cflags: TK_TARGET_TGID, TK_WALK_PAGES (ring buffer pages, a power of 2), TK_WALK_SLOTS,
 * TK_BATCH_EVENTS, TK_BATCH_FLUSH_NS, TK_FAKE_FD_<map> of the batching maps (tk_bpf.h).
 * Probes (index into walk_lost): 0 pagetable_walk, 1 paging_element, 2 walker_error.
 */
#include "tk_common.h"
#include "tk_bpf.h"
#include "walk.h"

#ifndef TK_WALK_PAGES
#define TK_WALK_PAGES 4096
#endif

#ifndef TK_WALK_SLOTS
#define TK_WALK_SLOTS 65536	/* direct-mapped walk states, one per thread id remainder (a power of 2) */
#endif

struct walk_state {
	__u64 tid;	/* the thread whose state this is (0: a free slot) */
	__u64 walk_id;
	__u64 start_ns;	/* the walk's start time, given to its elements */
	__u32 next_index;
	__u32 pad;
};

TK_BATCHING(walk, walk_event, TK_WALK_KINDS)

BPF_RINGBUF_OUTPUT(walk_events, TK_WALK_PAGES);
BPF_PERCPU_ARRAY(walk_lost, __u64, TK_WALK_KINDS);
BPF_PERCPU_ARRAY(walk_seq, __u64, 1);
BPF_PERCPU_ARRAY(walk_partial, __u64, TK_WALK_PARTIALS);
BPF_ARRAY(walk_slots, struct walk_state, TK_WALK_SLOTS);
BPF_HASH(walk_state_by_tid, __u32, struct walk_state, 16384);
BPF_PERCPU_ARRAY(walk_staging, struct walk_batch, 2);
BPF_ARRAY(walk_failures, struct tk_ring_failure, TK_FAILURE_SLOTS);
BPF_ARRAY(walk_failure_count, __u64, 1);

/* The walk state of thread tid: slot tid % TK_WALK_SLOTS of walk_slots when the thread owns it (an
 * inlined array lookup), else its entry in walk_state_by_tid (another thread took the slot first).
 * claim (at a walk's start): take the slot if free (compare-and-swap), else create the hash entry. */
static __always_inline struct walk_state *walk_state_of(__u32 tid, int claim)
{
	__u32 key = tid & (TK_WALK_SLOTS - 1);
	struct walk_state *st = walk_slots.lookup(&key);
	if (st) {
		__u64 owner = st->tid;
		if (owner == tid)
			return st;
		if (claim && owner == 0 && __sync_val_compare_and_swap(&st->tid, 0, (__u64)tid) == 0)
			return st;
	}
	st = walk_state_by_tid.lookup(&tid);
	if (st || !claim)
		return st;
	struct walk_state fresh = {.tid = tid};
	walk_state_by_tid.update(&tid, &fresh);
	return walk_state_by_tid.lookup(&tid);
}

static __always_inline void walk_count_partial(__u32 what)
{
	__u64 *n = walk_partial.lookup(&what);
	if (n)
		*n += 1;
}

/* The open walk of thread tid, or 0 (counted when the window is armed: its start was missed). */
static __always_inline struct walk_state *walk_open_state(__u32 tid)
{
	struct walk_state *st = walk_state_of(tid, 0);
	if (st && st->walk_id)
		return st;
	if (tk_window_get(TK_WINDOW_ARMED))
		walk_count_partial(TK_WALK_PARTIAL_NO_START);
	return 0;
}

TRACEPOINT_PROBE(kvmmmu, kvm_mmu_pagetable_walk)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target_thread(pid_tgid))
		return 0;
	__u32 zero = 0, tid = (__u32)pid_tgid;
	if (!tk_window_get(TK_WINDOW_ARMED)) {  /* outside the window: the thread's last walk is over */
		struct walk_state *old = walk_state_of(tid, 0);
		if (old)
			old->walk_id = 0;
		return 0;
	}
	__u64 *seq = walk_seq.lookup(&zero);
	if (!seq)
		return 0;
	*seq += 1;
	__u64 walk_id = ((__u64)bpf_get_smp_processor_id() << 48) | *seq;
	__u64 now = bpf_ktime_get_ns();
	struct walk_state *st = walk_state_of(tid, 1);
	if (st) {  /* changed in place: no map update per walk */
		st->walk_id = walk_id;
		st->start_ns = now;
		st->next_index = 0;
	}

	struct walk_batch *b = walk_open(0);
	if (!b)
		return 0;
	struct walk_event *e = TK_BATCH_SLOT(b);
	tk_fill_header_at(&e->hdr, pid_tgid, TK_WALK_START, now);
	e->walk_id = walk_id;
	e->value = args->addr;
	e->aux = args->pferr;
	e->index = 0;
	return walk_close(b, 0, e->hdr.ts_ns);
}

TRACEPOINT_PROBE(kvmmmu, kvm_mmu_paging_element)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target_thread(pid_tgid))
		return 0;
	struct walk_state *st = walk_open_state((__u32)pid_tgid);
	if (!st)
		return 0;
	__u64 walk_id = st->walk_id, ts = st->start_ns;
	__u32 index = st->next_index;
	if (index >= TK_WALK_MAX_ELEMENTS) {
		walk_count_partial(TK_WALK_PARTIAL_TOO_LONG);
		return 0;
	}
	st->next_index = index + 1;
	struct walk_batch *b = walk_open(1);
	if (!b)
		return 0;
	struct walk_event *e = TK_BATCH_SLOT(b);
	tk_fill_header_at(&e->hdr, pid_tgid, TK_WALK_ELEMENT, ts);
	e->walk_id = walk_id;
	e->value = args->pte;
	e->aux = args->level;
	e->index = index;
	return walk_close(b, 1, e->hdr.ts_ns);
}

TRACEPOINT_PROBE(kvmmmu, kvm_mmu_walker_error)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target_thread(pid_tgid))
		return 0;
	struct walk_state *st = walk_open_state((__u32)pid_tgid);
	if (!st)
		return 0;
	__u64 walk_id = st->walk_id;
	struct walk_batch *b = walk_open(2);
	if (!b)
		return 0;
	struct walk_event *e = TK_BATCH_SLOT(b);
	tk_fill_header(&e->hdr, pid_tgid, TK_WALK_ERROR);
	e->walk_id = walk_id;
	e->value = 0;
	e->aux = args->pferr;
	e->index = 0;
	return walk_close(b, 2, e->hdr.ts_ns);
}
