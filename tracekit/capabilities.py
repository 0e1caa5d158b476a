"""What this host lets tracekit do: the capability report behind ``tracekit doctor``.

:func:`probe_host` runs every check once (no state is left behind: a test BPF program is loaded
and closed at once) and returns a :class:`CapabilityReport` whose checks each carry ``name``, ``ok``,
``detail`` and, when not ok, the exact ``fix``. Checks test for features, never kernel versions.
Nothing here raises for a missing feature; a failed check is data.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tracekit.errors import MissingCapability
from tracekit.funcprobes.btf_offsets import BtfTypes
from tracekit.host import BTF_VMLINUX, TRACEFS_ROOTS, tracefs_root

__all__ = [
    "Check",
    "CapabilityReport",
    "probe_host",
    "recording_blockers",
]

KVM_DEV = Path("/dev/kvm")
KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00)
KVM_API_VERSION = 12

@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class CapabilityReport:
    checks: list[Check] = field(default_factory=list)

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_json(self) -> dict:
        return {"checks": [asdict(c) for c in self.checks]}


# -- individual checks -------------------------------------------------------------------------------

_CAP_PERFMON, _CAP_BPF, _CAP_SYS_ADMIN = 38, 39, 21


def _effective_caps() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_privileges() -> Check:
    caps = _effective_caps()
    has = lambda bit: bool(caps & (1 << bit))  # noqa: E731
    if os.geteuid() == 0 or (has(_CAP_BPF) and has(_CAP_PERFMON)):
        names = [n for n, b in (("CAP_BPF", _CAP_BPF), ("CAP_PERFMON", _CAP_PERFMON), ("CAP_SYS_ADMIN", _CAP_SYS_ADMIN)) if has(b)]
        return Check("privileges", True, f"euid {os.geteuid()}; {', '.join(names) or 'no capabilities'}")
    return Check("privileges", False, f"euid {os.geteuid()} without CAP_BPF+CAP_PERFMON",
                 "run as root (sudo tracekit ...) or grant CAP_BPF,CAP_PERFMON,CAP_SYS_ADMIN")


def check_tracefs() -> Check:
    root = tracefs_root()
    if root is not None:
        return Check("tracefs", True, f"mounted at {root}")
    for candidate in TRACEFS_ROOTS:
        if os.path.isdir(candidate) and not os.access(candidate, os.R_OK | os.X_OK):
            return Check("tracefs", False, f"{candidate} is not accessible to euid {os.geteuid()}",
                         f"run as root, or give this user access to tracefs (mount -o remount,mode=0755 {candidate})")
    return Check("tracefs", False, "no tracefs events directory", "mount -t tracefs tracefs /sys/kernel/tracing")


def recording_blockers(backend: str = "bcc", kvm: bool = False) -> list[str]:
    """What keeps this user from recording with ``backend`` (and, with ``kvm``, from running the
    built-in workload), as ``"name: detail (fix: ...)"`` lines; empty when nothing does. The tracefs
    backend needs tracefs access only; bcc also needs CAP_BPF and CAP_PERFMON (or root)."""
    checks = [check_tracefs()] if backend == "tracefs" else [check_privileges(), check_tracefs()]
    if kvm:
        checks.append(check_kvm())
    return [f"{c.name}: {c.detail} (fix: {c.fix})" for c in checks if not c.ok]


def check_btf() -> Check:
    if BTF_VMLINUX.is_file():
        return Check("btf", True, f"{BTF_VMLINUX} present")
    return Check("btf", False, "no kernel BTF", "use a kernel built with CONFIG_DEBUG_INFO_BTF=y")


def check_kallsyms() -> Check:
    try:
        with open("/proc/kallsyms") as f:
            lines = [next(f) for _ in range(8)]
    except (OSError, StopIteration) as error:
        return Check("kallsyms", False, f"/proc/kallsyms unreadable ({error})", "run as root")
    if all(line.startswith("0000000000000000") for line in lines):
        return Check("kallsyms", False, "addresses hidden (kptr_restrict)", "sysctl kernel.kptr_restrict=0, and run as root")
    return Check("kallsyms", True, "/proc/kallsyms shows addresses")


def check_kvm() -> Check:
    if not KVM_DEV.exists():
        return Check("kvm", False, "/dev/kvm is absent",
                     "load KVM (modprobe kvm_intel or kvm_amd) and enable virtualisation in firmware")
    try:
        fd = os.open(KVM_DEV, os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        return Check("kvm", False, f"cannot open /dev/kvm ({error.strerror})", "run as root or add the user to group kvm")
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as error:
        return Check("kvm", False, f"KVM_GET_API_VERSION failed ({error.strerror})", "check the KVM module")
    finally:
        os.close(fd)
    modules = sorted(p.name for p in Path("/sys/module").glob("kvm*")) if Path("/sys/module").is_dir() else []
    if version != KVM_API_VERSION:
        return Check("kvm", False, f"KVM API version {version}, expected {KVM_API_VERSION}", "use a standard KVM")
    return Check("kvm", True, f"/dev/kvm usable (API {version}; modules {', '.join(modules) or '?'})")


def _bcc_system_dirs() -> list[Path]:
    return [p for p in (Path("/usr/lib/python3/dist-packages"), Path("/usr/lib/python3/site-packages")) if (p / "bcc").is_dir()]


def check_bcc() -> Check:
    try:
        import bcc  # noqa: F401  (optional dependency: only whether it loads matters here)
    except ImportError:
        system = _bcc_system_dirs()
        if system:
            return Check("bcc", False, f"bcc is installed in {system[0]} but this Python ({platform.python_version()}) does not see it",
                         "run tracekit from the project's venv (scripts/install.sh makes it with --system-site-packages)")
        return Check("bcc", False, "bcc is not installed", "apt-get install python3-bpfcc (or use --backend tracefs)")
    except Exception as error:  # bcc raises plain Exceptions when libbcc is broken
        return Check("bcc", False, f"bcc failed to import: {error}", "reinstall python3-bpfcc and libbpfcc")
    version = getattr(bcc, "__version__", "?")
    return Check("bcc", True, f"bcc {version} from {Path(bcc.__file__).parent}")


def _uts_release(build: Path) -> str | None:
    header = build / "include" / "generated" / "utsrelease.h"
    try:
        match = re.search(r'UTS_RELEASE\s+"([^"]+)"', header.read_text())
    except OSError:
        return None
    return match.group(1) if match else None


def check_kernel_headers() -> Check:
    release = platform.release()
    build = Path("/lib/modules") / release / "build"
    if Path("/sys/kernel/kheaders.tar.xz").exists() and not build.exists():
        return Check("kernel_headers", True, "CONFIG_IKHEADERS: bcc extracts /sys/kernel/kheaders.tar.xz")
    if not build.exists():
        return Check("kernel_headers", False, f"no headers for {release} ({build} missing)",
                     f"apt-get install linux-headers-{release}, or run scripts/install.sh, which links the "
                     "distribution's headers as a fallback for tracepoint programs")
    headers_release = _uts_release(build.resolve())
    if headers_release == release:
        return Check("kernel_headers", True, f"matching headers for {release}")
    return Check("kernel_headers", True,
                 f"fallback in use: headers of {headers_release or 'another kernel'} linked for {release}; safe for "
                 "tracepoint programs (layouts come from tracefs), NOT for function probes reading kernel structs",
                 "install headers matching the running kernel for function probes")


def check_kprobes() -> Check:
    root = tracefs_root()
    if root is not None and (root / "kprobe_events").exists():
        return Check("kprobes", True, "kprobe_events present")
    if Path("/sys/bus/event_source/devices/kprobe").exists():
        return Check("kprobes", True, "kprobe PMU present")
    return Check("kprobes", False, "CONFIG_KPROBES is off (no kprobe_events, no kprobe PMU)",
                 "use a kernel with CONFIG_KPROBES=y, or run function probes in 'tracekit lab arm64|x86'")


# bpf(2) via libc: BPF_PROG_LOAD with BPF_PROG_TYPE_TRACING / BPF_TRACE_FENTRY, then attach and close.
_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
_BPF_PROG_LOAD, _BPF_RAW_TRACEPOINT_OPEN = 5, 17
_BPF_PROG_TYPE_TRACING, _BPF_TRACE_FENTRY = 26, 24
_FENTRY_TARGETS = ("kvm_vm_ioctl", "kvm_vcpu_ioctl", "do_sys_openat2")


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    ret = libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return ret


def check_fentry() -> Check:
    if _SYS_BPF is None:
        return Check("fentry", False, f"fentry check not implemented for {platform.machine()}", "")
    try:
        types = BtfTypes.load(BTF_VMLINUX)
    except MissingCapability:
        return Check("fentry", False, "no kernel BTF, so no fentry", "use a kernel built with CONFIG_DEBUG_INFO_BTF=y")
    target = type_id = None
    for name in _FENTRY_TARGETS:
        type_id = types.function_id(name)
        if type_id:
            target = name
            break
    if not type_id:
        return Check("fentry", False, "no probe target function in BTF", "")
    insns = (ctypes.c_uint64 * 2)(0x00000000000000B7, 0x0000000000000095)  # r0 = 0; exit
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = (ctypes.c_uint8 * 160)()
    view = memoryview(attr).cast("B")
    struct.pack_into("<II", view, 0, _BPF_PROG_TYPE_TRACING, 2)
    struct.pack_into("<QQ", view, 8, ctypes.addressof(insns), ctypes.addressof(license_))
    struct.pack_into("<I", view, 68, _BPF_TRACE_FENTRY)
    struct.pack_into("<I", view, 108, type_id)
    try:
        prog_fd = _bpf(_BPF_PROG_LOAD, attr)
    except OSError as error:
        return Check("fentry", False, f"loading an fentry program on {target} refused: {errno.errorcode.get(error.errno, error.errno)}",
                     "function probes need kprobes or fentry; run them in 'tracekit lab arm64|x86'")
    try:
        link = (ctypes.c_uint8 * 16)()
        struct.pack_into("<QI", memoryview(link).cast("B"), 0, 0, prog_fd)
        try:
            link_fd = _bpf(_BPF_RAW_TRACEPOINT_OPEN, link)
        except OSError as error:
            return Check("fentry", False, f"attaching fentry to {target} refused: {errno.errorcode.get(error.errno, error.errno)}",
                         "function probes need kprobes or fentry; run them in 'tracekit lab arm64|x86'")
        os.close(link_fd)
    finally:
        os.close(prog_fd)
    return Check("fentry", True, f"an fentry program attached to {target} (and was detached)")


def probe_host() -> CapabilityReport:
    """Run every check; see the module docstring."""
    report = CapabilityReport()
    for check in (check_privileges, check_tracefs, check_btf, check_kallsyms, check_kvm, check_bcc,
                  check_kernel_headers, check_kprobes, check_fentry):
        try:
            report.checks.append(check())
        except Exception as error:  # a check must never abort the report
            report.checks.append(Check(check.__name__.removeprefix("check_"), False, f"check failed: {error}", ""))
    return report
