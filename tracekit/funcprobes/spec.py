"""Function-probe specifications and their tracefs ``kprobe_events`` form.

Contract
--------
A :class:`FuncProbe` names one kernel function of a probe family (``stage2`` on arm64, ``tdp`` on
x86), the role of its events in a capture (``walk``, ``visit``, ``split``, ``fault``, ``call``)
and the arguments to fetch, written as tracefs BTF argument expressions (``ctx->level``,
``walker->flags``), never as offsets. :func:`kprobe_event_lines` turns a probe resolved against a
symbol table (:mod:`tracekit.funcprobes.kallsyms`) into the lines written to ``kprobe_events``: an
entry probe ``p:GROUP/NAME`` and, when ``timed``, a return probe ``r:GROUP/NAME_ret`` with
``ret=$retval``. A symbol that only exists with a compiler suffix (``.isra.0``) has no BTF
prototype, so its probe is emitted without arguments (the resolution says so). Standard library
only: this module also runs inside the lab guests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FuncProbe", "ROLES", "TRACEFS_GROUP", "kprobe_event_lines", "event_names"]

#: Capture family each role's events feed.
ROLES = {
    "walk": "stage2_walk",
    "visit": "stage2_visit",
    "split": "split",
    "fault": "fault",
    "call": "func_call",
}

#: The tracefs event group of every tracekit function probe.
TRACEFS_GROUP = "tk"


@dataclass(frozen=True)
class FuncProbe:
    """One probed kernel function.

    ``args`` are ``(field, BTF expression)`` pairs; ``hot`` marks per-entry probes that fire once
    per page-table entry (aggregate in the kernel); ``timed`` adds a return probe (duration, ret);
    ``optional`` marks functions that distribution builds often inline (absence is expected).
    """

    name: str
    symbol: str
    role: str
    args: tuple[tuple[str, str], ...] = ()
    timed: bool = True
    hot: bool = False
    optional: bool = False
    returns_value: bool = True
    note: str = ""
    aliases: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown probe role {self.role!r}")


def event_names(probe: FuncProbe) -> tuple[str, str | None]:
    """tracefs event names (entry, return or None) of ``probe`` in :data:`TRACEFS_GROUP`."""
    return probe.name, (f"{probe.name}_ret" if probe.timed else None)


def kprobe_event_lines(probe: FuncProbe, symbol: str, *, with_args: bool = True, group: str = TRACEFS_GROUP) -> list[str]:
    """``kprobe_events`` lines for ``probe`` attached at the resolved ``symbol``.

    >>> p = FuncProbe("split", "kvm_pgtable_stage2_split", "split", (("addr", "addr"), ("size", "size")))
    >>> kprobe_event_lines(p, "kvm_pgtable_stage2_split")
    ['p:tk/split kvm_pgtable_stage2_split addr=addr size=size', 'r:tk/split_ret kvm_pgtable_stage2_split ret=$retval']
    >>> kprobe_event_lines(p, "kvm_pgtable_stage2_split.isra.0", with_args=False)[0]
    'p:tk/split kvm_pgtable_stage2_split.isra.0'
    """
    entry, ret = event_names(probe)
    fetch = " ".join(f"{name}={expr}" for name, expr in probe.args) if with_args else ""
    lines = [f"p:{group}/{entry} {symbol} {fetch}".rstrip()]
    if ret is not None:
        lines.append(f"r:{group}/{ret} {symbol}" + (" ret=$retval" if probe.returns_value else ""))
    return lines
