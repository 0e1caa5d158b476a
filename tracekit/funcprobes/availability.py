"""Can the function-probe families attach on this machine, and if not, why.

Contract
--------
:func:`kprobe_support` inspects tracefs and kallsyms and returns a :class:`Support` with booleans
for tracefs ``kprobe_events`` (``CONFIG_KPROBE_EVENTS``), kprobes at all (``CONFIG_KPROBES``:
``register_kprobe`` in kallsyms), BTF argument names (``CONFIG_PROBE_EVENTS_BTF_ARGS``, from the
``README`` of tracefs), and a one-line reason when kprobes are missing. :func:`family_report`
combines that with the symbol resolution of each probe of a family and the architecture (``stage2``
needs arm64, ``tdp`` x86-64) into rows ``{"probe", "symbol", "status", "reason"}`` with status
``attachable``, ``absent`` (inlined or not built), ``no-kprobes`` or ``wrong-arch``, and
:func:`choose_backend` picks ``bcc`` (kprobes + bcc + BTF), ``tracefs`` (kprobe_events), or
``none`` with the reason. Paths are parameters so tests run on recorded files; nothing is attached.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from tracekit.funcprobes.kallsyms import SymbolTable, resolve
from tracekit.funcprobes.spec import FuncProbe

__all__ = ["Support", "kprobe_support", "family_report", "choose_backend", "FAMILY_ARCH"]

#: Family -> the ``platform.machine()`` values it applies to.
FAMILY_ARCH = {"stage2": ("aarch64", "arm64"), "tdp": ("x86_64", "amd64")}


@dataclass(frozen=True)
class Support:
    kprobes: bool
    kprobe_events: bool
    btf_args: bool
    reason: str


def kprobe_support(symbols: SymbolTable, tracefs: Path = Path("/sys/kernel/tracing")) -> Support:
    """What this kernel offers for function probes (see the module contract)."""
    events = (tracefs / "kprobe_events").exists()
    kprobes = "register_kprobe" in symbols.by_name or events
    try:
        readme = (tracefs / "README").read_text()
    except OSError:
        readme = ""
    btf_args = events and "<argname>" in readme
    if not kprobes:
        reason = "CONFIG_KPROBES is off: no register_kprobe in kallsyms and no kprobe_events in tracefs"
    elif not events:
        reason = "CONFIG_KPROBE_EVENTS is off: only the bcc backend can attach function probes"
    elif not btf_args:
        reason = "kprobe_events lacks BTF argument names (CONFIG_PROBE_EVENTS_BTF_ARGS, v6.8+)"
    else:
        reason = "kprobes, kprobe_events and BTF argument names are available"
    return Support(kprobes, events, btf_args, reason)


def family_report(family: str, probes: tuple[FuncProbe, ...], symbols: SymbolTable, support: Support,
                  machine: str | None = None) -> list[dict]:  # fmt: skip
    """One row per probe: where it would attach and whether it can, with the reason."""
    machine = machine or platform.machine()
    rows = []
    for probe in probes:
        res = resolve(probe, symbols)
        if machine not in FAMILY_ARCH[family]:
            status, reason = "wrong-arch", f"the {family} family probes {FAMILY_ARCH[family][0]} KVM; this is {machine}"
        elif not res.available:
            status, reason = "absent", res.reason
        elif not support.kprobes:
            status, reason = "no-kprobes", support.reason
        else:
            status, reason = "attachable", res.reason
        rows.append({"probe": probe.name, "symbol": res.symbol, "status": status, "reason": reason})
    return rows


def choose_backend(support: Support, bcc_ok: bool, btf_ok: bool) -> tuple[str, str]:
    """(``bcc`` | ``tracefs`` | ``none``, why): capability detection, never a version check."""
    if not support.kprobes:
        return "none", support.reason
    if bcc_ok and btf_ok:
        return "bcc", "kprobes with bcc and kernel BTF: in-kernel aggregation of the hot visitor probes"
    if support.kprobe_events and support.btf_args:
        return "tracefs", "kprobe_events with BTF argument names (no compiler needed; hist triggers aggregate)"
    return "none", support.reason if not support.kprobe_events else "neither bcc+BTF nor kprobe_events BTF arguments"
