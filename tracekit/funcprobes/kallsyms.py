"""Probe resolution: the symbol a probe attaches to on one kernel, and how its arguments are fetched.

:func:`resolve` finds a :class:`FuncProbe`'s symbol in a :class:`tracekit.host.SymbolTable` (the exact
name, else a compiler clone such as ``.isra.0``, never a ``.cold`` fragment) and, from the kernel's BTF,
its fetch arguments
(:mod:`tracekit.funcprobes.fetchargs`): a :class:`Resolution` says "attached with BTF args",
"by register", "without args" or "absent", with the reason. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracekit.funcprobes.fetchargs import FetchStyle, KernelTypes, fetch_args
from tracekit.funcprobes.spec import FuncProbe
from tracekit.host import SymbolTable

__all__ = ["MODES", "Resolution", "resolve", "resolve_all"]

#: How a resolved probe attaches: the report's words for each mode.
MODES = {
    "btf-args": "attached with BTF args",
    "register": "attached by register",
    "no-args": "attached without args",
    "absent": "absent",
}


@dataclass(frozen=True)
class Resolution:
    """Where (and whether) a probe attaches on one kernel, and how its arguments are fetched.

    ``mode`` is a key of :data:`MODES`; ``fetch`` the ``(field, kprobe fetch argument)`` pairs;
    ``dropped`` the fields this kernel cannot give, with the reason."""

    probe: FuncProbe
    symbol: str | None
    mode: str
    reason: str
    fetch: tuple[tuple[str, str], ...] = ()
    dropped: tuple[tuple[str, str], ...] = ()

    @property
    def available(self) -> bool:
        return self.symbol is not None

    def as_dict(self) -> dict:
        return {"probe": self.probe.name, "function": self.probe.symbol, "symbol": self.symbol, "mode": self.mode,
                "attach": MODES[self.mode], "reason": self.reason, "fetch": [f"{n}={a}" for n, a in self.fetch],
                "dropped": dict(self.dropped)}  # fmt: skip


def resolve(probe: FuncProbe, table: SymbolTable, types: KernelTypes | None = None, style: FetchStyle | None = None
            ) -> Resolution:  # fmt: skip
    """Find the attach symbol of ``probe`` in ``table`` and its arguments for this kernel.

    ``types`` is the kernel's BTF (prototypes and members; None when unreadable), ``style`` how its
    ``kprobe_events`` fetches (None: BTF argument names, as a 6.8+ kernel)."""
    style = style or FetchStyle("arm64", btf_args=True)
    if probe.symbol not in table.by_name:
        clones = table.clones(probe.symbol)
        if clones:
            return Resolution(probe, clones[0], "no-args",
                              f"only the compiler clone {clones[0]} exists (its arguments may be moved): none fetched")
        return Resolution(probe, None, "absent", _absence(probe, types))
    if not probe.args:
        return Resolution(probe, probe.symbol, "no-args", "exact symbol; the probe fetches no arguments")
    if types is None:
        if style.btf_args:
            first = tuple((name, expr.split("|")[0]) for name, expr in probe.args)
            return Resolution(probe, probe.symbol, "btf-args", "exact symbol; BTF names not checked (no BTF read)", first)
        return Resolution(probe, probe.symbol, "no-args",
                          "exact symbol; no BTF argument names and no BTF to compute register offsets")
    if types.prototype(probe.symbol) is None:
        return Resolution(probe, probe.symbol, "no-args",
                          f"exact symbol; this kernel's BTF has no prototype of {probe.symbol}: no arguments fetched")
    fetch, dropped = fetch_args(probe.symbol, probe.args, types, style)
    missing = "; ".join(f"{name}: {why}" for name, why in dropped.items())
    if not fetch:
        return Resolution(probe, probe.symbol, "no-args", f"exact symbol; {missing}", (), tuple(dropped.items()))
    mode = "btf-args" if style.btf_args else "register"
    how = "BTF argument names" if style.btf_args else f"{style.arch} registers and BTF member offsets"
    reason = f"exact symbol; {how}" + (f"; without {missing}" if missing else "")
    return Resolution(probe, probe.symbol, mode, reason, fetch, tuple(dropped.items()))


def _absence(probe: FuncProbe, types: KernelTypes | None) -> str:
    """Why a function has no symbol: inlined (BTF knows it), not in this kernel (neither knows it: too old
    or renamed), or unknown without BTF."""
    if types is not None and types.prototype(probe.symbol) is not None:
        return f"{probe.symbol} absent: in BTF but not in kallsyms (inlined into its callers)"
    if types is not None and probe.since:
        return f"{probe.symbol} absent: not in kallsyms nor BTF (a kernel before {probe.since}, or inlined or renamed)"
    if types is not None:
        return f"{probe.symbol} absent: not in kallsyms nor BTF ({probe.note or 'inlined or renamed'})"
    why = probe.note or "inlined into its callers or not built into this kernel"
    return f"{probe.symbol} absent: not in kallsyms ({why})"


def resolve_all(probes: tuple[FuncProbe, ...], table: SymbolTable, types: KernelTypes | None = None,
                style: FetchStyle | None = None) -> list[Resolution]:  # fmt: skip
    """:func:`resolve` for each probe, in order."""
    return [resolve(p, table, types, style) for p in probes]
