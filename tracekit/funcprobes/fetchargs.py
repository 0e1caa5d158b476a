"""Kprobe fetch arguments from a kernel's BTF: by BTF name, or by register and member offset.

A probe argument is an expression on the function's parameters (``addr``, ``ctx->level``,
``*ptep``), with ``|`` between alternatives for kernels whose prototypes differ
(``ctx->level|level``). :func:`fetch_args` takes the first alternative the function's BTF
prototype has and writes it for ``kprobe_events``: the expression itself where the kernel takes BTF
argument names (``PROBE_EVENTS_BTF_ARGS``, 6.8+), otherwise the parameter's calling-convention
register with one dereference per ``->`` at the member's BTF offset (``+56(%x0):s8``), or
``$argN`` for a parameter passed on the stack where the kernel offers it. Standard library only.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tracekit.errors import MissingCapability
from tracekit.funcprobes.btf_offsets import BtfTypes, CType

__all__ = ["ARCHES", "KVM_MODULES", "FetchStyle", "KernelTypes", "RecordedTypes", "TypeSources", "Unfetchable", "arch_of",
           "fetch_arg", "fetch_args", "fetch_cflags", "kernel_types", "plan_fetch", "Fetch"]

#: Architecture -> registers of the first integer arguments (``kprobe_events`` names), in order.
ARCHES = {
    "arm64": ("x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7"),
    "x86_64": ("di", "si", "dx", "cx", "r8", "r9"),
}
_ALIASES = {"aarch64": "arm64", "arm64": "arm64", "x86_64": "x86_64", "amd64": "x86_64", "x86": "x86_64"}
_EXPR = re.compile(r"^(?P<deref>\*?)(?P<param>[A-Za-z_]\w*)(?P<chain>(?:->[A-Za-z_]\w*)*)$")


def arch_of(machine: str) -> str:
    """``arm64`` or ``x86_64`` for a ``platform.machine()`` or Debian name; ValueError otherwise."""
    try:
        return _ALIASES[machine]
    except KeyError:
        raise ValueError(f"no calling convention known for {machine!r} (arm64 or x86_64)") from None


class Unfetchable(Exception):
    """An argument this kernel's prototype or calling convention cannot give (the message says why)."""


class KernelTypes(Protocol):
    def prototype(self, function: str) -> tuple[tuple[str, CType], ...] | None: ...

    def field(self, struct_name: str, member_name: str) -> tuple[int, CType]: ...


@dataclass(frozen=True)
class FetchStyle:
    """How this kernel's ``kprobe_events`` fetches arguments: ``btf_args`` (names), ``arg_n``
    (``$argN``), else registers only."""

    arch: str
    btf_args: bool = False
    arg_n: bool = False


class RecordedTypes:
    """Prototypes and struct members recorded from one kernel's BTF (a test fixture or a guest's
    report): ``{"functions": {NAME: [[PARAM, TYPE], ...]}, "structs": {NAME: {MEMBER: [OFFSET, TYPE]}}}``
    with types spelled as :attr:`CType.spelling`."""

    def __init__(self, data: dict):
        self.data = data

    @classmethod
    def load(cls, path: str | Path) -> "RecordedTypes":
        return cls(json.loads(Path(path).read_text()))

    def prototype(self, function: str) -> tuple[tuple[str, CType], ...] | None:
        params = self.data.get("functions", {}).get(function)
        return None if params is None else tuple((name, CType.parse(spelling)) for name, spelling in params)

    def field(self, struct_name: str, member_name: str) -> tuple[int, CType]:
        members = self.data.get("structs", {}).get(struct_name)
        if members is None:
            raise MissingCapability(f"struct {struct_name} is not in this kernel's BTF")
        if member_name not in members:
            raise MissingCapability(f"struct {struct_name} has no member {member_name} in this kernel's BTF")
        offset, spelling = members[member_name]
        return offset, CType.parse(spelling)


