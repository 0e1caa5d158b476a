// SPDX-License-Identifier: GPL-2.0-only
/*
 * stage2.bpf.c - the "stage2" function-probe family (arm64 KVM stage-2 tables),
 * bcc kprobes/kretprobes attached by tracekit.funcprobes.bcc_programs to the
 * symbols resolved on the host (".isra" clones included).
 *
 * Per-entry probes (stage2_split_walker, stage2_map_walker) fire once per visited
 * page-table entry, millions of times per memslot: they only bump a counter of the
 * innermost open kvm_pgtable_walk of the thread, per (visitor, level, PTE kind),
 * and send at most TK_S2_SAMPLE_PER_WALK raw visits per walk. Each stage-2 walk
 * sends one summary with those counts when it returns. Walks of host user page
 * tables (pgt->mmu == NULL) are followed but never sent: they are counted in
 * stage2_counts[TK_S2_HOST_WALKS] at entry.
 *
 * Struct fields are read at offsets taken from the running kernel's BTF and passed
 * as cflags (TK_OFF_x, TK_SIZE_x, TK_SIGNED_x for WALKER_CB, WALKER_FLAGS, PGT_MMU);
 * the visitors' fields (S2V_LEVEL, S2V_ADDR, S2V_OLD, S2V_VISIT) are located in the
 * visitor's BTF prototype, which changed in 6.2 (ctx->level, or the level parameter),
 * and passed as TK_ARG_REG_x / TK_ARG_DEREF_x too; nothing here knows a layout.
 * cflags: TK_TARGET_TGID, TK_S2_PAGES (pages of each ring buffer), TK_S2_SAMPLE_PER_WALK.
 * One ring per record type (a reader relies on a fixed record size): stage2_walks,
 * stage2_visits, stage2_spans.
 * stage2_lost index (events lost, ring or table full): 0 walk, 1 visit,
 * 2 span-table full, 3 + TK_S2_FN_* spans.
 * stage2_counts index (facts that are not losses): TK_S2_HOST_WALKS,
 * TK_S2_UNPAIRED returns with no open call, TK_S2_MISSED entries of a function
 * already open on the thread (the earlier call's return was missed: replaced).
 */
#include <uapi/linux/ptrace.h>
#include "tk_common.h"
#include "tk_bpf.h"
#include "stage2.h"

#ifndef TK_S2_PAGES
#define TK_S2_PAGES 1024
#endif
#ifndef TK_S2_SAMPLE_PER_WALK
#define TK_S2_SAMPLE_PER_WALK 4
#endif
#define TK_S2_DEPTH 4

/* A visitor field the kernel lacks reads as 0 (register 0 is none). */
#ifndef TK_ARG_REG_S2V_LEVEL
#define TK_ARG_REG_S2V_LEVEL 0
#define TK_ARG_DEREF_S2V_LEVEL 0
#define TK_OFF_S2V_LEVEL 0
#define TK_SIZE_S2V_LEVEL 8
#define TK_SIGNED_S2V_LEVEL 0
#endif
#ifndef TK_ARG_REG_S2V_ADDR
#define TK_ARG_REG_S2V_ADDR 0
#define TK_ARG_DEREF_S2V_ADDR 0
#define TK_OFF_S2V_ADDR 0
#define TK_SIZE_S2V_ADDR 8
#define TK_SIGNED_S2V_ADDR 0
#endif
#ifndef TK_ARG_REG_S2V_OLD
#define TK_ARG_REG_S2V_OLD 0
#define TK_ARG_DEREF_S2V_OLD 0
#define TK_OFF_S2V_OLD 0
#define TK_SIZE_S2V_OLD 8
#define TK_SIGNED_S2V_OLD 0
#endif
#ifndef TK_ARG_REG_S2V_VISIT
#define TK_ARG_REG_S2V_VISIT 0
#define TK_ARG_DEREF_S2V_VISIT 0
#define TK_OFF_S2V_VISIT 0
#define TK_SIZE_S2V_VISIT 8
#define TK_SIGNED_S2V_VISIT 0
#endif

