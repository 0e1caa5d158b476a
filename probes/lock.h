/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * lock.h - event of the "lock" family: lock:contention_begin / contention_end
 * paired per task in the kernel.
 */
#ifndef TK_LOCK_H
#define TK_LOCK_H

#include "tk_common.h"

#define TK_LOCK_CONTENTION	0

struct lock_event {
	struct tk_header hdr;	/* ts_ns = contention_begin */
	__u64 lock_addr;
	__s64 wait_ns;
	__u32 flags;	/* LCB_F_SPIN 1, READ 2, WRITE 4, RT 8, PERCPU 16, MUTEX 32 */
	__s32 ret;
	__s32 stack_id;	/* kernel stack at contention_begin; < 0 = not captured (-errno) */
	__u32 pad;
};

#endif /* TK_LOCK_H */
