"""Can the function-probe families attach on this machine, how, and if not, why.

:func:`kprobe_support` reads tracefs and kallsyms into a :class:`Support`: kprobes at all,
``kprobe_events``, BTF argument names (``PROBE_EVENTS_BTF_ARGS``) and ``$argN`` (from tracefs's
``README``), with a one-line reason. :func:`family_report` resolves each probe of a family on a
kernel (its symbols, BTF and support) into rows of status (``attachable``, ``absent``,
``no-kprobes``, ``wrong-arch``) and mode (with BTF args, by register, without args), and
:func:`choose_backend` picks ``bcc``, ``tracefs`` or ``none``. Nothing is attached.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from tracekit.errors import MissingCapability
from tracekit.funcprobes.fetchargs import KVM_MODULES, FetchStyle, KernelTypes, arch_of, kernel_types
from tracekit.funcprobes.kallsyms import Resolution, resolve, resolve_all
from tracekit.funcprobes.spec import FuncProbe
from tracekit.host import BTF_DIR, TRACEFS, SymbolTable

__all__ = ["Support", "kprobe_support", "fetch_style", "running_types", "resolve_running", "family_report",
           "choose_backend", "FAMILY_ARCH"]

#: Family -> the ``platform.machine()`` values it applies to.
FAMILY_ARCH = {"stage2": ("aarch64", "arm64"), "tdp": ("x86_64", "amd64")}


@dataclass(frozen=True)
class Support:
    kprobes: bool
    kprobe_events: bool
    btf_args: bool
    reason: str
    arg_n: bool = False


def kprobe_support(symbols: SymbolTable, tracefs: Path = TRACEFS) -> Support:
    """What this kernel offers for function probes (see the module contract)."""
    events = (tracefs / "kprobe_events").exists()
    kprobes = "register_kprobe" in symbols.by_name or events
    try:
        readme = (tracefs / "README").read_text()
    except OSError:
        readme = ""
    btf_args = events and "<argname>" in readme
    arg_n = events and "$arg<N>" in readme
    if not kprobes:
        reason = "CONFIG_KPROBES is off: no register_kprobe in kallsyms and no kprobe_events in tracefs"
    elif not events:
        reason = "CONFIG_KPROBE_EVENTS is off: only the bcc backend can attach function probes"
    elif not btf_args:
        reason = ("kprobe_events lacks BTF argument names (CONFIG_PROBE_EVENTS_BTF_ARGS, v6.8+): "
                  "arguments are fetched by register and BTF offset")
    else:
        reason = "kprobes, kprobe_events and BTF argument names are available"
    return Support(kprobes, events, btf_args, reason, arg_n)


def fetch_style(support: Support, machine: str) -> FetchStyle:
    """How ``kprobe_events`` lines fetch arguments on this kernel (``machine`` as ``platform.machine()``)."""
    return FetchStyle(arch_of(machine), support.btf_args, support.arg_n)


def running_types(btf_dir: Path = BTF_DIR) -> KernelTypes | None:
    """The running kernel's BTF (``vmlinux`` and the loaded KVM modules'), None when unreadable."""
    try:
        return kernel_types(btf_dir / "vmlinux", tuple(btf_dir / m for m in KVM_MODULES))
    except MissingCapability:
        return None


def resolve_running(probes: tuple[FuncProbe, ...], symbols: SymbolTable, tracefs: Path = TRACEFS,
                    btf_dir: Path = BTF_DIR, machine: str | None = None) -> list[Resolution]:  # fmt: skip
    """Each probe resolved on the running kernel: its symbols, BTF and ``kprobe_events`` syntax."""
    style = fetch_style(kprobe_support(symbols, tracefs), machine or platform.machine())
    return resolve_all(probes, symbols, running_types(btf_dir), style)


def family_report(family: str, probes: tuple[FuncProbe, ...], symbols: SymbolTable, support: Support,
                  machine: str | None = None, types: KernelTypes | None = None) -> list[dict]:  # fmt: skip
    """One row per probe: where it would attach, whether it can and how its arguments are fetched
    (:meth:`~tracekit.funcprobes.kallsyms.Resolution.as_dict` plus ``status``), with the reason."""
    machine = machine or platform.machine()
    style = fetch_style(support, FAMILY_ARCH[family][0])
    rows = []
    for probe in probes:
        res = resolve(probe, symbols, types, style)
        if machine not in FAMILY_ARCH[family]:
            status, reason = "wrong-arch", f"the {family} family probes {FAMILY_ARCH[family][0]} KVM; this is {machine}"
        elif not res.available:
            status, reason = "absent", res.reason
        elif not support.kprobes:
            status, reason = "no-kprobes", f"{support.reason}; where it could: {res.reason}"
        else:
            status, reason = "attachable", res.reason
        rows.append({**res.as_dict(), "status": status, "reason": reason})
    return rows


def choose_backend(support: Support, bcc_ok: bool, btf_ok: bool) -> tuple[str, str]:
    """(``bcc`` | ``tracefs`` | ``none``, why): capability detection, never a version check."""
    if not support.kprobes:
        return "none", support.reason
    if bcc_ok and btf_ok:
        return "bcc", "kprobes with bcc and kernel BTF: in-kernel aggregation of the hot visitor probes"
    if support.kprobe_events and (support.btf_args or btf_ok):
        how = "BTF argument names" if support.btf_args else "registers and BTF member offsets"
        return "tracefs", f"kprobe_events with {how} (no compiler needed; hist triggers aggregate)"
    return "none", support.reason if not support.kprobe_events else "neither bcc+BTF nor kprobe_events with BTF"
