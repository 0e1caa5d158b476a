"""Facts about the host and its kernel: tracefs, kernel symbols, BTF, KVM parameters, clocks.

:func:`tracefs_root` finds the mounted tracefs. :class:`Host` reads tracepoint ``format`` files, the
kernel's text symbols (a :class:`SymbolTable` parsed from kallsyms) and BTF blobs from paths given at
construction, so tests run it on recorded files; each is read once and cached. :func:`host_facts`
(name, kernel, arch, page size, KVM module parameters) and :func:`clock_anchor` are what every capture
manifest records. A missing feature is an answer (None, empty), never an error. Standard library only:
the lab guests import it.
"""

from __future__ import annotations

import bisect
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Host",
    "SymbolTable",
    "TRACEFS",
    "TRACEFS_ROOTS",
    "BTF_DIR",
    "BTF_VMLINUX",
    "clock_anchor",
    "host_facts",
    "kvm_params",
    "KALLSYMS",
    "format_fields",
    "kallsyms_has_text_symbol",
    "load_kallsyms",
    "parse_kallsyms",
    "tracefs_root",
]

TRACEFS = Path("/sys/kernel/tracing")
TRACEFS_ROOTS = (TRACEFS, Path("/sys/kernel/debug/tracing"))
KALLSYMS = Path("/proc/kallsyms")
#: The kallsyms types of text (function) symbols, the ones kept: a kprobe can attach only to those.
TEXT_SYMBOL_TYPES = frozenset("tTwW")
BTF_DIR = Path("/sys/kernel/btf")
BTF_VMLINUX = BTF_DIR / "vmlinux"


def tracefs_root() -> Path | None:
    """The mounted tracefs directory (``/sys/kernel/tracing`` or the debugfs fallback) this user can
    read, or None."""
    for root in TRACEFS_ROOTS:
        try:
            if (root / "events").is_dir():
                return root
        except OSError:  # not searchable by this user (tracefs is mode 0700 by default)
            continue
    return None


_FIELD_RE = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>-?\d+);")


def format_fields(text: str) -> list[tuple[str, str, int, int, bool]]:
    """The fields of a tracepoint ``format`` text: ``(name, C declaration, offset, size, signed)``."""
    fields = []
    for match in _FIELD_RE.finditer(text):
        decl = match.group("decl").strip()
        name = re.sub(r"\[.*\]$", "", decl.split()[-1]).lstrip("*")
        fields.append((name, decl, int(match.group("off")), int(match.group("size")), match.group("signed") == "1"))
    return fields


_CLONE = re.compile(r"^(?P<base>[A-Za-z0-9_]+)\.(?P<suffix>(?:isra|constprop|part|llvm)\.\d+(?:\.(?:isra|constprop|part)\.\d+)*)$")


@dataclass
class SymbolTable:
    """Text symbols by name (first address wins) and sorted for address lookup."""

    by_name: dict[str, int]
    modules: dict[str, str]
    _sorted: list[tuple[int, str]]

    def symbolize(self, address: int) -> str:
        """``name+0xoff`` of the text symbol containing ``address`` (``0x...`` when unknown)."""
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
        if len(parts) < 3 or parts[1] not in TEXT_SYMBOL_TYPES:
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


def load_kallsyms(path: str | Path = KALLSYMS) -> SymbolTable:
    """Read and parse a kallsyms file (raises OSError when unreadable)."""
    return parse_kallsyms(Path(path).read_text())


def kallsyms_has_text_symbol(path: str | Path, name: str) -> bool:
    """True when kallsyms at ``path`` lists ``name`` as a text symbol (as :func:`parse_kallsyms` keeps
    them); False when it does not or cannot be read."""
    key = name.encode()
    try:
        with open(path, "rb") as lines:
            for line in lines:
                if key in line:
                    parts = line.split()
                    if len(parts) >= 3 and parts[2] == key and parts[1].decode(errors="replace") in TEXT_SYMBOL_TYPES:
                        return True
    except OSError:
        pass
    return False


class Host:
    """What a probe family may ask about the kernel: tracefs formats, symbols and BTF (cached)."""

    def __init__(self, tracefs: Path | None, kallsyms: Path = KALLSYMS, btf: Path = BTF_DIR):
        self.tracefs = tracefs
        self.kallsyms = kallsyms
        self.btf = btf
        self._formats: dict[str, str | None] = {}
        self._symbols: SymbolTable | None = None
        self._looked_up: dict[str, bool] = {}

    def format_text(self, tracepoint: str) -> str | None:
        """The ``format`` file of ``system:event``, or None when absent."""
        if tracepoint not in self._formats:
            text = None
            if self.tracefs is not None:
                system, _, event = tracepoint.partition(":")
                try:
                    text = (self.tracefs / "events" / system / event / "format").read_text()
                except OSError:
                    text = None
            self._formats[tracepoint] = text
        return self._formats[tracepoint]

    def tracepoint_fields(self, tracepoint: str) -> set[str] | None:
        """Field names of ``system:event`` (common fields excluded), or None when it is absent."""
        text = self.format_text(tracepoint)
        if text is None:
            return None
        return {name for name, *_ in format_fields(text) if not name.startswith("common_")}

    def symbol_table(self) -> SymbolTable:
        """The kernel's symbols from ``kallsyms``, parsed once for every family (empty when unreadable)."""
        if self._symbols is None:
            try:
                self._symbols = load_kallsyms(self.kallsyms)
            except OSError:
                self._symbols = parse_kallsyms("")
        return self._symbols

    def has_symbol(self, name: str) -> bool:
        """True when ``name`` is a text (function) symbol of the kernel: one a kprobe could attach to.
        From the parsed table once a family loaded it, else one pass over kallsyms that keeps nothing
        (the table takes about 30 MB, which a recorder of tracepoints alone need not hold)."""
        if self._symbols is not None:
            return name in self._symbols.by_name
        if name not in self._looked_up:
            self._looked_up[name] = kallsyms_has_text_symbol(self.kallsyms, name)
        return self._looked_up[name]

    def btf_paths(self, *modules: str) -> tuple[Path, ...]:
        """The kernel's BTF blob (``vmlinux``) and the split BTF of each named module, in that order."""
        return tuple(self.btf / name for name in ("vmlinux", *modules))

    def has_btf(self) -> bool:
        """True when the kernel exposes its BTF (``CONFIG_DEBUG_INFO_BTF``)."""
        return (self.btf / "vmlinux").is_file()


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
