// SPDX-License-Identifier: GPL-2.0-only
/*
 * tdp.bpf.c - the "tdp" function-probe family (x86 KVM TDP MMU), bcc kprobes and
 * kretprobes attached by tracekit.funcprobes.bcc_programs to the symbols resolved
 * on the host. Each probed function becomes one span event (entry time, two
 * arguments, duration, return value); tdp_iter_next, which runs once per SPTE the
 * TDP iterator visits, only bumps a per-level counter of the thread's innermost
 * open span, sent with that span: walk depth aggregated in the kernel.
 *
 * Struct fields are read at offsets from the running kernel's BTF, passed as
 * cflags TK_OFF_x/TK_SIZE_x/TK_SIGNED_x for ITER_LEVEL, ITER_GFN, FAULT_GFN,
 * FAULT_GOAL_LEVEL. cflags: TK_TARGET_TGID, TK_TDP_PAGES.
 *
 * Counters read when the recording ends (per-CPU arrays of __u64):
 * tdp_lost, events lost (ring full): TK_TDP_FN_* spans, TK_TDP_FUNCS spans nested
 * deeper than TK_TDP_DEPTH (no slot to keep them in);
 * tdp_outside, tdp_iter_next steps outside any span (not lost: user space writes
 * them as visits of no walk): [level] steps, [TK_TDP_LEVELS + level] time of the
 * first, [2 * TK_TDP_LEVELS + level] its pid_tgid;
 * tdp_counts, TK_TDP_UNPAIRED returns with no open span, TK_TDP_MISSED returns of
 * another function than the innermost open span (its return was missed: dropped).
 */
#include <uapi/linux/ptrace.h>
#include "tk_common.h"
#include "tk_bpf.h"
#include "tdp.h"

#ifndef TK_TDP_PAGES
#define TK_TDP_PAGES 1024
#endif
#define TK_TDP_DEPTH 4


struct tdp_open {
	__u64 ts_ns;
	__u64 arg0;
	__u64 arg1;
	__u32 func;
	__u32 pad;
	__u32 iter_steps[TK_TDP_LEVELS];
};

struct tdp_thread {
	__u32 depth;
	__u32 pad;
	struct tdp_open span[TK_TDP_DEPTH];
};

BPF_RINGBUF_OUTPUT(tdp_events, TK_TDP_PAGES);
BPF_PERCPU_ARRAY(tdp_lost, __u64, TK_TDP_FUNCS + 1);
BPF_PERCPU_ARRAY(tdp_outside, __u64, 3 * TK_TDP_LEVELS);
BPF_PERCPU_ARRAY(tdp_counts, __u64, TK_TDP_NCOUNTS);
BPF_PERCPU_ARRAY(tdp_zero, struct tdp_thread, 1);	/* never written: the initial state */
BPF_HASH(tdp_threads, __u32, struct tdp_thread, 4096);

static __always_inline void tdp_lost_inc(__u32 index)
{
	__u64 *lost = tdp_lost.lookup(&index);
	if (lost)
		(*lost)++;
}

static __always_inline void tdp_count(__u32 index)
{
	__u64 *count = tdp_counts.lookup(&index);
	if (count)
		(*count)++;
}

/* one tdp_iter_next step at level (0..TK_TDP_LEVELS-1) outside any span */
static __always_inline void tdp_outside_step(__u64 pid_tgid, __u32 level)
{
	__u32 index = level;
	__u64 *steps = tdp_outside.lookup(&index);
	if (!steps)
		return;
	if (*steps == 0) {
		index = TK_TDP_LEVELS + level;
		__u64 *first_ns = tdp_outside.lookup(&index);
		index = 2 * TK_TDP_LEVELS + level;
		__u64 *first_pid = tdp_outside.lookup(&index);
		if (first_ns)
			*first_ns = bpf_ktime_get_ns();
		if (first_pid)
			*first_pid = pid_tgid;
	}
	*steps += 1;
}

