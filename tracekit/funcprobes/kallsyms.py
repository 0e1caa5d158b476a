"""Resolve probe functions against a ``/proc/kallsyms`` text.

Contract
--------
:func:`parse_kallsyms` reads the text (``ADDRESS TYPE NAME [MODULE]`` per line) into a
:class:`SymbolTable`. :func:`resolve` finds the symbol to attach a :class:`FuncProbe` to: the exact
name, else a compiler clone of it (``name.isra.0``, ``name.constprop.0``, ``name.part.0``; never a
``.cold`` fragment), and returns a :class:`Resolution` with the attach symbol, whether BTF
arguments can be used (only for the exact name), and a reason when the function is absent
(inlined or not built). Addresses are ints; nothing is read from the kernel unless
:func:`load_kallsyms` is called. Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tracekit.funcprobes.spec import FuncProbe

__all__ = ["SymbolTable", "Resolution", "parse_kallsyms", "load_kallsyms", "resolve", "resolve_all"]

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
    (4294901984, 'stage2_split_walker+0x4')
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


@dataclass(frozen=True)
class Resolution:
    """Where (and whether) a probe attaches on one kernel."""

    probe: FuncProbe
    symbol: str | None
    btf_args: bool
    reason: str

    @property
    def available(self) -> bool:
        return self.symbol is not None


def resolve(probe: FuncProbe, table: SymbolTable) -> Resolution:
    """Find the attach symbol of ``probe`` in ``table``, with the reason for what was chosen."""
    if probe.symbol in table.by_name:
        return Resolution(probe, probe.symbol, True, "exact symbol")
    clones = table.clones(probe.symbol)
    if clones:
        return Resolution(
            probe, clones[0], False, f"only the compiler clone {clones[0]} exists: no BTF prototype, arguments not fetched"
        )
    why = probe.note or "not in kallsyms: inlined into its callers or not built into this kernel"
    return Resolution(probe, None, False, f"{probe.symbol} absent ({why})")


def resolve_all(probes: tuple[FuncProbe, ...], table: SymbolTable) -> list[Resolution]:
    """:func:`resolve` for each probe, in order."""
    return [resolve(p, table) for p in probes]
