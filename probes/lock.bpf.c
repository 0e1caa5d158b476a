// SPDX-License-Identifier: GPL-2.0-only
/*
 * lock.bpf.c - the "lock" family: lock:contention_begin / contention_end of the
 * target's threads, paired per task (the outermost contention of a task; a
 * nested begin while one is open is counted in lock_nested, not recorded).
 * The kernel stack at contention_begin goes to lock_stacks; user space
 * symbolises the ids when the recording ends.
 *
 * A contention_end inside the recording window without its begin (the wait began
 * before the window opened) is dropped and counted in lock_partial[0]; waits still
 * open when the window closes stay in lock_open_by_tid and are counted by user space.
 *
 * cflags: TK_TARGET_TGID, TK_LOCK_PAGES.
 * Probes (index into lock_lost): 0 contention_begin, 1 contention_end.
 */
#include "tk_common.h"
#include "tk_bpf.h"
#include "lock.h"

#ifndef TK_LOCK_PAGES
#define TK_LOCK_PAGES 512
#endif

struct lock_open {
	__u64 ts_ns;
	__u64 lock_addr;
	__u32 flags;
	__s32 stack_id;
};

BPF_RINGBUF_OUTPUT(lock_events, TK_LOCK_PAGES);
BPF_PERCPU_ARRAY(lock_lost, __u64, 2);
BPF_PERCPU_ARRAY(lock_nested, __u64, 1);
BPF_PERCPU_ARRAY(lock_partial, __u64, 1);
BPF_HASH(lock_open_by_tid, __u32, struct lock_open, 16384);
BPF_STACK_TRACE(lock_stacks, 16384);

TRACEPOINT_PROBE(lock, contention_begin)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	__u32 tid = (__u32)pid_tgid;
	if (lock_open_by_tid.lookup(&tid)) {
		__u32 zero = 0;
		__u64 *nested = lock_nested.lookup(&zero);
		if (nested)
			(*nested)++;
		return 0;
	}
	struct lock_open op = {};
	op.ts_ns = bpf_ktime_get_ns();
	op.lock_addr = (__u64)args->lock_addr;
	op.flags = args->flags;
	op.stack_id = lock_stacks.get_stackid(args, 0);
	lock_open_by_tid.update(&tid, &op);
	return 0;
}

TRACEPOINT_PROBE(lock, contention_end)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	__u32 tid = (__u32)pid_tgid;
	struct lock_open *op = lock_open_by_tid.lookup(&tid);
	if (!op) {
		__u32 zero = 0;
		__u64 *partial = lock_partial.lookup(&zero);
		if (partial)
			(*partial)++;
		return 0;
	}
	if (op->lock_addr != (__u64)args->lock_addr)
		return 0;	/* the end of a nested contention */
	__u64 now = bpf_ktime_get_ns();
	struct lock_event *e = lock_events.ringbuf_reserve(sizeof(struct lock_event));
	if (!e) {
		__u32 probe = 1;
		__u64 *lost = lock_lost.lookup(&probe);
		if (lost)
			(*lost)++;
		lock_open_by_tid.delete(&tid);
		return 0;
	}
	tk_fill_header_at(&e->hdr, pid_tgid, TK_LOCK_CONTENTION, op->ts_ns);  /* the wait's start */
	e->lock_addr = op->lock_addr;
	e->wait_ns = (__s64)(now - op->ts_ns);
	e->flags = op->flags;
	e->ret = args->ret;
	e->stack_id = op->stack_id;
	e->pad = 0;
	lock_events.ringbuf_submit(e, 0);
	lock_open_by_tid.delete(&tid);
	return 0;
}