static __always_inline struct tdp_thread *tdp_thread_of(__u32 tid, int create)
{
	struct tdp_thread *st = tdp_threads.lookup(&tid);
	if (st || !create)
		return st;
	__u32 zero = 0;
	struct tdp_thread *init = tdp_zero.lookup(&zero);
	if (!init)
		return 0;
	tdp_threads.update(&tid, init);
	return tdp_threads.lookup(&tid);
}

static __always_inline int tdp_entry(__u32 func, __u64 arg0, __u64 arg1)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	struct tdp_thread *st = tdp_thread_of((__u32)pid_tgid, 1);
	if (!st)
		return 0;
	__u32 d = st->depth;
	st->depth = d + 1;
	if (d >= TK_TDP_DEPTH)
		return 0;
	struct tdp_open *s = &st->span[d & (TK_TDP_DEPTH - 1)];
	s->ts_ns = bpf_ktime_get_ns();
	s->arg0 = arg0;
	s->arg1 = arg1;
	s->func = func;
	__builtin_memset(s->iter_steps, 0, sizeof(s->iter_steps));
	return 0;
}

static __always_inline int tdp_return(struct pt_regs *ctx, __u32 func)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	struct tdp_thread *st = tdp_thread_of((__u32)pid_tgid, 0);
	if (!st || st->depth == 0) {
		tdp_count(TK_TDP_UNPAIRED);	/* its entry came before the recording */
		return 0;
	}
	__u32 d = st->depth - 1;
	st->depth = d;
	if (d >= TK_TDP_DEPTH) {
		tdp_lost_inc(TK_TDP_FUNCS);	/* entered with no slot left: never kept */
		return 0;
	}
	struct tdp_open *s = &st->span[d & (TK_TDP_DEPTH - 1)];
	if (s->func != func) {
		tdp_count(TK_TDP_MISSED);	/* a missed return underneath: drop rather than mis-pair */
		return 0;
	}
	struct tdp_span_event *e = tdp_events.ringbuf_reserve(sizeof(struct tdp_span_event));
	if (!e) {
		tdp_lost_inc(func % TK_TDP_FUNCS);
		return 0;
	}
	tk_fill_header(&e->hdr, pid_tgid, TK_TDP_SPAN);
	e->hdr.ts_ns = s->ts_ns;
	e->arg0 = s->arg0;
	e->arg1 = s->arg1;
	e->duration_ns = bpf_ktime_get_ns() - s->ts_ns;
	e->ret = (__s64)PT_REGS_RC(ctx);
	e->func = func;
	e->depth = d;
	__builtin_memcpy(e->iter_steps, s->iter_steps, sizeof(e->iter_steps));
	tdp_events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

int tk_tdp_iter_next(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	struct tdp_thread *st = tdp_thread_of((__u32)pid_tgid, 0);
	__u32 d = st ? st->depth : 0;
	/* levels are 1..5; the mask keeps the index provably inside iter_steps[8] */
	__u32 level = (__u32)TK_FIELD(PT_REGS_PARM1(ctx), ITER_LEVEL) & (TK_TDP_LEVELS - 1);
	if (d == 0) {
		tdp_outside_step(pid_tgid, level);
		return 0;
	}
	if (d > TK_TDP_DEPTH)
		d = TK_TDP_DEPTH;	/* inside spans too deep to keep: the innermost kept one */
	st->span[(d - 1) & (TK_TDP_DEPTH - 1)].iter_steps[level] += 1;
	return 0;
}

