"""Which process to record: resolve ``--pid PID|NAME``, list its threads, find its vCPU threads.

Contract:

- :func:`resolve_target` accepts a numeric pid (must be running; a thread id stands for its process) or a name that matches process
  names (``/proc/PID/comm`` or the basename of ``argv[0]``, e.g. ``qemu-system-x86_64``) or a QEMU
  guest name (the value of ``-name`` in its command line, ``guest=NAME`` and ``process=NAME``
  forms included). No match or several matches raise :class:`tracekit.errors.UsageError` listing the
  candidates (pid, comm, guest name).
- :func:`tgid_of` gives the process a thread id belongs to (None when it is gone).
- :func:`list_threads` returns ``[{"tid", "comm", "vcpu"}]`` for a pid, where ``vcpu`` is the
  vCPU index parsed from the thread name (QEMU's ``CPU N/KVM``, the built-in workload's
  ``tk-vcpu-N``) or None; :func:`thread_info` the same for one thread.
- :func:`spawn_gated` forks a command that waits on a pipe before ``exec`` (so probes attach
  before it runs) and :func:`release` lets it go.

Only ``/proc`` is read; nothing in the target is executed or changed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from tracekit.errors import RecorderError, UsageError

__all__ = ["Target", "resolve_target", "list_threads", "thread_info", "tgid_of", "vcpu_index", "qemu_guest_name",
           "spawn_gated", "GatedChild"]

PROC = Path("/proc")
_VCPU_PATTERNS = (re.compile(r"^CPU (\d+)/KVM$"), re.compile(r"^tk-vcpu-(\d+)$"))


@dataclass
class Target:
    pid: int
    comm: str
    guest: str | None = None


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
    """Threads of ``pid`` as ``{"tid", "comm", "vcpu"}``, by tid."""
    task = PROC / str(pid) / "task"
    try:
        entries = sorted(int(e.name) for e in task.iterdir() if e.name.isdigit())
    except OSError:
        return []
    return [thread_info(pid, tid) for tid in entries]


def thread_info(pid: int, tid: int) -> dict:
    """Thread ``tid`` of ``pid`` as ``{"tid", "comm", "vcpu"}`` (comm "" and vcpu None once it is gone)."""
    comm = (_read(PROC / str(pid) / "task" / str(tid) / "comm") or "").strip()
    return {"tid": tid, "comm": comm, "vcpu": vcpu_index(comm)}


def tgid_of(pid: int) -> int | None:
    """The process (thread group) id of thread ``pid``, or None when it is gone or unreadable."""
    status = _read(PROC / str(pid) / "status")
    match = re.search(r"^Tgid:\s*(\d+)", status or "", re.M)
    return int(match.group(1)) if match else None


def _describe(pid: int) -> Target | None:
    comm = _read(PROC / str(pid) / "comm")
    if comm is None:
        return None
    return Target(pid, comm.strip(), qemu_guest_name(_cmdline(pid)))


def resolve_target(spec: str, *, exclude: tuple[int, ...] = ()) -> Target:
    """The single process ``spec`` names (see the module docstring)."""
    spec = spec.strip()
    if spec.isdigit():
        pid = tgid_of(int(spec))  # a thread id names its process
        target = _describe(pid) if pid is not None else None
        if target is None:
            raise UsageError(f"no process with pid {spec}")
        return target
    exclude = exclude + (os.getpid(), os.getppid())
    matches = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        target = _describe(int(entry.name))
        if target is None:
            continue
        argv = _cmdline(target.pid)
        exe = os.path.basename(argv[0]) if argv else ""
        if spec in (target.comm, exe) or (target.guest is not None and spec == target.guest):
            matches.append(target)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"no process named {spec!r} (by process name or QEMU -name guest name)")
    listing = "; ".join(f"pid {t.pid} {t.comm}" + (f" guest {t.guest}" if t.guest else "")
                        for t in sorted(matches, key=lambda t: t.pid))
    raise UsageError(f"{len(matches)} processes match {spec!r}: {listing}; give the pid")


class GatedChild:
    """A child process forked and held before ``exec`` until :meth:`release`.

    ``subprocess.Popen`` cannot do this (it waits for the exec), so the child is forked here; it
    blocks on a pipe, and exits with status 125 instead of running untraced if the recorder dies
    before releasing it."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None, stdout_to_stderr: bool = False):
        if not argv:
            raise UsageError("no command given after --")
        executable = shutil.which(argv[0])
        if executable is None:
            raise UsageError(f"command not found: {argv[0]}")
        read_fd, write_fd = os.pipe()
        environment = dict(os.environ if env is None else env)
        pid = os.fork()
        if pid == 0:  # child: wait for the go byte, then exec
            try:
                os.close(write_fd)
                go = os.read(read_fd, 1)
                os.close(read_fd)
                if go == b"g":
                    if stdout_to_stderr:
                        os.dup2(2, 1)
                    os.execve(executable, argv, environment)
            finally:
                os._exit(125)
        os.close(read_fd)
        self._write_fd = write_fd
        self.pid = pid
        self.argv = argv
        self.returncode: int | None = None

    def release(self) -> None:
        """Let the child exec its command."""
        if self._write_fd >= 0:
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

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.returncode

    def terminate(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after 3 s) if it still runs; reap it."""
        if self._write_fd >= 0:  # never released: close the pipe, it exits with 125
            os.close(self._write_fd)
            self._write_fd = -1
            self.wait(1.0)
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if self.wait(3.0) is None:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.wait(3.0)


def spawn_gated(argv: list[str], env: dict[str, str] | None = None, *, stdout_to_stderr: bool = False) -> GatedChild:
    """Fork ``argv`` held before exec (see :class:`GatedChild`); its stdout may go to stderr."""
    return GatedChild(argv, env=env, stdout_to_stderr=stdout_to_stderr)
