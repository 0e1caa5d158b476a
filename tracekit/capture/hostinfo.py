"""Facts about the recording host that every capture manifest carries.

:func:`host_facts` returns a JSON-serialisable dict (host name, kernel release, machine arch,
page size, KVM module parameters) read from ``uname``, ``sysconf`` and ``/sys/module/kvm*/parameters``;
:func:`clock_anchor` pairs one CLOCK_MONOTONIC reading (the clock of ``ts_ns``) with CLOCK_REALTIME so
that offline tools can print wall-clock times. Nothing here needs privileges; unreadable parameters are
omitted rather than failing.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

__all__ = ["host_facts", "kvm_params", "clock_anchor"]

_SYS_MODULE = Path("/sys/module")


def kvm_params(sys_module: Path = _SYS_MODULE) -> dict[str, dict[str, str]]:
    """``{module: {parameter: value}}`` for every loaded ``kvm*`` module (kvm, kvm_intel, kvm_amd, ...)."""
    params: dict[str, dict[str, str]] = {}
    if not sys_module.is_dir():
        return params
    for module in sorted(sys_module.glob("kvm*")):
        pdir = module / "parameters"
        if not pdir.is_dir():
            continue
        values = {}
        for p in sorted(pdir.iterdir()):
            try:
                values[p.name] = p.read_text().strip()
            except OSError:
                continue
        params[module.name] = values
    return params


def host_facts() -> dict:
    """Host name, kernel release, arch, page size and KVM parameters of the machine this runs on."""
    uname = platform.uname()
    return {
        "host": uname.node,
        "kernel_release": uname.release,
        "arch": uname.machine,
        "page_size": os.sysconf("SC_PAGE_SIZE"),
        "kvm_params": kvm_params(),
    }


def clock_anchor() -> dict:
    """One CLOCK_MONOTONIC / CLOCK_REALTIME pair, read back to back (ns)."""
    mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    real = time.clock_gettime_ns(time.CLOCK_REALTIME)
    return {"monotonic_ns": mono, "realtime_ns": real}