class TypeSources:
    """Several :class:`KernelTypes` searched in order: ``vmlinux`` with each KVM module's split BTF."""

    def __init__(self, sources: list):
        self.sources = sources

    def prototype(self, function: str) -> tuple[tuple[str, CType], ...] | None:
        return next((p for s in self.sources if (p := s.prototype(function)) is not None), None)

    def field(self, struct_name: str, member_name: str) -> tuple[int, CType]:
        error: MissingCapability | None = None
        for source in self.sources:
            try:
                return source.field(struct_name, member_name)
            except MissingCapability as missing:
                error = error or missing
        raise error or MissingCapability(f"struct {struct_name} is not in this kernel's BTF")


#: Modules whose BTF holds the probed functions when KVM is modular (x86).
KVM_MODULES = ("kvm", "kvm_amd", "kvm_intel")


@functools.lru_cache(maxsize=4)
def kernel_types(vmlinux: Path, modules: tuple[Path, ...] = ()) -> TypeSources:
    """A kernel's BTF: ``vmlinux`` (a raw blob) with each existing module's split BTF on it
    (``/sys/kernel/btf/kvm`` or a ``.ko``), parsed once per process (a family's check and its bcc
    cflags share it). MissingCapability when ``vmlinux`` is unreadable."""
    base = BtfTypes.load(vmlinux)
    loaded = [base.with_module(path.read_bytes()) for path in modules if path.is_file()]
    return TypeSources(loaded or [base])


def _slots(arch: str, prototype: tuple[tuple[str, CType], ...]) -> dict[str, int]:
    """Argument word of each parameter, registers first then the stack (``$argN`` is word N-1). Up to
    8 bytes take one word, up to 16 two; a larger aggregate goes by reference on arm64 (one word) and
    on the stack on x86-64; an argument that does not fit in the registers left goes on the stack."""
    registers, next_reg, next_stack, out = len(ARCHES[arch]), 0, 0, {}
    for name, ctype in prototype:
        words = 1 if ctype.size <= 8 or (arch == "arm64" and ctype.size > 16) else (ctype.size + 7) // 8
        if (ctype.size <= 16 or arch == "arm64") and next_reg + words <= registers:
            out[name], next_reg = next_reg, next_reg + words
        else:
            out[name], next_stack = registers + next_stack, next_stack + words
    return out


def _type_suffix(ctype: CType, what: str) -> str:
    if ctype.kind == "ptr":
        return "u64"
    if ctype.kind == "int" and ctype.size in (1, 2, 4, 8):
        return f"{'s' if ctype.signed else 'u'}{ctype.size * 8}"
    raise Unfetchable(f"{what} is a {ctype.spelling}, not a scalar")


@dataclass(frozen=True)
class Fetch:
    """Where one expression's value is: argument word ``word`` (registers first, then the stack),
    dereferenced at each of ``offsets`` in turn, a ``ctype`` at the end."""

    expr: str
    word: int
    offsets: tuple[int, ...]
    ctype: CType


def plan_fetch(function: str, expr: str, types: KernelTypes, arch: str) -> Fetch:
    """Locate one expression (no alternatives) on ``function``; Unfetchable says why it cannot be."""
    match = _EXPR.match(expr)
    if match is None:
        raise ValueError(f"not a probe argument expression: {expr!r}")
    prototype = types.prototype(function)
    if prototype is None:
        raise Unfetchable(f"no BTF prototype of {function}")
    params = dict(prototype)
    param = match.group("param")
    if param not in params:
        raise Unfetchable(f"{function}({', '.join(params)}) has no parameter {param}")
    ctype, offsets = params[param], []
    for member in [m for m in match.group("chain").split("->") if m] + (["*"] if match.group("deref") else []):
        if ctype.kind != "ptr" or ctype.target is None:
            raise Unfetchable(f"{expr}: {ctype.spelling} is not a pointer to a struct")
        if member == "*":
            offsets.append(0)
            ctype = ctype.target
            continue
        if ctype.target.kind != "struct":
            raise Unfetchable(f"{expr}: {ctype.target.spelling} is not a struct")
        try:
            offset, ctype = types.field(ctype.target.name, member)
        except MissingCapability as error:
            raise Unfetchable(str(error)) from None
        offsets.append(offset)
    _type_suffix(ctype, expr)
    return Fetch(expr, _slots(arch, prototype)[param], tuple(offsets), ctype)


