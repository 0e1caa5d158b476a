// SPDX-License-Identifier: GPL-2.0-only
/*
 * ioctl.bpf.c - the "ioctl" family: KVM ioctls (_IOC_TYPE(cmd) == KVMIO) paired
 * from sys_enter_ioctl / sys_exit_ioctl per thread. The argument structs of the
 * memory-region, dirty-log and enable-cap commands are copied at entry.
 * Commands listed in TK_IOCTL_AGG_CMD0..3 (KVM_RUN by default) are not streamed:
 * count, total, max and errors are kept per (pid, tid, cmd, fd, errno) in ioctl_agg.
 *
 * A call already running when the recording window opens is seen only at its
 * exit: with TK_IOCTL_TASK_REGS (BTF: bpf_task_pt_regs) its fd, command and
 * argument are read from the thread's saved syscall registers and it is recorded
 * from the window's start, flagged TK_IOCTL_BEGAN_BEFORE (aggregated commands
 * count it in ioctl_agg.partial); with TK_IOCTL_TICK a timer interrupt on a target thread
 * inside such a call opens it as soon as it is seen (so a KVM_RUN spanning the whole window
 * counts too; a thread asleep in a call, which gets no tick, is found by user space in /proc at
 * the arming). Calls still running when the window closes stay
 * in ioctl_inflight; user space reads them at the end (TK_IOCTL_UNFINISHED).
 *
 * cflags: TK_TARGET_TGID, TK_IOCTL_PAGES, TK_IOCTL_AGG_CMD0..3 (0 = unused), TK_IOCTL_TASK_REGS,
 * TK_IOCTL_TICK, TK_NR_IOCTL (the ioctl syscall number), TK_ARCH_ARM64 (arm64 register names),
 * TK_KVMIO and TK_KVM_<COMMAND> (the command numbers of tracekit.recorder.kvm_ioctls).
 * Probes (index into ioctl_lost): 0 sys_enter_ioctl, 1 sys_exit_ioctl.
 */
#include "tk_common.h"
#include "tk_bpf.h"
#include "ioctl.h"
#ifdef TK_IOCTL_TASK_REGS
#include <linux/ptrace.h>	/* struct pt_regs: the saved user registers, an ABI layout */
#endif

#ifndef TK_IOCTL_PAGES
#define TK_IOCTL_PAGES 256
#endif

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

/* The call of this thread that entered before the window opened, from its saved syscall
 * registers (fd, cmd, arg), in the zeroed scratch event; 0 when not a KVM ioctl or unknown.
 * in_syscall: the caller knows the thread is in ioctl (its exit); else the saved syscall
 * number must say so (TK_NR_IOCTL). */
static __always_inline struct ioctl_event *ioctl_began_before(__u64 pid_tgid, int in_syscall)
{
#ifdef TK_IOCTL_TASK_REGS
	struct task_struct *task = bpf_get_current_task_btf();
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	__u64 fd = 0, cmd = 0, arg = 0;
	if (!in_syscall) {
		/* A kernel worker cloned from a vCPU inside KVM_RUN (KVM's NX huge-page recovery
		 * thread, a PF_USER_WORKER of the VMM since 6.13) keeps that call's saved registers
		 * for ever: it is no vCPU in KVM_RUN. PF_KTHREAD 0x00200000, PF_USER_WORKER 0x4000. */
		unsigned int task_flags = 0;
		bpf_probe_read_kernel(&task_flags, sizeof(task_flags), &task->flags);
		if (task_flags & (0x00200000 | 0x00004000))
			return 0;
		long nr = -1;
#ifdef TK_ARCH_ARM64
		bpf_probe_read_kernel(&nr, sizeof(nr), &regs->syscallno);
#else
		bpf_probe_read_kernel(&nr, sizeof(nr), &regs->orig_ax);
#endif
		if (nr != TK_NR_IOCTL)
			return 0;
	}
	bpf_probe_read_kernel(&cmd, sizeof(cmd), &PT_REGS_PARM2(regs));
	if (((cmd >> 8) & 0xff) != TK_KVMIO)
		return 0;
#ifdef TK_ARCH_ARM64
	bpf_probe_read_kernel(&fd, sizeof(fd), &regs->orig_x0);	/* x0 holds the return value now */
#else
	bpf_probe_read_kernel(&fd, sizeof(fd), &PT_REGS_PARM1(regs));
#endif
	bpf_probe_read_kernel(&arg, sizeof(arg), &PT_REGS_PARM3(regs));
	__u32 zero = 0;
	struct ioctl_event *e = ioctl_scratch.lookup(&zero);
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	tk_fill_header_at(&e->hdr, pid_tgid, TK_IOCTL_CALL, tk_window_get(TK_WINDOW_START_NS));
	e->fd = (__s32)fd;
	e->cmd = (__u32)cmd;
	e->arg = arg;
	e->decoded = TK_IOCTL_BEGAN_BEFORE;
	return e;
#else
	return 0;
#endif
}

#if defined(TK_IOCTL_TASK_REGS) && defined(TK_IOCTL_TICK)
/* A timer interrupt on a CPU running a target thread inside a KVM ioctl that entered before the
 * window (a vCPU in KVM_RUN running guest code): open its call now, from the window's start, so
 * a call spanning the whole window is still seen (then unfinished too). */
TRACEPOINT_PROBE(timer, hrtimer_expire_entry)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	__u32 tid = (__u32)pid_tgid;
	if (ioctl_inflight.lookup(&tid))
		return 0;
	struct ioctl_event *e = ioctl_began_before(pid_tgid, 0);
	if (e)
		ioctl_inflight.update(&tid, e);
	return 0;
}
#endif

TRACEPOINT_PROBE(syscalls, sys_exit_ioctl)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!tk_is_target(pid_tgid))
		return 0;
	__u32 tid = (__u32)pid_tgid;
	struct ioctl_event *in = ioctl_inflight.lookup(&tid);  /* deleted below: absent is harmless */
	if (!in) {
		in = ioctl_began_before(pid_tgid, 1);
		if (!in)
			return 0;
	}
	int began_before = (in->decoded & TK_IOCTL_BEGAN_BEFORE) != 0;
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
			agg->partial += began_before;
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
