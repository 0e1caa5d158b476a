/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * tk_bpf.h - helpers shared by the tracekit BPF programs (bcc dialect).
 *
 * Load-time constants (bcc cflags):
 *   TK_TARGET_TGID  the only process whose events are kept (0 = every process)
 *   TK_OFF_x, TK_SIZE_x, TK_SIGNED_x  struct members read with TK_FIELD (function probes)
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

#endif /* TK_BPF_H */
