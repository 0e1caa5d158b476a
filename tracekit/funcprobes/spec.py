"""Function-probe specifications and their ``kprobe_events`` lines.

A :class:`FuncProbe` names one kernel function of a probe family (``stage2`` on arm64, ``tdp`` on
x86), the role of its events in a capture and the arguments to fetch as expressions on the
function's parameters (``ctx->level``, ``*ptep``; ``|`` separates the forms of different kernels).
:func:`kprobe_event_lines` writes the entry probe ``p:GROUP/NAME`` with the fetch arguments
resolved for one kernel (:mod:`tracekit.funcprobes.kallsyms`) and, when ``timed``, the return probe
``r:GROUP/NAME_ret`` with ``ret=$retval``. Standard library only.
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

    ``args`` are ``(field, expression)`` pairs (alternatives separated by ``|``); ``hot`` marks per-entry probes that fire once
    per page-table entry (aggregate in the kernel); ``timed`` adds a return probe (duration, ret);
    ``optional`` marks functions that distribution builds often inline (absence is expected);
    ``since`` says which kernel brought the function (named when a kernel lacks it).
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
    since: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown probe role {self.role!r}")


def event_names(probe: FuncProbe) -> tuple[str, str | None]:
    """tracefs event names (entry, return or None) of ``probe`` in :data:`TRACEFS_GROUP`."""
    return probe.name, (f"{probe.name}_ret" if probe.timed else None)


def kprobe_event_lines(probe: FuncProbe, symbol: str, fetch: tuple[tuple[str, str], ...] = (), *,
                       group: str = TRACEFS_GROUP) -> list[str]:  # fmt: skip
    """``kprobe_events`` lines for ``probe`` attached at ``symbol`` with the ``(field, fetch argument)`` pairs.

    >>> p = FuncProbe("split", "kvm_pgtable_stage2_split", "split", (("addr", "addr"), ("size", "size")))
    >>> kprobe_event_lines(p, "kvm_pgtable_stage2_split", (("addr", "%x1:u64"), ("size", "%x2:u64")))
    ['p:tk/split kvm_pgtable_stage2_split addr=%x1:u64 size=%x2:u64', 'r:tk/split_ret kvm_pgtable_stage2_split ret=$retval']
    >>> kprobe_event_lines(p, "kvm_pgtable_stage2_split.isra.0")[0]
    'p:tk/split kvm_pgtable_stage2_split.isra.0'
    """
    entry, ret = event_names(probe)
    fetch_text = " ".join(f"{name}={arg}" for name, arg in fetch)
    lines = [f"p:{group}/{entry} {symbol} {fetch_text}".rstrip()]
    if ret is not None:
        lines.append(f"r:{group}/{ret} {symbol}" + (" ret=$retval" if probe.returns_value else ""))
    return lines
