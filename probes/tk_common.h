/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * tk_common.h - the header every tracekit event starts with.
 *
 * scripts/gen_schema.py mirrors the structs and TK_* constants of every header in
 * probes/ into tracekit/schema.py (a test reruns it). Struct fields are
 * __u8/__s8/__u16/__s16/__u32/__s32/__u64/__s64, structs declared before, or fixed
 * arrays of them sized by a number or a TK_* constant, so the generator stays small.
 */
#ifndef TK_COMMON_H
#define TK_COMMON_H

struct tk_header {
	__u64 ts_ns;	/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 pid;	/* tgid */
	__u32 tid;
	__u32 cpu;
	__u32 kind;	/* which event of the family (TK_<FAMILY>_* below) */
};

#endif /* TK_COMMON_H */
