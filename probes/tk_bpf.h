/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * tk_bpf.h - helpers shared by the tracekit BPF programs (bcc dialect).
 *
 * Load-time constants (bcc cflags):
 *   TK_TARGET_TGID  the only process whose events are kept (0 = every process)
 *   TK_TARGETS_FAKE_FD  several processes: bcc's load-time number of the map
 *                   BPF_HASH(tk_targets, u32 tgid, u8) the loader declares first and
 *                   fills; an event is kept when its tgid is a key (TK_TARGET_TGID unused)
 *   TK_OFF_x, TK_SIZE_x, TK_SIGNED_x  struct members read with TK_FIELD (function probes)
 *   TK_BATCH_EVENTS, TK_BATCH_FLUSH_NS  in-kernel batching (below)
 *   TK_FAKE_FD_<map>  bcc's load-time number of each map the program declares once (TK_MAP)
 * Every family counts its ring-buffer reserve failures per probe and CPU in a
 * BPF_PERCPU_ARRAY named <family>_lost, indexed by the probe's number.
 *
 * The recording window (TK_WINDOW, defined by the recorder's prelude with the
 * tk_window array, [0] armed flag, [1] window start ns, and tk_window_get()): every program is attached
 * disarmed and records nothing until user space, with every ring reader ready,
 * arms the window with one map write; disarming is one write too. So every family
 * starts and stops on the same instant whatever order the probes attach and
 * detach in. tk_is_target() is false outside the window; tk_is_target_thread()
 * (the tgid alone) serves programs that finish an operation begun inside it.
 *
 * Batching (families walk and mmu, one TK_BATCHING line each): each CPU fills a staging batch of
 * TK_BATCH_EVENTS events (struct tk_batch_header then the events) in a
 * BPF_PERCPU_ARRAY value and writes it to the ring with one bpf_ringbuf_output
 * when it is full or its oldest event is TK_BATCH_FLUSH_NS old. A ring record is
 * one whole batch (fixed size; count says how many events are valid). Index 0 of
 * the staging array is the batch; index 1 a spare for a nested invocation on the
 * same CPU (written out at once). A failed output counts every event of the batch
 * as lost and records the ring's state in <family>_failures (struct tk_ring_failure).
 * What is still staged when a recording ends is read by user space from the array.
 */
#ifndef TK_BPF_H
#define TK_BPF_H

#ifndef TK_TARGET_TGID
#define TK_TARGET_TGID 0
#endif

static __always_inline int tk_is_target_thread(__u64 pid_tgid)
{
#ifdef TK_TARGETS_FAKE_FD
	__u32 tgid = pid_tgid >> 32;

	return bpf_map_lookup_elem((void *)bpf_pseudo_fd(1, TK_TARGETS_FAKE_FD), &tgid) != 0;
#else
	return TK_TARGET_TGID == 0 || (pid_tgid >> 32) == TK_TARGET_TGID;
#endif
}

#define TK_WINDOW_ARMED 0
#define TK_WINDOW_START_NS 1

/* Slot k of the recording window; the recorder's prelude defines it (bcc rewrites map calls in
 * the program text only, not in included headers). Without one, always armed from time 0. */
#ifndef TK_WINDOW
static __always_inline __u64 tk_window_get(__u32 k)
{
	return k == TK_WINDOW_ARMED;
}
#endif

/* A thread of the target, inside the recording window. */
static __always_inline int tk_is_target(__u64 pid_tgid)
{
	return tk_is_target_thread(pid_tgid) && tk_window_get(TK_WINDOW_ARMED);
}

/* The event header with timestamp ts (an event that shares the time of an earlier one, e.g. a
 * walk's paging elements, which KVM reads within the same walker call as the walk's start). */
static __always_inline void tk_fill_header_at(struct tk_header *h, __u64 pid_tgid, __u32 kind, __u64 ts)
{
	h->ts_ns = ts;
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->cpu = bpf_get_smp_processor_id();
	h->kind = kind;
}

static __always_inline void tk_fill_header(struct tk_header *h, __u64 pid_tgid, __u32 kind)
{
	tk_fill_header_at(h, pid_tgid, kind, bpf_ktime_get_ns());
}

/* Read field F of the struct at base into a __u64 (sign-extended when signed), at the
 * offset, size and signedness passed as cflags TK_OFF_F, TK_SIZE_F, TK_SIGNED_F (taken from
 * the running kernel's BTF by tracekit.funcprobes.btf_offsets; never a layout in the source). */
#define TK_FIELD(base, F) tk_read_field((void *)(base) + TK_OFF_##F, TK_SIZE_##F, TK_SIGNED_##F)

