"""Boot one emulated lab machine under QEMU (TCG) and bring its result archive back.

:func:`qemu_command` builds the command line for ``arm64`` (``virt`` with EL2 and GICv3) or ``x86``
(nested SVM/NPT), 2 vCPUs, the console to a file and a virtio-serial port ``tracekit.out`` on which the
guest writes a tar of its results. :func:`build_initramfs` packs the userland, ``/init``, tracekit's
sources and the kernel's modules. :func:`boot` runs QEMU with a hard timeout (QEMU dies with tracekit:
``PR_SET_PDEATHSIG``) and returns a :class:`BootResult` (console, archive, seconds, the guest's exit
code from ``tk-done rc=N``). LabError when the guest hangs or QEMU fails to start; GuestLockup, at once,
when the guest's kernel reports a hard lockup on its console (an emulation fault: nothing runs after it).
"""

from __future__ import annotations

import importlib
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import tracekit
from tracekit.errors import LabError
from tracekit.lab.fetch import QEMU_BINARY, QEMU_PACKAGE, require_tool
from tracekit.lab.initramfs import write_initramfs
from tracekit.prctl import PR_SET_PDEATHSIG, libc_prctl

__all__ = ["qemu_command", "build_initramfs", "boot", "BootResult", "GuestLockup", "GUEST_PORT", "DEFAULT_TIMEOUT",
           "MEMORY_MIB", "LAUNCHER", "RECORDER_X86_FEATURES"]

GUEST_PORT = "tracekit.out"
DEFAULT_TIMEOUT = 600
#: Seconds between looks at the guest's console while it runs.
WATCH_SECONDS = 5.0
#: What the guest kernel prints when a CPU stopped taking interrupts (its NMI watchdog): the guest never
#: recovers, so waiting for the timeout (30 min for a recorder run) only delays the failure.
LOCKUP_MARK = re.compile(r"^.*detected hard LOCKUP.*$", re.MULTILINE)


class GuestLockup(LabError):
    """The guest's kernel reported a hard lockup and QEMU was killed (see the module docstring)."""
#: Default guest memory (MiB) of each lab architecture.
MEMORY_MIB = {"arm64": 2048, "x86": 3072}
_CONSOLE = {"arm64": "ttyAMA0", "x86": "ttyS0"}
_EXCLUDE = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
    "usr/lib/python3.13/test",
    "usr/lib/python3.13/idlelib",
    "usr/lib/python3.13/pydoc_data",
    "usr/lib/python3.13/ensurepip",
    "var/cache",
    "var/lib/apt",
)
#: The guest's ``tracekit`` command (the console script pip would write): ``tracekit record`` runs it twice.
LAUNCHER = b"#!/usr/bin/python3\nimport sys\nfrom tracekit.cli import main\nsys.exit(main())\n"


@dataclass
class BootResult:
    console: str
    archive: Path
    seconds: float
    guest_rc: int | None
    command: list[str]


#: x86 CPU features the recorder userland needs beyond ``qemu64``: pyarrow's manylinux wheels are
#: built for SSE4.2 (libarrow dies with an invalid opcode without them); ``cx16`` stays off.
RECORDER_X86_FEATURES = "+ssse3,+sse4.1,+sse4.2,+popcnt"


def qemu_command(
    arch: str, kernel: Path, initrd: Path, console_log: Path, archive: Path, append: str, smp: int = 2,
    memory_mib: int = 0, cpu_features: str = "",
) -> list[str]:
    """The QEMU argv of one lab boot (see the module contract); ``cpu_features`` adds to the x86 CPU model."""
    binary = require_tool(QEMU_BINARY[arch], QEMU_PACKAGE[arch])
    if arch == "arm64":
        machine = ["-M", "virt,virtualization=on,gic-version=3", "-cpu", "max,pauth-impdef=on"]
    else:
        # thread=single: one host thread runs both vCPUs in turn. x86 patches live kernel text with int3
        # (text_poke_bp: static keys at boot, every kprobe) while the other vCPU runs; under multi-threaded
        # TCG that vCPU could still execute the int3 after the patch completed ("Oops: int3" in
        # sched_clock_cpu or __schedule, twice in about twenty x86 runs). arm64 patches under stop_machine.
        machine = ["-accel", "tcg,thread=single",
                   "-cpu", "qemu64,+svm,+npt,+pdpe1gb,-cx16" + (f",{cpu_features}" if cpu_features else "")]
    return [
        binary,
        *machine,
        "-smp", str(smp),
        "-m", str(memory_mib or MEMORY_MIB[arch]),
        "-display", "none",
        "-monitor", "none",
        "-serial", f"file:{console_log}",
        "-no-reboot",
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", f"console={_CONSOLE[arch]} panic=-1 loglevel=4 {append}".strip(),
        "-device", "virtio-serial-pci",
        "-chardev", f"file,id=tkout,path={archive}",
        "-device", f"virtserialport,chardev=tkout,name={GUEST_PORT}",
    ]  # fmt: skip


