/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ioctl.h - event of the "ioctl" family: KVM ioctls (_IOC_TYPE == KVMIO 0xAE)
 * paired from syscalls:sys_enter_ioctl / sys_exit_ioctl in the kernel, per thread.
 */
#ifndef TK_IOCTL_H
#define TK_IOCTL_H

#include "tk_common.h"

#define TK_IOCTL_CALL	0

/* Which decoded argument fields hold data (ioctl_event.decoded). */
#define TK_IOCTL_HAS_REGION	(1 << 0)	/* slot, flags, gpa, size, uaddr */
#define TK_IOCTL_HAS_SLOT	(1 << 1)	/* slot */
#define TK_IOCTL_HAS_CLEAR	(1 << 2)	/* slot, first_page, num_pages */
#define TK_IOCTL_HAS_CAP	(1 << 3)	/* cap, flags, cap_arg0 */
/* Partial calls: the duration covers only the part inside the recording window. */
#define TK_IOCTL_BEGAN_BEFORE	(1 << 8)	/* entered before the window: ts_ns = window start */
#define TK_IOCTL_UNFINISHED	(1 << 9)	/* still running when the window closed (set by user space) */

struct ioctl_event {
	struct tk_header hdr;	/* ts_ns = entry */
	__s64 duration_ns;
	__s64 ret;
	__u64 arg;
	__u64 guest_phys_addr;
	__u64 memory_size;
	__u64 userspace_addr;
	__u64 first_page;
	__u64 cap_arg0;
	__s32 fd;
	__u32 cmd;
	__u32 slot;
	__u32 flags;
	__u32 num_pages;
	__u32 cap;
	__u32 decoded;
	__u32 pad;
};

/* In-kernel aggregate of the commands not streamed (KVM_RUN by default), per
 * thread, command, fd (a vCPU fd for KVM_RUN) and result (0, or the negative
 * errno of a failed call: KVM_RUN's -EINTR). */
struct ioctl_agg_key {
	__u32 pid;
	__u32 tid;
	__u32 cmd;
	__s32 fd;
	__s32 err;
	__u32 pad;
};

struct ioctl_agg_val {
	__u64 count;
	__u64 total_ns;
	__u64 max_ns;
	__u64 errors;
	__u64 partial;	/* calls counted only for their part inside the window */
};

#endif /* TK_IOCTL_H */