static __always_inline __u64 tk_read_field(void *src, __u32 size, int is_signed)
{
	__u64 v = 0;
	bpf_probe_read_kernel(&v, size & 0xf, src);
	if (is_signed && size < 8) {
		int shift = 64 - 8 * size;
		v = (__u64)(((__s64)(v << shift)) >> shift);
	}
	return v;
}

#ifndef TK_BATCH_EVENTS
#define TK_BATCH_EVENTS 64	/* a power of 2 */
#endif
#ifndef TK_BATCH_FLUSH_NS
#define TK_BATCH_FLUSH_NS 50000000ULL	/* 50 ms: the live status line stays live */
#endif
#define TK_FAILURE_SLOTS 64	/* failures kept per family (the first ones) */

struct tk_batch_header {
	__u32 count;	/* valid events: 1..TK_BATCH_EVENTS in a ring record */
	__u8 busy;	/* staging only: a program is filling this batch */
	__u8 spare;	/* the nested-invocation spare (index 1): written out at once */
	__u16 pad;
	__u64 first_ts;	/* ts_ns of the oldest event */
};

/* One failed ring output: the ring's state then (bpf_ringbuf_query) and the context. */
struct tk_ring_failure {
	__u64 ts_ns;
	__u64 avail_data;	/* BPF_RB_AVAIL_DATA: bytes produced and not consumed */
	__u64 ring_size;	/* BPF_RB_RING_SIZE */
	__u64 cons_pos;		/* BPF_RB_CONS_POS */
	__u64 prod_pos;		/* BPF_RB_PROD_POS */
	__u32 cpu;
	__u32 probe;		/* the probe whose event closed the batch */
	__u32 events;		/* events lost with it */
	__u32 tid;		/* the thread the program ran in */
	__s32 ret;		/* bpf_ringbuf_output's return value */
	__u32 nested;		/* 1: the batch was the nested-invocation spare */
};

/* The slot of the next event of a staging batch (count < TK_BATCH_EVENTS always). */
#define TK_BATCH_SLOT(b) (&(b)->ev[(b)->bh.count & (TK_BATCH_EVENTS - 1)])

/* Account for the event just written at TK_BATCH_SLOT(b); true when the batch must
 * be written out now (full, old enough, or the nested spare). */
static __always_inline int tk_batch_add(struct tk_batch_header *bh, __u64 ts)
{
	if (bh->count == 0)
		bh->first_ts = ts;
	bh->count += 1;
	return bh->spare || bh->count >= TK_BATCH_EVENTS || ts - bh->first_ts >= TK_BATCH_FLUSH_NS;
}

/* Which of this CPU's staging batch (main) and spare a program may fill, marked busy:
 * TK_CLAIMED_MAIN unless a program on this CPU is filling it, then TK_CLAIMED_SPARE, else 0.
 * The spare's header is read only when main is busy: its cache line stays cold otherwise. */
#define TK_CLAIMED_MAIN 1
#define TK_CLAIMED_SPARE 2
static __always_inline int tk_batch_claim(struct tk_batch_header *main, struct tk_batch_header *spare)
{
	if (!main->busy) {
		main->busy = 1;
		return TK_CLAIMED_MAIN;
	}
	if (spare->busy)
		return 0;
	spare->spare = 1;
	spare->busy = 1;
	return TK_CLAIMED_SPARE;
}

/* After a failed output of batch bh: the context of f (ring state apart). A tracepoint
 * program cannot see the trace entry's irq/preempt flags (perf overwrites its first 8
 * bytes with the pt_regs pointer), so the thread and the nesting are what is kept. */
static __always_inline void tk_note_failure(struct tk_ring_failure *f, struct tk_batch_header *bh, __u32 probe,
					    long ret)
{
	f->ts_ns = bpf_ktime_get_ns();
	f->cpu = bpf_get_smp_processor_id();
	f->probe = probe;
	f->events = bh->count;
	f->tid = (__u32)bpf_get_current_pid_tgid();
	f->ret = ret;
	f->nested = bh->spare;
}

/* v as it is, hidden from the compiler's loop rewrites: a loop counter stays the counter the verifier
 * tracks. Without it clang counts the lost-batch loop below down from the batch's event count and walks a
 * pointer; 6.1's verifier cannot bound that counter (no range refinement on "!= 0" at its edge; 6.12's has it) and
 * refuses every program that closes a batch ("invalid access to map value ... off=8740"). The index is
 * masked as well, so the access stays inside the batch whatever the verifier infers. */
#define tk_opaque(v) asm volatile("" : "+r"(v))