_PACKAGE_SUFFIXES = (".py", ".c", ".h", ".sh", ".txt")


def package_dirs() -> dict[str, Path]:
    """tracekit's package directories by dotted name: ``tracekit`` plus the subpackages that live
    elsewhere in the source tree (``tracekit.probes``, ``tracekit.analysis``)."""
    root = Path(tracekit.__file__).parent
    dirs = {"tracekit": root}
    for name in ("tracekit.probes", "tracekit.analysis"):
        try:
            folder = Path(list(importlib.import_module(name).__path__)[0])
        except ImportError:
            continue
        if folder != root / name.split(".")[-1]:
            dirs[name] = folder
    return dirs


def build_initramfs(path: Path, userland: Path | None, modules: tuple[tuple[str, Path], ...] = ()) -> int:
    """Write the guest initramfs to ``path``; returns the number of archive entries."""
    extra: dict[str, bytes] = {"init": resources.files("tracekit.lab").joinpath("guest_init.sh").read_bytes(),
                               "usr/local/bin/tracekit": LAUNCHER}
    # The whole package (the light userland imports only its standard-library modules; the recorder
    # userland runs tracekit record, which needs the BPF sources of tracekit.probes and the
    # CLI's tracekit.analysis, mapped from other directories of the source tree).
    for name, folder in package_dirs().items():
        for source in sorted(folder.rglob("*")):
            if source.is_file() and source.suffix in _PACKAGE_SUFFIXES and "__pycache__" not in source.parts:
                extra[f"opt/tracekit/{name.replace('.', '/')}/{source.relative_to(folder).as_posix()}"] = source.read_bytes()
    for name, module in modules:  # loaded in this order by /init (opt/modules/order)
        extra[f"opt/modules/{name}.ko"] = module.read_bytes()
    if modules:
        extra["opt/modules/order"] = "".join(f"{name}\n" for name, _ in modules).encode()
    return write_initramfs(path, userland, extra, exclude=_EXCLUDE)


def _die_with_parent() -> None:
    """In the QEMU child before exec: SIGKILL it when tracekit dies, even by SIGKILL (PR_SET_PDEATHSIG)."""
    prctl = libc_prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _lockup(console_log: Path) -> str | None:
    """The guest console's hard-lockup line (:data:`LOCKUP_MARK`), None while there is none."""
    try:
        found = LOCKUP_MARK.search(console_log.read_text(errors="replace"))
    except OSError:
        return None
    return found.group(0).strip() if found else None


def boot(command: list[str], console_log: Path, archive: Path, timeout: float = DEFAULT_TIMEOUT) -> BootResult:
    """Run QEMU until the guest powers off, killing it after ``timeout`` seconds, when its kernel locks up
    (GuestLockup) or when tracekit dies."""
    for stale in (console_log, archive):
        stale.unlink(missing_ok=True)
    start = time.monotonic()
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   preexec_fn=_die_with_parent)  # fmt: skip
    except OSError as error:
        raise LabError(f"cannot start {command[0]}: {error.strerror}") from None
    try:
        while True:
            try:  # retried communicate() calls lose no output
                output, _ = process.communicate(timeout=max(0.01, min(WATCH_SECONDS, start + timeout - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                lockup = _lockup(console_log)
                if lockup is None and time.monotonic() < start + timeout:
                    continue
                process.kill()
                process.wait()
                if lockup is not None:
                    raise GuestLockup(f"the emulated guest's kernel locked up ('{lockup}') and was killed; "
                                      f"console log kept at {console_log}") from None
                raise LabError(f"the emulated guest did not finish within {timeout:.0f} s and was killed; "
                               f"console log kept at {console_log}") from None
    except BaseException:
        process.send_signal(signal.SIGKILL)
        process.wait()
        raise
    seconds = time.monotonic() - start
    console = console_log.read_text(errors="replace") if console_log.exists() else ""
    if process.returncode != 0:
        tail = output.decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise LabError(f"{Path(command[0]).name} exited with status {process.returncode}: {tail[0]}")
    match = re.search(r"tk-done rc=(\d+)", console)
    return BootResult(console, archive, seconds, int(match.group(1)) if match else None, command)
