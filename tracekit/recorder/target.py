"""Which processes to record: ``--pid PID|NAME`` and ``--all-vms`` resolved, threads and vCPUs listed.

:func:`resolve_targets` matches names like pgrep and kvm_stat ``-g`` (exact process or QEMU guest
name, else a unique prefix of a KVM VM holder's name) and refuses a process holding no KVM VM, or
several matches, in one line listing the candidates. :class:`ThreadWatch` follows the targets'
threads cheaply while recording; :func:`spawn_gated` forks a command held before ``exec`` until the
probes are armed, tied to the recorder by ``PR_SET_PDEATHSIG``. Only ``/proc`` is read.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tracekit.errors import UsageError
from tracekit.procs import proc_start_ticks
from tracekit.prctl import PR_SET_PDEATHSIG, libc_prctl

__all__ = ["Target", "resolve_target", "list_threads", "ThreadWatch", "thread_info", "tgid_of", "vcpu_index", "qemu_guest_name",
           "spawn_gated", "GatedChild",
           "resolve_targets", "kvm_processes", "kvm_fds", "describe_process", "require_kvm_vm", "qemu_memory"]

PROC = Path("/proc")
_VCPU_PATTERNS = (re.compile(r"^CPU (\d+)/KVM$"), re.compile(r"^tk-vcpu-(\d+)$"))


@dataclass
class Target:
    """One process to record: its pid, process name, QEMU guest name and the KVM objects it holds."""

    pid: int
    comm: str
    guest: str | None = None
    vms: int = 0  # KVM VM file descriptors (anon_inode:kvm-vm)
    vcpus: int = 0  # KVM vCPU file descriptors (anon_inode:kvm-vcpu:N)
    memory: int | None = None  # guest memory in bytes where the command line says it (QEMU -m)

    def describe(self) -> str:
        """``pid 1234 qemu-system-x86 guest vm1, 2 vCPUs, 1 GiB``."""
        parts = [f"pid {self.pid} {self.comm}" + (f" guest {self.guest}" if self.guest else "")]
        if self.vms:
            parts.append(f"{self.vcpus} vCPU{'s' if self.vcpus != 1 else ''}")
            parts.append(_size(self.memory) if self.memory else "memory unknown")
        else:
            parts.append("no KVM VM")
        return ", ".join(parts)

    def to_json(self) -> dict:
        return {"pid": self.pid, "comm": self.comm, "name": self.guest, "vcpus": self.vcpus, "memory": self.memory}


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _cmdline(pid: int) -> list[str]:
    raw = None
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def qemu_guest_name(argv: list[str]) -> str | None:
    """The guest name given to QEMU with ``-name`` (plain, ``guest=NAME,...`` or ``NAME,process=...``)."""
    for i, arg in enumerate(argv):
        value = None
        if arg in ("-name", "--name") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(("-name=", "--name=")):
            value = arg.split("=", 1)[1]
        if value is None:
            continue
        parts = value.split(",")
        for part in parts:
            if part.startswith("guest="):
                return part[len("guest="):]
        if parts and "=" not in parts[0]:
            return parts[0]
    return None


def vcpu_index(thread_name: str) -> int | None:
    """vCPU index encoded in a thread name, or None."""
    for pattern in _VCPU_PATTERNS:
        match = pattern.match(thread_name.strip())
        if match:
            return int(match.group(1))
    return None


def list_threads(pid: int) -> list[dict]:
    """Threads of ``pid`` as ``{"pid", "tid", "comm", "vcpu"}``, by tid."""
    task = PROC / str(pid) / "task"
    try:
        entries = sorted(int(e.name) for e in task.iterdir() if e.name.isdigit())
    except OSError:
        return []
    return [thread_info(pid, tid) for tid in entries]


class ThreadWatch:
    """The threads of processes ``pids``, kept current at little cost per :meth:`refresh`.

    A refresh lists each ``/proc/PID/task`` and reads the names of new threads only, once more at the
    next refresh (threads are named just after they start), and those of threads whose name gives no
    vCPU index every ``recheck_s`` seconds or when ``full``; a name that gives a vCPU index is final.
    ``seen`` keeps each thread's first and last listing (CLOCK_MONOTONIC ns), gone threads included."""

    def __init__(self, pids: list[int], *, recheck_s: float = 1.0, proc: Path = PROC):
        self.pids = list(pids)
        self.recheck_s = recheck_s
        self._proc = proc
        self.threads: dict[int, dict[int, dict]] = {pid: {} for pid in self.pids}  # pid -> tid -> live thread
        self._young: set[int] = set()
        self._next_recheck = 0.0
        self.seen: dict[int, list[int]] = {}  # tid -> [first, last] listing time

    def follow(self, pids: list[int]) -> None:
        """Watch ``pids`` from now on (threads of a process no longer followed are forgotten)."""
        self.pids = list(pids)
        self.threads = {pid: self.threads.get(pid, {}) for pid in self.pids}

    def refresh(self, *, full: bool = False) -> tuple[list[dict], bool]:
        """``(sightings, settling)``: the threads whose name was read now, and whether a thread appeared
        at this refresh or the one before (what it opens, a vCPU fd, may come just after it)."""
        now_ns = time.monotonic_ns()
        now = now_ns / 1e9
        recheck = full or now >= self._next_recheck
        if recheck:
            self._next_recheck = now + self.recheck_s
        young, self._young = self._young, set()
        seen: list[dict] = []
        for pid in self.pids:
            try:
                tids = {int(e.name) for e in os.scandir(self._proc / str(pid) / "task") if e.name.isdigit()}
            except OSError:
                tids = set()
            known = self.threads[pid]
            for tid in known.keys() - tids:
                del known[tid]
            for tid in sorted(tids):
                self.seen.setdefault(tid, [now_ns, now_ns])[1] = now_ns
                old = known.get(tid)
                if old is not None and tid not in young and not (recheck and old["vcpu"] is None):
                    continue
                if old is None:
                    self._young.add(tid)
                known[tid] = thread_info(pid, tid, self._proc)
                seen.append(known[tid])
        return seen, bool(self._young or young)

    def vcpus(self) -> dict[int, int | None]:
        """``{tid: vCPU index or None}`` of the live threads as last refreshed."""
        return {tid: t["vcpu"] for threads in self.threads.values() for tid, t in threads.items()}


