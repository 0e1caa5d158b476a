"""Probe resolution: the symbol a probe attaches to on one kernel, and how its arguments are fetched.

:func:`parse_kallsyms` reads a ``/proc/kallsyms`` text into a :class:`SymbolTable`. :func:`resolve`
finds a :class:`FuncProbe`'s symbol (the exact name, else a compiler clone such as ``.isra.0``,
never a ``.cold`` fragment) and, from the kernel's BTF, its fetch arguments
(:mod:`tracekit.funcprobes.fetchargs`): a :class:`Resolution` says "attached with BTF args",
"by register", "without args" or "absent", with the reason. Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tracekit.funcprobes.fetchargs import FetchStyle, KernelTypes, fetch_args
from tracekit.funcprobes.spec import FuncProbe

__all__ = ["MODES", "SymbolTable", "Resolution", "parse_kallsyms", "load_kallsyms", "resolve", "resolve_all"]

_CLONE = re.compile(r"^(?P<base>[A-Za-z0-9_]+)\.(?P<suffix>(?:isra|constprop|part|llvm)\.\d+(?:\.(?:isra|constprop|part)\.\d+)*)$")


@dataclass
class SymbolTable:
    """Text symbols by name (first address wins) and sorted for address lookup."""

    by_name: dict[str, int]
    modules: dict[str, str]
    _sorted: list[tuple[int, str]]

    def symbolize(self, address: int) -> str:
        """``name+0xoff`` of the text symbol containing ``address`` (``0x...`` when unknown)."""
        import bisect

        index = bisect.bisect_right(self._sorted, (address, "\uffff")) - 1
        if index < 0 or address == 0:
            return f"{address:#x}"
        base, name = self._sorted[index]
        return name if base == address else f"{name}+{address - base:#x}"

    def clones(self, name: str) -> list[str]:
        """Compiler clones of ``name`` present in the table, sorted."""
        return sorted(s for s in self.by_name if (m := _CLONE.match(s)) and m.group("base") == name)


def parse_kallsyms(text: str) -> SymbolTable:
    """Parse kallsyms text, keeping text symbols (types t/T/W/w).

    >>> t = parse_kallsyms("ffff0001 T kvm_pgtable_walk\\nffff0100 t stage2_split_walker\\n")
    >>> t.by_name["stage2_split_walker"], t.symbolize(0xffff0104)
    (4294902016, 'stage2_split_walker+0x4')
    """
    by_name: dict[str, int] = {}
    modules: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[1] not in ("t", "T", "w", "W"):
            continue
        try:
            address = int(parts[0], 16)
        except ValueError:
            continue
        name = parts[2]
        by_name.setdefault(name, address)
        if len(parts) > 3:
            modules[name] = parts[3].strip("[]")
    ordered = sorted((a, n) for n, a in by_name.items())
    return SymbolTable(by_name, modules, ordered)


def load_kallsyms(path: str | Path = "/proc/kallsyms") -> SymbolTable:
    """Read and parse a kallsyms file (raises OSError when unreadable)."""
    return parse_kallsyms(Path(path).read_text())


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