int tk_tdp_page_fault_entry(struct pt_regs *ctx) { return tdp_entry(TK_TDP_FN_PAGE_FAULT, PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx)); }
int tk_tdp_page_fault_return(struct pt_regs *ctx) { return tdp_return(ctx, TK_TDP_FN_PAGE_FAULT); }
int tk_tdp_map_entry(struct pt_regs *ctx)
{
	void *fault = (void *)PT_REGS_PARM2(ctx);
	return tdp_entry(TK_TDP_FN_MAP, TK_FIELD(fault, FAULT_GFN), TK_FIELD(fault, FAULT_GOAL_LEVEL));
}
int tk_tdp_map_return(struct pt_regs *ctx) { return tdp_return(ctx, TK_TDP_FN_MAP); }
int tk_tdp_fast_fault_entry(struct pt_regs *ctx) { return tdp_entry(TK_TDP_FN_FAST_FAULT, 0, 0); }
int tk_tdp_fast_fault_return(struct pt_regs *ctx) { return tdp_return(ctx, TK_TDP_FN_FAST_FAULT); }
int tk_tdp_slot_split_entry(struct pt_regs *ctx) { return tdp_entry(TK_TDP_FN_SLOT_SPLIT, 0, PT_REGS_PARM3(ctx)); }
int tk_tdp_slot_split_return(struct pt_regs *ctx) { return tdp_return(ctx, TK_TDP_FN_SLOT_SPLIT); }
int tk_tdp_try_split_entry(struct pt_regs *ctx) { return tdp_entry(TK_TDP_FN_TRY_SPLIT, PT_REGS_PARM3(ctx), PT_REGS_PARM4(ctx)); }
int tk_tdp_try_split_return(struct pt_regs *ctx) { return tdp_return(ctx, TK_TDP_FN_TRY_SPLIT); }
int tk_tdp_split_root_entry(struct pt_regs *ctx) { return tdp_entry(TK_TDP_FN_SPLIT_ROOT, PT_REGS_PARM3(ctx), PT_REGS_PARM4(ctx)); }
int tk_tdp_split_root_return(struct pt_regs *ctx) { return tdp_return(ctx, TK_TDP_FN_SPLIT_ROOT); }
int tk_tdp_split_page_entry(struct pt_regs *ctx)
{
	void *iter = (void *)PT_REGS_PARM2(ctx);
	return tdp_entry(TK_TDP_FN_SPLIT_PAGE, TK_FIELD(iter, ITER_GFN), TK_FIELD(iter, ITER_LEVEL));
}
int tk_tdp_split_page_return(struct pt_regs *ctx) { return tdp_return(ctx, TK_TDP_FN_SPLIT_PAGE); }
int tk_tdp_log_masked_entry(struct pt_regs *ctx) { return tdp_entry(TK_TDP_FN_LOG_MASKED, PT_REGS_PARM3(ctx), PT_REGS_PARM4(ctx)); }
int tk_tdp_log_masked_return(struct pt_regs *ctx) { return tdp_return(ctx, TK_TDP_FN_LOG_MASKED); }
int tk_tdp_clear_masked_entry(struct pt_regs *ctx) { return tdp_entry(TK_TDP_FN_CLEAR_MASKED, PT_REGS_PARM3(ctx), PT_REGS_PARM4(ctx)); }
int tk_tdp_clear_masked_return(struct pt_regs *ctx) { return tdp_return(ctx, TK_TDP_FN_CLEAR_MASKED); }
int tk_tdp_zap_collapse_entry(struct pt_regs *ctx) { return tdp_entry(TK_TDP_FN_ZAP_COLLAPSE, 0, 0); }
int tk_tdp_zap_collapse_return(struct pt_regs *ctx) { return tdp_return(ctx, TK_TDP_FN_ZAP_COLLAPSE); }
int tk_tdp_wrprot_entry(struct pt_regs *ctx) { return tdp_entry(TK_TDP_FN_WRPROT, 0, PT_REGS_PARM3(ctx)); }
int tk_tdp_wrprot_return(struct pt_regs *ctx) { return tdp_return(ctx, TK_TDP_FN_WRPROT); }
int tk_tdp_vendor_exit_entry(struct pt_regs *ctx) { return tdp_entry(TK_TDP_FN_VENDOR_EXIT, 0, 0); }
int tk_tdp_vendor_exit_return(struct pt_regs *ctx) { return tdp_return(ctx, TK_TDP_FN_VENDOR_EXIT); }