/* Map m of the program, for code shared through this header. bcc rewrites map method calls
 * (m.lookup(&k)) only in the program's own text and never inside a macro, so shared code names a
 * map by bcc's load-time number, passed by the loader as TK_FAKE_FD_<m> (its rank among the
 * program's BPF_*(name, ...) declarations): what bcc's rewrite of m.lookup(&k) produces too. */
#define TK_MAP(m) ((void *)bpf_pseudo_fd(1, TK_FAKE_FD_##m))

/* The in-kernel batching of family F (above): struct F_batch (the batch of events struct EVENT) and
 *   F_count_lost(probe, n)  n events of probe lost;
 *   F_open(probe)           this CPU's staging batch marked busy, or its spare when a program on
 *                           this CPU is filling it; 0 (the event counted lost) when both are busy;
 *   F_close(b, probe, ts)   the event at TK_BATCH_SLOT(b), of time ts, is written: count it and
 *                           write the batch out when due; returns 0 (for a program's return).
 * F declares the maps F_events (the ring), F_lost (per-CPU, one counter per probe), F_staging
 * (BPF_PERCPU_ARRAY of struct F_batch, 2), F_failures (struct tk_ring_failure, TK_FAILURE_SLOTS)
 * and F_failure_count (one __u64). Event kinds below NKINDS are probe numbers: a lost batch counts
 * each event against its own probe. */
#define TK_BATCHING(F, EVENT, NKINDS)								\
struct F##_batch {										\
	struct tk_batch_header bh;								\
	struct EVENT ev[TK_BATCH_EVENTS];							\
};												\
												\
static __always_inline void F##_count_lost(__u32 probe, __u64 n)				\
{												\
	__u64 *lost = bpf_map_lookup_elem(TK_MAP(F##_lost), &probe);				\
	if (lost)										\
		*lost += n;									\
}												\
												\
static __always_inline struct F##_batch *F##_open(__u32 probe)				\
{												\
	__u32 main = 0, spare = 1;								\
	struct F##_batch *b = bpf_map_lookup_elem(TK_MAP(F##_staging), &main);			\
	struct F##_batch *s = bpf_map_lookup_elem(TK_MAP(F##_staging), &spare);			\
	int claimed = b && s ? tk_batch_claim(&b->bh, &s->bh) : 0;				\
	if (!claimed) {										\
		F##_count_lost(probe, 1);							\
		return 0;									\
	}											\
	if (claimed == TK_CLAIMED_SPARE)  /* the batch is being filled below us */		\
		b = s;										\
	return b;										\
}												\
												\
static __always_inline void F##_failed(struct F##_batch *b, __u32 probe, long ret)		\
{												\
	__u32 n = b->bh.count;									\
	for (__u32 i = 0; i < TK_BATCH_EVENTS; i++) {						\
		tk_opaque(i);									\
		if (i >= n)									\
			break;									\
		__u32 kind = b->ev[i & (TK_BATCH_EVENTS - 1)].hdr.kind;				\
		F##_count_lost(kind < (NKINDS) ? kind : probe, 1);				\
	}											\
	__u32 zero = 0;										\
	__u64 *count = bpf_map_lookup_elem(TK_MAP(F##_failure_count), &zero);			\
	if (!count)										\
		return;										\
	__u32 slot = __sync_fetch_and_add(count, 1);						\
	if (slot >= TK_FAILURE_SLOTS)								\
		return;										\
	struct tk_ring_failure *f = bpf_map_lookup_elem(TK_MAP(F##_failures), &slot);		\
	if (!f)											\
		return;										\
	tk_note_failure(f, &b->bh, probe, ret);							\
	f->avail_data = bpf_ringbuf_query(TK_MAP(F##_events), BPF_RB_AVAIL_DATA);		\
	f->ring_size = bpf_ringbuf_query(TK_MAP(F##_events), BPF_RB_RING_SIZE);			\
	f->cons_pos = bpf_ringbuf_query(TK_MAP(F##_events), BPF_RB_CONS_POS);			\
	f->prod_pos = bpf_ringbuf_query(TK_MAP(F##_events), BPF_RB_PROD_POS);			\
}												\
												\
static __always_inline int F##_close(struct F##_batch *b, __u32 probe, __u64 ts)		\
{												\
	if (tk_batch_add(&b->bh, ts)) {								\
		long ret = bpf_ringbuf_output(TK_MAP(F##_events), b, sizeof(*b), BPF_RB_NO_WAKEUP);	\
		if (ret)									\
			F##_failed(b, probe, ret);						\
		b->bh.count = 0;								\
		b->bh.spare = 0;								\
	}											\
	b->bh.busy = 0;										\
	return 0;										\
}

#endif /* TK_BPF_H */