def thread_info(pid: int, tid: int, proc: Path = PROC) -> dict:
    """Thread ``tid`` of ``pid`` as ``{"pid", "tid", "comm", "vcpu"}`` (comm "" and vcpu None once it is gone)."""
    comm = (_read(proc / str(pid) / "task" / str(tid) / "comm") or "").strip()
    return {"pid": pid, "tid": tid, "comm": comm, "vcpu": vcpu_index(comm)}


def tgid_of(pid: int) -> int | None:
    """The process (thread group) id of thread ``pid``, or None when it is gone or unreadable."""
    status = _read(PROC / str(pid) / "status")
    match = re.search(r"^Tgid:\s*(\d+)", status or "", re.M)
    return int(match.group(1)) if match else None


_SIZE_UNITS = {"": 1 << 20, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _size(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def qemu_memory(argv: list[str]) -> int | None:
    """Guest memory in bytes from QEMU's ``-m SIZE`` / ``-m size=SIZE,...`` (MiB without a suffix);
    QEMU's default 128 MiB for a QEMU without ``-m``; None for another program."""
    if not argv or not os.path.basename(argv[0]).startswith("qemu"):
        return None
    value = None
    for i, arg in enumerate(argv):
        if arg in ("-m", "--m", "-memory") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(("-m=", "--m=")):
            value = arg.split("=", 1)[1]
    if value is None:
        return 128 << 20
    for part in value.split(","):
        size = part[len("size="):] if part.startswith("size=") else part
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([bkmgtBKMGT]?)", size.strip())
        if match and (part.startswith("size=") or "=" not in part):
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    return None


def kvm_fds(pid: int) -> tuple[int, int]:
    """(KVM VM fds, KVM vCPU fds) that process ``pid`` holds, read from ``/proc/PID/fd`` (0, 0 when
    unreadable): the ``anon_inode:kvm-vm`` and ``anon_inode:kvm-vcpu:N`` files KVM hands out."""
    vms = vcpus = 0
    fd_dir = PROC / str(pid) / "fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return 0, 0
    for name in names:
        try:
            link = os.readlink(fd_dir / name)
        except OSError:
            continue
        if link == "anon_inode:kvm-vm":
            vms += 1
        elif link.startswith("anon_inode:kvm-vcpu"):
            vcpus += 1
    return vms, vcpus


def describe_process(pid: int) -> Target | None:
    """The :class:`Target` for process ``pid`` (None when it is gone)."""
    comm = _read(PROC / str(pid) / "comm")
    if comm is None:
        return None
    argv = _cmdline(pid)
    vms, vcpus = kvm_fds(pid)
    return Target(pid, comm.strip(), qemu_guest_name(argv), vms, vcpus, qemu_memory(argv))


def _processes(exclude: tuple[int, ...]) -> list[int]:
    skip = set(exclude) | {os.getpid(), os.getppid()}
    try:
        return sorted(int(e.name) for e in PROC.iterdir() if e.name.isdigit() and int(e.name) not in skip)
    except OSError:
        return []


def kvm_processes(*, exclude: tuple[int, ...] = ()) -> list[Target]:
    """Every process that holds a KVM VM file descriptor, by pid (``--all-vms``)."""
    found = (describe_process(pid) for pid in _processes(exclude) if kvm_fds(pid)[0])  # fds first: cheaper
    return [t for t in found if t is not None and t.vms]


def _names(target: Target) -> tuple[str, str]:
    argv = _cmdline(target.pid)
    return target.comm, os.path.basename(argv[0]) if argv else ""


def _matches(spec: str, exclude: tuple[int, ...]) -> list[Target]:
    """Processes ``spec`` names, the first non-empty of: KVM VM holders with that exact process or
    QEMU guest name; KVM VM holders whose process name starts with it; any process with that exact
    name (refused later for holding no VM, which says more than "no process named")."""
    candidates = [t for t in (describe_process(pid) for pid in _processes(exclude)) if t is not None]
    names = {t.pid: _names(t) for t in candidates}  # each reads the process's cmdline
    exact = [t for t in candidates if spec in names[t.pid] or (t.guest is not None and spec == t.guest)]
    prefix = [t for t in candidates if t.vms and any(n.startswith(spec) for n in names[t.pid] if n)]
    return [t for t in exact if t.vms] or prefix or exact


_STARTING_GRACE_S = 2.0  # a VMM younger than this may not have created its VM yet
_BOOT_AGE_LIMIT_S = 5.0


def _age_s(pid: int) -> float | None:
    """Seconds since process ``pid`` started (None when unreadable)."""
    start_ticks = proc_start_ticks(pid, PROC)
    uptime = _read(PROC / "uptime")
    try:
        return float(uptime.split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (AttributeError, IndexError, ValueError, OSError, TypeError):
        return None


def require_kvm_vm(target: Target) -> Target:
    """``target`` once it holds a KVM VM (a process started less than 5 s ago gets 2 s to create
    one); UsageError naming it otherwise: recording it would give 0 rows."""
    age = _age_s(target.pid)
    deadline = time.monotonic() + (_STARTING_GRACE_S if age is not None and age < _BOOT_AGE_LIMIT_S else 0)
    while not target.vms:
        if time.monotonic() >= deadline:
            kind = "a kernel thread" if not _cmdline(target.pid) else "a process"
            raise UsageError(f"pid {target.pid} ({target.comm}) holds no KVM VM ({kind} without an "
                             "anon_inode:kvm-vm file descriptor): nothing to record; list the VMs with --all-vms")
        time.sleep(0.05)
        target = describe_process(target.pid) or target
    return target


def _choices(targets: list[Target]) -> str:
    return "\n".join("  " + t.describe() for t in sorted(targets, key=lambda t: t.pid))


def resolve_target(spec: str, *, exclude: tuple[int, ...] = ()) -> Target:
    """The single process ``spec`` names (see the module docstring)."""
    spec = spec.strip()
    if spec.isdigit():
        pid = tgid_of(int(spec))  # a thread id names its process
        target = describe_process(pid) if pid is not None else None
        if target is None:
            raise UsageError(f"no process with pid {spec}")
        return target
    matches = _matches(spec, exclude)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"no process named {spec!r} (by process name, QEMU -name guest name, or a unique "
                         "prefix of the name of a process holding a KVM VM)")
    raise UsageError(f"{len(matches)} processes match {spec!r}; choose one with --pid PID or a guest name, "
                     f"repeat --pid, or record them all with --all-vms:\n{_choices(matches)}")


def resolve_targets(specs: list[str] | tuple[str, ...], *, all_vms: bool = False,
                    exclude: tuple[int, ...] = ()) -> list[Target]:
    """The processes to record, by pid, each holding a KVM VM: every ``--pid`` spec resolved (a
    process named twice counts once), plus every KVM VM holder with ``all_vms``."""
    chosen: dict[int, Target] = {}
    for spec in specs:
        target = require_kvm_vm(resolve_target(spec, exclude=exclude))
        chosen.setdefault(target.pid, target)
    if all_vms:
        for target in kvm_processes(exclude=exclude):
            chosen.setdefault(target.pid, target)
        if not chosen:
            raise UsageError("--all-vms: no process holds a KVM VM (no anon_inode:kvm-vm file descriptor in /proc/*/fd)")
    if not chosen:
        raise UsageError("nothing to record: give --pid PID|NAME, --all-vms or a command after --")
    return [chosen[pid] for pid in sorted(chosen)]


class GatedChild:
    """A child process forked and held before ``exec`` until :meth:`release`.

    ``subprocess.Popen`` cannot do this (it waits for the exec), so the child is forked here; it
    blocks on a pipe, and exits with status 125 instead of running untraced if the recorder dies
    before releasing it. Once released it stays tied to the recorder: ``PR_SET_PDEATHSIG`` (kept
    across ``exec``) sends it SIGKILL when the recorder's thread that forked it ends, also when the
    recorder is killed with SIGKILL and can run no cleanup. Processes the command forks itself are
    not covered."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None, stdout_to_stderr: bool = False,
                 stdout_fd: int | None = None):
        if not argv:
            raise UsageError("no command given after --")
        executable = shutil.which(argv[0])
        if executable is None:
            raise UsageError(f"command not found: {argv[0]}")
        read_fd, write_fd = os.pipe()
        environment = dict(os.environ if env is None else env)
        prctl, recorder = libc_prctl(), os.getpid()
        pid = os.fork()
        if pid == 0:  # child: tie itself to the recorder, wait for the go byte, then exec
            try:
                os.close(write_fd)
                if prctl is not None:
                    prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
                if os.getppid() != recorder:  # the recorder died before the prctl: never run
                    os._exit(125)
                go = os.read(read_fd, 1)
                os.close(read_fd)
                if go == b"g":
                    if stdout_fd is not None:
                        os.dup2(stdout_fd, 1)
                    elif stdout_to_stderr:
                        os.dup2(2, 1)
                    os.execve(executable, argv, environment)
            finally:
                os._exit(125)
        os.close(read_fd)
        self._write_fd = write_fd
        self.pid = pid
        self.argv = argv
        self.exec_name = os.path.basename(executable)[:15]  # the kernel's comm after exec (TASK_COMM_LEN - 1)
        self.returncode: int | None = None
        self.released = False  # True once the command was let go (it may have run)

    def release(self) -> None:
        """Let the child exec its command."""
        if self._write_fd >= 0:
            self.released = True
            try:
                os.write(self._write_fd, b"g")
            finally:
                os.close(self._write_fd)
                self._write_fd = -1

    def poll(self) -> int | None:
        """The exit status (negative signal number when killed) once the child has ended, else None."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                return self.returncode
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float, cut_short: Callable[[], bool] = lambda: False) -> int | None:
        """The exit status once the child ended within ``timeout`` s (or before ``cut_short()``), else None."""
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline and not cut_short():
            time.sleep(0.02)
        return self.returncode

    def terminate(self, grace: float = 3.0, cut_short: Callable[[], bool] = lambda: False) -> None:
        """Stop the child if it still runs: SIGTERM, then SIGKILL after ``grace`` s or as soon as
        ``cut_short()`` says so (a second stop signal); reap it."""
        if self._write_fd >= 0:  # never released: close the pipe, it exits with 125
            os.close(self._write_fd)
            self._write_fd = -1
            self.wait(1.0)
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if self.wait(grace, cut_short) is None:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.wait(3.0)


def spawn_gated(argv: list[str], env: dict[str, str] | None = None, *, stdout_to_stderr: bool = False,
                stdout_fd: int | None = None) -> GatedChild:
    """Fork ``argv`` held before exec (see :class:`GatedChild`); its stdout may go to stderr or to ``stdout_fd``."""
    return GatedChild(argv, env=env, stdout_to_stderr=stdout_to_stderr, stdout_fd=stdout_fd)
