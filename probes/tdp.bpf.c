// SPDX-License-Identifier: GPL-2.0-only
/*
 * tdp.bpf.c - the "tdp" function-probe family (x86 KVM TDP MMU), bcc kprobes and
 * kretprobes attached by tracekit.funcprobes.bcc_backend to the symbols resolved
 * on the host. Each probed function becomes one span event (entry time, two
 * arguments, duration, return value); tdp_iter_next, which runs once per SPTE the
 * TDP iterator visits, only bumps a per-level counter of the thread's innermost
 * open span, sent with that span: walk depth aggregated in the kernel.
 *
 * Struct fields are read at offsets from the running kernel's BTF, passed as
 * cflags TK_OFF_x/TK_SIZE_x/TK_SIGNED_x for ITER_LEVEL, ITER_GFN, FAULT_GFN,
 * FAULT_GOAL_LEVEL. cflags: TK_TARGET_TGID, TK_TDP_PAGES.
 * tdp_lost index: 0 iterator steps outside any span, 1 + TK_TDP_FN_* spans.
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
BPF_PERCPU_ARRAY(tdp_lost, __u64, 1 + TK_TDP_FUNCS);
BPF_PERCPU_ARRAY(tdp_zero, struct tdp_thread, 1);	/* never written: the initial state */
BPF_HASH(tdp_threads, __u32, struct tdp_thread, 4096);

static __always_inline void tdp_lost_inc(__u32 index)
{
	__u64 *lost = tdp_lost.lookup(&index);
	if (lost)
		(*lost)++;
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
	if (!st || st->depth == 0)
		return 0;
	__u32 d = st->depth - 1;
	st->depth = d;
	if (d >= TK_TDP_DEPTH)
		return 0;
	struct tdp_open *s = &st->span[d & (TK_TDP_DEPTH - 1)];
	if (s->func != func)
		return 0;	/* a missed return underneath: drop rather than mis-pair */
	struct tdp_span_event *e = tdp_events.ringbuf_reserve(sizeof(struct tdp_span_event));
	if (!e) {
		tdp_lost_inc(1 + (func % TK_TDP_FUNCS));
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
	if (d == 0 || d > TK_TDP_DEPTH) {
		tdp_lost_inc(0);
		return 0;
	}
	/* levels are 1..5; the mask keeps the index provably inside iter_steps[8] */
	__u32 level = (__u32)TK_FIELD(PT_REGS_PARM1(ctx), ITER_LEVEL) & (TK_TDP_LEVELS - 1);
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
