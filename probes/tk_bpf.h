/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * tk_bpf.h - helpers shared by the tracekit BPF programs (bcc dialect).
 *
 * Load-time constants (bcc cflags):
 *   TK_TARGET_TGID  the only process whose events are kept (0 = every process)
 * Every family counts its ring-buffer reserve failures per probe and CPU in a
 * BPF_PERCPU_ARRAY named <family>_lost, indexed by the probe's number.
 */
#ifndef TK_BPF_H
#define TK_BPF_H

#ifndef TK_TARGET_TGID
#define TK_TARGET_TGID 0
#endif

static __always_inline int tk_is_target(__u64 pid_tgid)
{
	return TK_TARGET_TGID == 0 || (pid_tgid >> 32) == TK_TARGET_TGID;
}

static __always_inline void tk_fill_header(struct tk_header *h, __u64 pid_tgid, __u32 kind)
{
	h->ts_ns = bpf_ktime_get_ns();
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->cpu = bpf_get_smp_processor_id();
	h->kind = kind;
}

#endif /* TK_BPF_H */