def fetch_arg(function: str, expr: str, types: KernelTypes, style: FetchStyle) -> str:
    """The ``kprobe_events`` fetch argument of one expression (no alternatives) on ``function``.

    >>> types = RecordedTypes({"functions": {"f": [["ctx", "*struct c:64"], ["v", "u32"]]},
    ...                        "structs": {"c": {"level": [56, "s8"]}}})
    >>> fetch_arg("f", "ctx->level", types, FetchStyle("arm64")), fetch_arg("f", "v", types, FetchStyle("x86_64"))
    ('+56(%x0):s8', '%si:u32')
    >>> fetch_arg("f", "ctx->level", types, FetchStyle("arm64", btf_args=True))
    'ctx->level'
    """
    fetch = plan_fetch(function, expr, types, style.arch)
    if style.btf_args and not expr.startswith("*"):
        return expr
    if fetch.word < len(ARCHES[style.arch]):
        base = f"%{ARCHES[style.arch][fetch.word]}"
    elif style.arg_n:
        base = f"$arg{fetch.word + 1}"
    else:
        raise Unfetchable(f"{_EXPR.match(expr).group('param')} is passed on the stack and this kernel has no $argN")
    for offset in fetch.offsets:
        base = f"+{offset}({base})"
    return f"{base}:{_type_suffix(fetch.ctype, expr)}"


def fetch_cflags(function: str, args: tuple[tuple[str, str], ...], types: KernelTypes, arch: str, prefix: str
                 ) -> list[str]:  # fmt: skip
    """bcc cflags locating each field (first form this kernel has) for ``TK_ARG(ctx, PREFIX_FIELD)``:
    ``TK_ARG_REG_`` (1-based argument register), ``TK_ARG_DEREF_`` (0 or 1), ``TK_OFF_``, ``TK_SIZE_``,
    ``TK_SIGNED_``. Fields this kernel cannot give, or that need a stack argument or two
    dereferences, get no flags (the program's default: 0)."""
    flags = []
    for name, expr in args:
        for alternative in expr.split("|"):
            try:
                fetch = plan_fetch(function, alternative, types, arch)
            except Unfetchable:
                continue
            if fetch.word >= 6 or len(fetch.offsets) > 1:  # bcc's PT_REGS_PARM1..6, one probe read
                break
            macro = f"{prefix}_{name.upper()}"
            size = 8 if fetch.ctype.kind == "ptr" else fetch.ctype.size
            flags += [f"-DTK_ARG_REG_{macro}={fetch.word + 1}", f"-DTK_ARG_DEREF_{macro}={len(fetch.offsets)}",
                      f"-DTK_OFF_{macro}={fetch.offsets[0] if fetch.offsets else 0}", f"-DTK_SIZE_{macro}={size}",
                      f"-DTK_SIGNED_{macro}={int(fetch.ctype.signed)}"]  # fmt: skip
            break
    return flags


def fetch_args(function: str, args: tuple[tuple[str, str], ...], types: KernelTypes, style: FetchStyle
               ) -> tuple[tuple[tuple[str, str], ...], dict[str, str]]:  # fmt: skip
    """(``(field, fetch argument)`` pairs, ``{field: why it cannot be fetched}``) of a probe's
    arguments on ``function``: each field takes its first alternative this kernel's prototype has."""
    fetched, dropped = [], {}
    for name, expr in args:
        reasons = []
        for alternative in expr.split("|"):
            try:
                fetched.append((name, fetch_arg(function, alternative, types, style)))
                break
            except Unfetchable as error:
                reasons.append(str(error))
        else:
            dropped[name] = "; ".join(dict.fromkeys(reasons))
    return tuple(fetched), dropped
