"""Gates for live-kernel tests.

Contract: a live test calls one of the ``need_*`` functions before touching the kernel. Where the
host lacks the thing, the test is skipped with the precise reason, unless the environment sets
``TRACEKIT_REQUIRE_LIVE=1``, in which case it fails with that reason instead: CI on a capable host
can then not pass by skipping. :func:`interrupt_and_reap` ends a process a live test started;
:func:`ignores_sigterm` says when a started process has set SIGTERM aside.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

TRACEFS = Path("/sys/kernel/tracing")


def live_required() -> bool:
    """True when skipped live tests must fail instead (``TRACEKIT_REQUIRE_LIVE=1``)."""
    return os.environ.get("TRACEKIT_REQUIRE_LIVE") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip the calling test with ``reason``, or fail it under ``TRACEKIT_REQUIRE_LIVE=1``."""
    if live_required():
        pytest.fail(f"live test required (TRACEKIT_REQUIRE_LIVE=1) but: {reason}")
    pytest.skip(reason)


def need_root() -> None:
    if os.geteuid() != 0:
        skip_or_fail("needs root (or CAP_BPF+CAP_PERFMON+CAP_SYS_ADMIN)")


def need_kvm() -> None:
    if not os.path.exists("/dev/kvm"):
        skip_or_fail("/dev/kvm is absent (KVM not available on this host)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        skip_or_fail("/dev/kvm is not readable and writable by this user")


def need_tracefs() -> None:
    need_root()
    if not (TRACEFS / "events").is_dir():
        skip_or_fail("tracefs is not mounted at /sys/kernel/tracing (mount -t tracefs tracefs /sys/kernel/tracing)")


def need_tracepoint(system: str, event: str) -> None:
    need_tracefs()
    if not (TRACEFS / "events" / system / event).is_dir():
        skip_or_fail(f"tracepoint {system}:{event} is not present in this kernel")


def need_bcc() -> None:
    need_root()
    try:
        import bcc  # noqa: F401
    except ImportError:
        skip_or_fail("bcc is not importable (apt-get install python3-bpfcc; run from the project's venv)")


def _lab_or_skip(arch: str, step, *args, **options):
    """``step(*args, **options)`` of the labs for a live test: skip (or fail under TRACEKIT_REQUIRE_LIVE=1) when
    the host lacks QEMU for ``arch``, a capability the lab needs, or a route to Debian's mirror."""
    import shutil

    from tracekit.errors import LabError, MissingCapability
    from tracekit.lab import fetch

    binary, package = fetch.QEMU_BINARY[arch], fetch.QEMU_PACKAGE[arch]
    if shutil.which(binary) is None:
        skip_or_fail(f"{binary} is not installed (apt-get install {package})")
    try:
        return step(*args, **options)
    except MissingCapability as error:
        skip_or_fail(str(error))
    except LabError as error:
        if any(text in str(error) for text in ("cannot read the Debian", "apt-get download", "name no Debian archive")):
            skip_or_fail(f"no route to the Debian mirror for the lab's packages: {error}")
        raise


def run_lab_or_skip(arch: str, scenario: str, output, **options):
    """``tracekit.lab.runner.run_lab`` for a live test, skipping as :func:`_lab_or_skip` says."""
    from tracekit.lab.runner import run_lab

    return _lab_or_skip(arch, run_lab, arch, scenario, output, **options)


def lab_kernel_or_skip(arch: str):
    """The default lab kernel of ``arch``, fetched into the lab cache when it is not there yet (a live test
    that times its boot must not time the download), skipping as :func:`_lab_or_skip` says."""
    from tracekit.lab import fetch, kernels

    return _lab_or_skip(arch, kernels.resolve_kernel, None, arch, fetch.cache_dir())


def interrupt_and_reap(process: subprocess.Popen, timeout: float) -> None:
    """Ctrl-C ``process`` (a workload or recorder a test started), then SIGKILL it if it has not exited
    within ``timeout`` seconds; it is reaped either way, so no test leaves a VM running."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _signal_mask(pid: int, field: str) -> int:
    """Process ``pid``'s /proc status signal mask ``field`` (``SigIgn``, ``SigCgt``); 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1], 16) for line in status.splitlines() if line.startswith(f"{field}:")), 0)


def ignores_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has set SIGTERM to be ignored (its /proc status SigIgn mask)."""
    return bool(_signal_mask(pid, "SigIgn") & (1 << (signal.SIGTERM - 1)))


def catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (its /proc status SigCgt mask)."""
    return bool(_signal_mask(pid, "SigCgt") & (1 << (sig - 1)))