static __always_inline __u64 tk_param(struct pt_regs *ctx, int n)
{
	switch (n) {
	case 1: return PT_REGS_PARM1(ctx);
	case 2: return PT_REGS_PARM2(ctx);
	case 3: return PT_REGS_PARM3(ctx);
	case 4: return PT_REGS_PARM4(ctx);
	case 5: return PT_REGS_PARM5(ctx);
	case 6: return PT_REGS_PARM6(ctx);
	default: return 0;
	}
}

static __always_inline __u64 tk_sized(__u64 v, __u32 size, int is_signed)
{
	if (size >= 8)
		return v;
	int shift = 64 - 8 * size;
	return is_signed ? (__u64)(((__s64)(v << shift)) >> shift) : (v << shift) >> shift;
}

/* Field A of a probe's arguments: argument register TK_ARG_REG_A, read at TK_OFF_A when TK_ARG_DEREF_A. */
#define TK_ARG(ctx, A) (TK_ARG_DEREF_##A ? \
	tk_read_field((void *)tk_param(ctx, TK_ARG_REG_##A) + TK_OFF_##A, TK_SIZE_##A, TK_SIGNED_##A) : \
	tk_sized(tk_param(ctx, TK_ARG_REG_##A), TK_SIZE_##A, TK_SIGNED_##A))


struct s2_open {
	__u64 walk_id;
	__u64 ts_ns;
	__u64 addr;
	__u64 size;
	__u64 cb;
	__u32 flags;
	__u32 host;	/* pgt->mmu == NULL: a host user page-table walk */
	__u32 counts[TK_S2_COUNTS];
	__u32 sampled;
	__u32 dropped;
};

struct s2_thread {
	__u32 depth;
	__u32 pad;
	struct s2_open walk[TK_S2_DEPTH];
};

struct s2_span_key {
	__u32 tid;
	__u32 func;
};

struct s2_span_val {
	__u64 ts_ns;
	__u64 walk_id;
	__u64 arg0;
	__u64 arg1;
};

BPF_RINGBUF_OUTPUT(stage2_walks, TK_S2_PAGES);
BPF_RINGBUF_OUTPUT(stage2_visits, TK_S2_PAGES);
BPF_RINGBUF_OUTPUT(stage2_span_events, TK_S2_PAGES);
BPF_PERCPU_ARRAY(stage2_lost, __u64, 3 + TK_S2_FUNCS);
BPF_PERCPU_ARRAY(stage2_counts, __u64, TK_S2_NCOUNTS);
BPF_PERCPU_ARRAY(stage2_seq, __u64, 1);
BPF_PERCPU_ARRAY(stage2_zero, struct s2_thread, 1);	/* never written: the initial state */
BPF_HASH(stage2_threads, __u32, struct s2_thread, 4096);
BPF_HASH(stage2_spans, struct s2_span_key, struct s2_span_val, 16384);

static __always_inline void s2_lost(__u32 index)
{
	__u64 *lost = stage2_lost.lookup(&index);
	if (lost)
		(*lost)++;
}

static __always_inline void s2_count(__u32 index)
{
	__u64 *count = stage2_counts.lookup(&index);
	if (count)
		(*count)++;
}

static __always_inline struct s2_thread *s2_thread_of(__u32 tid, int create)
{
	struct s2_thread *st = stage2_threads.lookup(&tid);
	if (st || !create)
		return st;
	__u32 zero = 0;
	struct s2_thread *init = stage2_zero.lookup(&zero);
	if (!init)
		return 0;
	stage2_threads.update(&tid, init);
	return stage2_threads.lookup(&tid);
}

static __always_inline struct s2_open *s2_innermost(struct s2_thread *st)
{
	__u32 d = st->depth;
	if (d == 0 || d > TK_S2_DEPTH)
		return 0;
	return &st->walk[(d - 1) & (TK_S2_DEPTH - 1)];
}

int tk_s2_walk_entry(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	void *pgt = (void *)PT_REGS_PARM1(ctx);
	void *walker = (void *)PT_REGS_PARM4(ctx);
	__u32 host = TK_FIELD(pgt, PGT_MMU) == 0;
	if (host)
		s2_count(TK_S2_HOST_WALKS);	/* every entry, as the tracefs backend counts them */
	struct s2_thread *st = s2_thread_of((__u32)pid_tgid, 1);
	if (!st)
		return 0;
	__u32 d = st->depth;
	st->depth = d + 1;
	if (d >= TK_S2_DEPTH)
		return 0;
	struct s2_open *w = &st->walk[d & (TK_S2_DEPTH - 1)];
	__u32 zero = 0;
	__u64 *seq = stage2_seq.lookup(&zero);
	if (!seq)
		return 0;
	*seq += 1;
	w->walk_id = ((__u64)bpf_get_smp_processor_id() << 48) | *seq;
	w->ts_ns = bpf_ktime_get_ns();
	w->addr = PT_REGS_PARM2(ctx);
	w->size = PT_REGS_PARM3(ctx);
	w->cb = TK_FIELD(walker, WALKER_CB);
	w->flags = TK_FIELD(walker, WALKER_FLAGS);
	w->host = host;
	__builtin_memset(w->counts, 0, sizeof(w->counts));
	w->sampled = 0;
	w->dropped = 0;
	return 0;
}

int tk_s2_walk_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	struct s2_thread *st = s2_thread_of((__u32)pid_tgid, 0);
	if (!st || st->depth == 0) {
		s2_count(TK_S2_UNPAIRED);	/* its entry came before the recording */
		return 0;
	}
	__u32 d = st->depth - 1;
	st->depth = d;
	if (d >= TK_S2_DEPTH)
		return 0;
	struct s2_open *w = &st->walk[d & (TK_S2_DEPTH - 1)];
	if (w->host)
		return 0;
	struct stage2_walk_event *e = stage2_walks.ringbuf_reserve(sizeof(struct stage2_walk_event));
	if (!e) {
		s2_lost(0);
		return 0;
	}
	tk_fill_header(&e->hdr, pid_tgid, TK_S2_WALK);
	e->hdr.ts_ns = w->ts_ns;
	e->walk_id = w->walk_id;
	e->addr = w->addr;
	e->size = w->size;
	e->cb = w->cb;
	e->duration_ns = bpf_ktime_get_ns() - w->ts_ns;
	e->flags = w->flags;
	e->ret = (__s32)PT_REGS_RC(ctx);
	__builtin_memcpy(e->counts, w->counts, sizeof(e->counts));
	e->sampled = w->sampled;
	e->dropped = w->dropped;
	stage2_walks.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

static __always_inline int s2_visit(struct pt_regs *ctx, __u32 visitor)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	struct s2_thread *st = s2_thread_of((__u32)pid_tgid, 0);
	struct s2_open *w = st ? s2_innermost(st) : 0;
	__s64 level = (__s64)TK_ARG(ctx, S2V_LEVEL);
	__u64 old = TK_ARG(ctx, S2V_OLD);
	__u32 kind = !(old & 1) ? 0 : (level >= 3 ? 1 : ((old & 2) ? 3 : 2));
	__u32 lvl = level < 0 ? 0 : (__u32)level;
	if (w) {
		if (lvl < TK_S2_LEVELS) {
			__u32 slot = (visitor * TK_S2_LEVELS + lvl) * TK_S2_KINDS + kind;
			w->counts[slot & (TK_S2_COUNTS - 1)] += 1;
		} else {
			w->dropped += 1;
		}
		if (w->host || w->sampled >= TK_S2_SAMPLE_PER_WALK)
			return 0;
		w->sampled += 1;
	}
	struct stage2_visit_event *e = stage2_visits.ringbuf_reserve(sizeof(struct stage2_visit_event));
	if (!e) {
		s2_lost(1);
		return 0;
	}
	tk_fill_header(&e->hdr, pid_tgid, TK_S2_VISIT);
	e->walk_id = w ? w->walk_id : 0;
	e->addr = TK_ARG(ctx, S2V_ADDR);
	e->old = old;
	e->level = (__s32)level;
	e->visit = (__u32)TK_ARG(ctx, S2V_VISIT);
	e->visitor = visitor;
	e->pad = 0;
	stage2_visits.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

int tk_s2_split_walker(struct pt_regs *ctx) { return s2_visit(ctx, 0); }
int tk_s2_map_walker(struct pt_regs *ctx) { return s2_visit(ctx, 1); }

static __always_inline int s2_span_entry(__u32 func, __u64 arg0, __u64 arg1)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	struct s2_span_key key = {.tid = (__u32)pid_tgid, .func = func};
	struct s2_span_val val = {.ts_ns = bpf_ktime_get_ns(), .arg0 = arg0, .arg1 = arg1};
	struct s2_thread *st = s2_thread_of((__u32)pid_tgid, 0);
	struct s2_open *w = st ? s2_innermost(st) : 0;
	val.walk_id = w ? w->walk_id : 0;
	int err = stage2_spans.insert(&key, &val);	/* one hash operation when no call is open */
	if (err == -EEXIST) {
		s2_count(TK_S2_MISSED);	/* the open call's return was missed: replaced */
		err = stage2_spans.update(&key, &val);
	}
	if (err)
		s2_lost(2);
	return 0;
}

static __always_inline int s2_span_return(struct pt_regs *ctx, __u32 func)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	struct s2_span_key key = {.tid = (__u32)pid_tgid, .func = func};
	struct s2_span_val *val = stage2_spans.lookup(&key);
	if (!val) {
		s2_count(TK_S2_UNPAIRED);
		return 0;
	}
	struct stage2_span_event *e = stage2_span_events.ringbuf_reserve(sizeof(struct stage2_span_event));
	if (!e) {
		s2_lost(3 + func);
		stage2_spans.delete(&key);
		return 0;
	}
	tk_fill_header(&e->hdr, pid_tgid, TK_S2_SPAN);
	e->hdr.ts_ns = val->ts_ns;
	e->walk_id = val->walk_id;
	e->arg0 = val->arg0;
	e->arg1 = val->arg1;
	e->duration_ns = bpf_ktime_get_ns() - val->ts_ns;
	e->ret = (__s64)PT_REGS_RC(ctx);
	e->func = func;
	e->pad = 0;
	stage2_span_events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	stage2_spans.delete(&key);
	return 0;
}

int tk_s2_split_entry(struct pt_regs *ctx) { return s2_span_entry(TK_S2_FN_SPLIT, PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx)); }
int tk_s2_split_return(struct pt_regs *ctx) { return s2_span_return(ctx, TK_S2_FN_SPLIT); }
int tk_s2_map_entry(struct pt_regs *ctx) { return s2_span_entry(TK_S2_FN_MAP, PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx)); }
int tk_s2_map_return(struct pt_regs *ctx) { return s2_span_return(ctx, TK_S2_FN_MAP); }
int tk_s2_relax_entry(struct pt_regs *ctx) { return s2_span_entry(TK_S2_FN_RELAX, PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx)); }
int tk_s2_relax_return(struct pt_regs *ctx) { return s2_span_return(ctx, TK_S2_FN_RELAX); }
int tk_s2_wrprotect_entry(struct pt_regs *ctx) { return s2_span_entry(TK_S2_FN_WRPROTECT, PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx)); }
int tk_s2_wrprotect_return(struct pt_regs *ctx) { return s2_span_return(ctx, TK_S2_FN_WRPROTECT); }
int tk_s2_abort_entry(struct pt_regs *ctx) { return s2_span_entry(TK_S2_FN_ABORT, 0, 0); }
int tk_s2_abort_return(struct pt_regs *ctx) { return s2_span_return(ctx, TK_S2_FN_ABORT); }
int tk_s2_log_masked_entry(struct pt_regs *ctx) { return s2_span_entry(TK_S2_FN_LOG_MASKED, PT_REGS_PARM3(ctx), PT_REGS_PARM4(ctx)); }
int tk_s2_log_masked_return(struct pt_regs *ctx) { return s2_span_return(ctx, TK_S2_FN_LOG_MASKED); }
int tk_s2_split_pages_entry(struct pt_regs *ctx) { return s2_span_entry(TK_S2_FN_SPLIT_PAGES, 0, 0); }
int tk_s2_split_pages_return(struct pt_regs *ctx) { return s2_span_return(ctx, TK_S2_FN_SPLIT_PAGES); }
