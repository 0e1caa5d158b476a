// SPDX-License-Identifier: GPL-2.0-only
/*
 * ioctl.bpf.c - the "ioctl" family: KVM ioctls (_IOC_TYPE(cmd) == KVMIO) paired
 * from sys_enter_ioctl / sys_exit_ioctl per thread. The argument structs of the
 * memory-region, dirty-log and enable-cap commands are copied at entry.
 * Commands listed in TK_IOCTL_AGG_CMD0..3 (KVM_RUN by default) are not streamed:
 * count, total, max and errors are kept per (pid, tid, cmd, fd, errno) in ioctl_agg.
 *
 * cflags: TK_TARGET_TGID, TK_IOCTL_PAGES, TK_IOCTL_AGG_CMD0..3 (0 = unused).
 * Probes (index into ioctl_lost): 0 sys_enter_ioctl, 1 sys_exit_ioctl.
 */
#include "tk_common.h"
#include "tk_bpf.h"
#include "ioctl.h"

#ifndef TK_IOCTL_PAGES
#define TK_IOCTL_PAGES 256
#endif
#ifndef TK_IOCTL_AGG_CMD0
#define TK_IOCTL_AGG_CMD0 0xAE80	/* KVM_RUN */
#endif
#ifndef TK_IOCTL_AGG_CMD1
#define TK_IOCTL_AGG_CMD1 0
#endif
#ifndef TK_IOCTL_AGG_CMD2
#define TK_IOCTL_AGG_CMD2 0
#endif
#ifndef TK_IOCTL_AGG_CMD3
#define TK_IOCTL_AGG_CMD3 0
#endif

#define TK_KVMIO 0xAE
#define TK_KVM_SET_USER_MEMORY_REGION	0x4020AE46
#define TK_KVM_SET_USER_MEMORY_REGION2	0x40A0AE49
#define TK_KVM_GET_DIRTY_LOG		0x4010AE42
#define TK_KVM_CLEAR_DIRTY_LOG		0xC018AEC0
#define TK_KVM_ENABLE_CAP		0x4068AEA3

BPF_RINGBUF_OUTPUT(ioctl_events, TK_IOCTL_PAGES);
BPF_PERCPU_ARRAY(ioctl_lost, __u64, 2);
BPF_HASH(ioctl_inflight, __u32, struct ioctl_event, 16384);
BPF_HASH(ioctl_agg, struct ioctl_agg_key, struct ioctl_agg_val, 16384);
/* One zeroed event to start from (too big for the BPF stack twice). */
BPF_PERCPU_ARRAY(ioctl_scratch, struct ioctl_event, 1);

static __always_inline int ioctl_is_aggregated(__u32 cmd)
{
	return cmd == TK_IOCTL_AGG_CMD0 || (TK_IOCTL_AGG_CMD1 && cmd == TK_IOCTL_AGG_CMD1) ||
	       (TK_IOCTL_AGG_CMD2 && cmd == TK_IOCTL_AGG_CMD2) ||
	       (TK_IOCTL_AGG_CMD3 && cmd == TK_IOCTL_AGG_CMD3);
}

TRACEPOINT_PROBE(syscalls, sys_enter_ioctl)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	__u32 cmd = (__u32)args->cmd;
	if (((cmd >> 8) & 0xff) != TK_KVMIO)
		return 0;
	__u32 zero = 0, tid = (__u32)pid_tgid;
	struct ioctl_event *e = ioctl_scratch.lookup(&zero);
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	tk_fill_header(&e->hdr, pid_tgid, TK_IOCTL_CALL);
	e->fd = (__s32)args->fd;
	e->cmd = cmd;
	e->arg = args->arg;
	const void *uarg = (const void *)args->arg;
	if (cmd == TK_KVM_SET_USER_MEMORY_REGION || cmd == TK_KVM_SET_USER_MEMORY_REGION2) {
		/* struct kvm_userspace_memory_region: slot, flags, gpa, size, uaddr */
		__u64 region[4] = {};
		if (bpf_probe_read_user(region, sizeof(region), uarg) == 0) {
			__u64 uaddr = 0;
			bpf_probe_read_user(&uaddr, sizeof(uaddr), uarg + 24);
			e->slot = (__u32)region[0];
			e->flags = (__u32)(region[0] >> 32);
			e->guest_phys_addr = region[1];
			e->memory_size = region[2];
			e->userspace_addr = uaddr;
			e->decoded = TK_IOCTL_HAS_REGION;
		}
	} else if (cmd == TK_KVM_GET_DIRTY_LOG) {
		__u32 slot = 0;
		if (bpf_probe_read_user(&slot, sizeof(slot), uarg) == 0) {
			e->slot = slot;
			e->decoded = TK_IOCTL_HAS_SLOT;
		}
	} else if (cmd == TK_KVM_CLEAR_DIRTY_LOG) {
		/* struct kvm_clear_dirty_log: slot, num_pages, first_page */
		__u64 clr[2] = {};
		if (bpf_probe_read_user(clr, sizeof(clr), uarg) == 0) {
			e->slot = (__u32)clr[0];
			e->num_pages = (__u32)(clr[0] >> 32);
			e->first_page = clr[1];
			e->decoded = TK_IOCTL_HAS_CLEAR;
		}
	} else if (cmd == TK_KVM_ENABLE_CAP) {
		/* struct kvm_enable_cap: cap, flags, args[4] */
		__u64 cap[2] = {};
		if (bpf_probe_read_user(cap, sizeof(cap), uarg) == 0) {
			e->cap = (__u32)cap[0];
			e->flags = (__u32)(cap[0] >> 32);
			e->cap_arg0 = cap[1];
			e->decoded = TK_IOCTL_HAS_CAP;
		}
	}
	ioctl_inflight.update(&tid, e);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_ioctl)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	__u32 tid = (__u32)pid_tgid;
	struct ioctl_event *in = ioctl_inflight.lookup(&tid);
	if (!in)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__s64 duration = (__s64)(now - in->hdr.ts_ns);
	__s64 ret = args->ret;
	if (ioctl_is_aggregated(in->cmd)) {
		struct ioctl_agg_key key = {};
		key.pid = pid_tgid >> 32;
		key.tid = tid;
		key.cmd = in->cmd;
		key.fd = in->fd;
		key.err = ret < 0 ? (__s32)ret : 0;
		struct ioctl_agg_val zero_val = {};
		struct ioctl_agg_val *agg = ioctl_agg.lookup_or_try_init(&key, &zero_val);
		if (agg) {
			agg->count += 1;
			agg->total_ns += duration;
			if ((__u64)duration > agg->max_ns)
				agg->max_ns = duration;
			if (ret < 0)
				agg->errors += 1;
		}
		ioctl_inflight.delete(&tid);
		return 0;
	}
	struct ioctl_event *e = ioctl_events.ringbuf_reserve(sizeof(struct ioctl_event));
	if (!e) {
		__u32 probe = 1;
		__u64 *lost = ioctl_lost.lookup(&probe);
		if (lost)
			(*lost)++;
		ioctl_inflight.delete(&tid);
		return 0;
	}
	__builtin_memcpy(e, in, sizeof(*e));
	e->duration_ns = duration;
	e->ret = ret;
	ioctl_events.ringbuf_submit(e, 0);
	ioctl_inflight.delete(&tid);
	return 0;
}
