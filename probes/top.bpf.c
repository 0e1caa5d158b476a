// SPDX-License-Identifier: GPL-2.0-only
/*
 * top.bpf.c - the counters of "tracekit top": everything is counted in the kernel,
 * per thread (top_threads, key tid) and per (process, dirty-log ioctl) with a log2
 * latency histogram (top_ioctls); user space reads the maps once per interval and
 * takes differences. No ring buffer, no event leaves the kernel.
 *
 * Only processes whose tgid is a key of tk_targets are counted (declared first:
 * bcc's map number -1, see TK_TARGETS_FAKE_FD in tk_bpf.h); user space fills it
 * with the VMs to watch and adds VMs that start later under --all-vms.
 *
 * Per thread: guest walks and their depth (paging elements per walk; the depth of
 * a walk is known when the thread's next walk starts, so depth_hist lags one walk),
 * write-protect faults (walks whose error code has PRESENT|WRITE), SPTE installs
 * (kvm_mmu_set_spte, kvm_tdp_mmu_spte_changed), huge-page splits, zaps
 * (kvm_mmu_prepare_zap_page), spinning rwlock waits (lock:contention_begin/end with
 * SPIN and READ or WRITE: KVM's mmu_lock is the rwlock a vCPU or a dirty-log ioctl
 * spins on; count and wait by mode), and the time spent in KVM_RUN (run_ns for
 * finished calls; run_start != 0 while a call is in flight). A KVM_RUN already in
 * flight when top attached is recognised by kvm:kvm_userspace_exit (the end of every
 * KVM_RUN) on a thread with no start, or by a guest walk in a thread that entered no
 * KVM ioctl since attach (walks happen inside KVM_RUN): it counts from the attach
 * time (top_config[0]).
 *
 * cflags: TK_TARGETS_FAKE_FD=-1, TK_TOP_HAVE_<EVENT> for each optional tracepoint
 * present (SET_SPTE, SPTE_CHANGED, SPLIT, ZAP, WALK, ELEMENT, LOCK, IOCTL, USEREXIT), TK_KVMIO,
 * TK_KVM_RUN, TK_KVM_GET_DIRTY_LOG, TK_KVM_CLEAR_DIRTY_LOG (tracekit.recorder.kvm_ioctls).
 */
#include "tk_common.h"

BPF_HASH(tk_targets, u32, u8, 1024);

#include "tk_bpf.h"

#define TOP_DEPTH_BUCKETS 8	/* walks of depth 0..6, then 7 and more */
#define TOP_LOG2_SLOTS 40	/* ioctl latency slots: [2^k, 2^(k+1)) ns */

#define TOP_LOCK_SPIN 1
#define TOP_LOCK_READ 2
#define TOP_LOCK_WRITE 4


struct top_thread {
	__u32 tgid;
	__u32 cur_depth;	/* elements of the walk in progress */
	__u64 walks;
	__u64 elements;
	__u64 wp_faults;
	__u64 spte_installs;
	__u64 splits;
	__u64 zaps;
	__u64 lock_read_waits;
	__u64 lock_read_ns;
	__u64 lock_write_waits;
	__u64 lock_write_ns;
	__u64 run_ns;		/* finished KVM_RUN calls */
	__u64 run_start;	/* ktime of the KVM_RUN in flight, 0 when none */
	__u64 runs;
	__u64 lock_start;	/* the rwlock wait in flight */
	__u32 lock_flags;
	__u32 ioctl_kind;	/* 1 GET_DIRTY_LOG, 2 CLEAR_DIRTY_LOG in flight */
	__u32 entered;		/* a KVM ioctl entered since attach */
	__u32 pad;
	__u64 ioctl_start;
	__u64 depth_hist[TOP_DEPTH_BUCKETS];
};

struct top_ioctl_key {
	__u32 tgid;
	__u32 kind;		/* 1 GET_DIRTY_LOG, 2 CLEAR_DIRTY_LOG */
};

struct top_ioctl {
	__u64 count;
	__u64 total_ns;
	__u64 errors;
	__u64 hist[TOP_LOG2_SLOTS];
};

BPF_HASH(top_threads, u32, struct top_thread, 16384);
BPF_HASH(top_ioctls, struct top_ioctl_key, struct top_ioctl, 4096);
BPF_PERCPU_ARRAY(top_zero, struct top_thread, 1);
BPF_ARRAY(top_config, __u64, 1);	/* [0]: ktime at which user space attached */

/* The counters of the calling thread when its process is watched (created on first use). */
static __always_inline struct top_thread *top_thread(void)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	__u32 tid = (__u32)pid_tgid;
	struct top_thread *t = top_threads.lookup(&tid);
	if (t)
		return t;
	__u32 zero = 0;
	struct top_thread *init = top_zero.lookup(&zero);
	if (!init)
		return 0;
	init->tgid = pid_tgid >> 32;
	top_threads.update(&tid, init);
	init->tgid = 0;
	return top_threads.lookup(&tid);
}

/* A thread seen inside KVM_RUN with no start: the call began before top attached. */
static __always_inline void top_run_since_attach(struct top_thread *t)
{
	if (t->run_start)
		return;
	__u32 zero = 0;
	__u64 *attached = top_config.lookup(&zero);
	if (attached && *attached)
		t->run_start = *attached;
}

static __always_inline __u32 top_log2(__u64 v)
{
	__u32 r = 0;
#pragma unroll
	for (int shift = 32; shift > 0; shift >>= 1) {
		if (v >> shift) {
			v >>= shift;
			r += shift;
		}
	}
	return r < TOP_LOG2_SLOTS ? r : TOP_LOG2_SLOTS - 1;
}

#ifdef TK_TOP_HAVE_WALK
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_pagetable_walk)
{
	struct top_thread *t = top_thread();
	if (!t)
		return 0;
	if (t->walks) {
		__u32 d = t->cur_depth < TOP_DEPTH_BUCKETS ? t->cur_depth : TOP_DEPTH_BUCKETS - 1;
		t->depth_hist[d & (TOP_DEPTH_BUCKETS - 1)]++;
	}
	t->walks++;
	t->cur_depth = 0;
	if (!t->entered)
		top_run_since_attach(t);
	if ((args->pferr & 3) == 3)	/* PFERR_PRESENT | PFERR_WRITE: a write to a write-protected page */
		t->wp_faults++;
	return 0;
}
#endif

#ifdef TK_TOP_HAVE_ELEMENT
TRACEPOINT_PROBE(kvmmmu, kvm_mmu_paging_element)
{
	struct top_thread *t = top_thread();
	if (!t)
		return 0;
	t->elements++;
	t->cur_depth++;
	return 0;
}
#endif

/* A probe that adds 1 to counter field of the calling thread. */
#define TOP_COUNT(system, event, field)				\
	TRACEPOINT_PROBE(system, event)				\
	{							\
		struct top_thread *t = top_thread();		\
		if (t)						\
			t->field++;				\
		return 0;					\
	}

#ifdef TK_TOP_HAVE_SET_SPTE
TOP_COUNT(kvmmmu, kvm_mmu_set_spte, spte_installs)
#endif

#ifdef TK_TOP_HAVE_SPTE_CHANGED
TRACEPOINT_PROBE(kvmmmu, kvm_tdp_mmu_spte_changed)
{
	struct top_thread *t = top_thread();
	if (t && (args->new_spte & 1))	/* installed (present), not cleared */
		t->spte_installs++;
	return 0;
}
#endif

#ifdef TK_TOP_HAVE_SPLIT
TOP_COUNT(kvmmmu, kvm_mmu_split_huge_page, splits)
#endif

#ifdef TK_TOP_HAVE_ZAP
TOP_COUNT(kvmmmu, kvm_mmu_prepare_zap_page, zaps)
#endif

#ifdef TK_TOP_HAVE_LOCK
TRACEPOINT_PROBE(lock, contention_begin)
{
	__u32 flags = args->flags;
	if (!(flags & TOP_LOCK_SPIN) || !(flags & (TOP_LOCK_READ | TOP_LOCK_WRITE)))
		return 0;
	struct top_thread *t = top_thread();
	if (t && !t->lock_start) {
		t->lock_start = bpf_ktime_get_ns();
		t->lock_flags = flags;
	}
	return 0;
}

TRACEPOINT_PROBE(lock, contention_end)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct top_thread *t = top_threads.lookup(&tid);
	if (!t || !t->lock_start)
		return 0;
	__u64 wait = bpf_ktime_get_ns() - t->lock_start;
	if (t->lock_flags & TOP_LOCK_WRITE) {
		t->lock_write_waits++;
		t->lock_write_ns += wait;
	} else {
		t->lock_read_waits++;
		t->lock_read_ns += wait;
	}
	t->lock_start = 0;
	return 0;
}
#endif

#ifdef TK_TOP_HAVE_IOCTL
TRACEPOINT_PROBE(syscalls, sys_enter_ioctl)
{
	__u32 cmd = (__u32)args->cmd;
	if (((cmd >> 8) & 0xff) != TK_KVMIO)
		return 0;
	struct top_thread *t = top_thread();
	if (!t)
		return 0;
	t->entered = 1;
	if (cmd != TK_KVM_RUN && cmd != TK_KVM_GET_DIRTY_LOG && cmd != TK_KVM_CLEAR_DIRTY_LOG)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	if (cmd == TK_KVM_RUN) {
		t->run_start = now;
	} else {
		t->ioctl_kind = cmd == TK_KVM_GET_DIRTY_LOG ? 1 : 2;
		t->ioctl_start = now;
	}
	return 0;
}

#ifdef TK_TOP_HAVE_USEREXIT
TRACEPOINT_PROBE(kvm, kvm_userspace_exit)
{
	struct top_thread *t = top_thread();
	if (t)
		top_run_since_attach(t);
	return 0;
}
#endif

TRACEPOINT_PROBE(syscalls, sys_exit_ioctl)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct top_thread *t = top_threads.lookup(&tid);
	if (!t)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	if (t->run_start) {
		t->run_ns += now - t->run_start;
		t->runs++;
		t->run_start = 0;
		return 0;
	}
	if (!t->ioctl_kind)
		return 0;
	struct top_ioctl_key key = {.tgid = pid_tgid >> 32, .kind = t->ioctl_kind};
	__u64 took = now - t->ioctl_start;
	t->ioctl_kind = 0;
	struct top_ioctl fresh = {};
	struct top_ioctl *s = top_ioctls.lookup_or_try_init(&key, &fresh);  /* never overwrites: two CPUs may race */
	if (!s)
		return 0;
	__sync_fetch_and_add(&s->count, 1);
	__sync_fetch_and_add(&s->total_ns, took);
	if (args->ret < 0)
		__sync_fetch_and_add(&s->errors, 1);
	__u32 slot = top_log2(took);
	if (slot < TOP_LOG2_SLOTS)
		__sync_fetch_and_add(&s->hist[slot], 1);
	return 0;
}
#endif
