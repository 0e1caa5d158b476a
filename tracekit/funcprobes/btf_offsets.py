"""Kernel types from BTF: struct member offsets and function prototypes.

:class:`BtfTypes` parses a BTF blob (``/sys/kernel/btf/vmlinux``) with the split blobs of modules
layered on it (``/sys/kernel/btf/kvm``, or the ``.BTF`` section of a ``kvm.ko``), or finds the blob
inside an uncompressed kernel image. :meth:`~BtfTypes.member` gives a struct member's offset, size
and signedness, :meth:`~BtfTypes.field` its offset and :class:`CType`, :meth:`~BtfTypes.prototype`
a function's parameters, :meth:`~BtfTypes.function_id` its type id; :func:`offset_cflags` turns members into bcc ``-D`` flags. A missing
struct or member raises :class:`~tracekit.errors.MissingCapability`, a blob that is not BTF
:class:`~tracekit.errors.ProbeLoadError`. Standard library only (the lab guests use it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from tracekit.errors import MissingCapability, ProbeLoadError
from tracekit.host import BTF_VMLINUX

__all__ = ["BtfTypes", "CType", "Member", "offset_cflags", "elf_section", "image_btf", "STAGE2_FIELDS", "TDP_FIELDS"]

_MAGIC = b"\x9f\xeb\x01\x00"  # magic 0xEB9F, version 1, flags 0 (little-endian)
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM = 1, 2, 3, 4, 5, 6
_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _FUNC, _FUNC_PROTO, _FLOAT, _TYPE_TAG, _ENUM64 = 8, 9, 10, 11, 12, 13, 16, 18, 19
_QUALIFIERS = (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG)
#: Trailing bytes per kind: (fixed, per vlen entry); kinds absent here have none.
_TRAILER = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0), 15: (0, 12),
            17: (4, 0), 19: (0, 12)}  # fmt: skip

#: (macro, struct, member) read by probes/stage2.bpf.c (the visitors' fields follow their prototype:
#: :func:`tracekit.funcprobes.fetchargs.fetch_cflags`).
STAGE2_FIELDS = (
    ("WALKER_CB", "kvm_pgtable_walker", "cb"),
    ("WALKER_FLAGS", "kvm_pgtable_walker", "flags"),
    ("PGT_MMU", "kvm_pgtable", "mmu"),
)
#: (macro, struct, member) read by probes/tdp.bpf.c.
TDP_FIELDS = (
    ("ITER_LEVEL", "tdp_iter", "level"),
    ("ITER_GFN", "tdp_iter", "gfn"),
    ("FAULT_GFN", "kvm_page_fault", "gfn"),
    ("FAULT_GOAL_LEVEL", "kvm_page_fault", "goal_level"),
)


@dataclass(frozen=True)
class Member:
    offset: int
    size: int
    signed: bool


@dataclass(frozen=True)
class CType:
    """A C type as far as fetching it matters: ``int`` (integers, enums, bool), ``ptr``, ``struct``,
    ``union`` or ``other``; ``target`` is a pointer's pointee, ``name`` a struct's tag.

    >>> CType.parse("*struct kvm_pgtable_visit_ctx:64").target.name, CType.parse("s8").signed
    ('kvm_pgtable_visit_ctx', True)
    """

    kind: str
    size: int
    signed: bool = False
    name: str = ""
    target: "CType | None" = None

    @property
    def spelling(self) -> str:
        """Compact text form: ``u64``, ``s8``, ``*u64``, ``struct NAME:SIZE``, ``?SIZE`` (:meth:`parse` reads it)."""
        if self.kind == "int":
            return f"{'s' if self.signed else 'u'}{self.size * 8}"
        if self.kind == "ptr":
            return "*" + (self.target.spelling if self.target else "void")
        if self.kind in ("struct", "union"):
            return f"{self.kind} {self.name}:{self.size}"
        return f"?{self.size}"

    @classmethod
    def parse(cls, text: str) -> "CType":
        if text.startswith("*"):
            return cls("ptr", 8, target=None if text == "*void" else cls.parse(text[1:]))
        if text[0] in "su" and text[1:].isdigit():
            return cls("int", int(text[1:]) // 8, text[0] == "s")
        if text.startswith(("struct ", "union ")):
            kind, rest = text.split(" ", 1)
            name, size = rest.rsplit(":", 1)
            return cls(kind, int(size), name=name)
        if text.startswith("?"):
            return cls("other", int(text[1:]))
        raise ValueError(f"not a type spelling: {text!r}")


def elf_section(data: bytes, name: str) -> bytes | None:
    """The contents of section ``name`` of a little-endian ELF64 file (a ``.ko``), or None."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_off = headers[shstrndx][4]
    for sh_name, _type, _flags, _addr, offset, size in headers:
        start = names_off + sh_name
        if data[start : data.index(b"\0", start)].decode() == name:
            return data[offset : offset + size]
    return None


class BtfTypes:
    """Types of one BTF blob plus any split blobs layered on it."""

    def __init__(self, blob: bytes, *split: bytes, base: "BtfTypes | None" = None):
        self._base = base
        self._first_id = 0 if base is None else base._first_id + len(base.types)
        self._first_str = 0 if base is None else base._first_str + len(base.strings)
        self.types: list[tuple[int, int, int, int, bytes]] = [(0, 0, 0, 0, b"")] if base is None else []  # id 0: void
        self.strings = b""
        self._by_name: dict[tuple[int, str], int] = {}
        for part in (blob, *split):
            self._add(part)

    def with_module(self, blob: bytes) -> "BtfTypes":
        """These types plus one module's split BTF (raw or its ``.ko``), without copying these:
        several modules (``kvm``, ``kvm_amd``) each split on the same ``vmlinux``."""
        return BtfTypes(_module_btf(blob, "module"), base=self)

    @classmethod
    def load(cls, vmlinux: str | Path = BTF_VMLINUX, *modules: str | Path) -> "BtfTypes":
        """Raw BTF files (``/sys/kernel/btf/*``); a module may also be given as its ``.ko`` file."""
        try:
            blobs = [Path(p).read_bytes() for p in (vmlinux, *modules)]
        except OSError as error:
            raise MissingCapability(f"cannot read kernel BTF {error.filename}: {error.strerror} (CONFIG_DEBUG_INFO_BTF)")
        return cls(blobs[0], *(_module_btf(blob, str(path)) for blob, path in zip(blobs[1:], modules)))

    @classmethod
    def from_kernel_image(cls, path: str | Path, *modules: str | Path) -> "BtfTypes":
        """The BTF embedded in an uncompressed kernel image (arm64 ``Image``, ``vmlinux``), plus the
        split BTF of module files (``kvm.ko``)."""
        blob = image_btf(Path(path).read_bytes())
        if blob is None:
            raise MissingCapability(f"{path} holds no BTF (a compressed image, or a kernel built without CONFIG_DEBUG_INFO_BTF)")
        return cls(blob, *(_module_btf(Path(m).read_bytes(), str(m)) for m in modules))

    def _add(self, blob: bytes) -> None:
        if len(blob) < 24 or struct.unpack_from("<H", blob, 0)[0] != 0xEB9F:
            raise ProbeLoadError("not a little-endian BTF blob")
        hdr_len = struct.unpack_from("<I", blob, 4)[0]
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        if max(hdr_len + type_off + type_len, hdr_len + str_off + str_len) > len(blob) or hdr_len < 24:
            raise ProbeLoadError(f"a truncated BTF blob ({len(blob)} bytes; its header says more)")
        try:
            self._add_types(blob, hdr_len, type_off, type_len, str_off, str_len)
        except (struct.error, ValueError, IndexError) as error:
            raise ProbeLoadError(f"a corrupt BTF blob: {error}") from None

    def _add_types(self, blob: bytes, hdr_len: int, type_off: int, type_len: int, str_off: int, str_len: int) -> None:
        # split BTF: ids and string offsets continue the base's, so appending keeps them valid
        self.strings += blob[hdr_len + str_off : hdr_len + str_off + str_len]
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        types, by_name, unpack = self.types, self._by_name, struct.unpack_from
        while pos < end:
            name_off, info, size = unpack("<III", blob, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            if not 0 < kind <= _ENUM64:
                raise ValueError(f"type {len(types)} has no known kind ({kind})")
            fixed, each = _TRAILER.get(kind, (0, 0))
            data = blob[pos + 12 : pos + 12 + fixed + each * vlen]
            if name_off and kind in (_STRUCT, _UNION, _FUNC):
                by_name.setdefault((kind, self._name(name_off)), self._first_id + len(types))
            types.append((kind, name_off, info, size, data))
            pos += 12 + fixed + each * vlen
        if pos != end:
            raise ValueError(f"its type records overrun their section by {pos - end} bytes")

    def _name(self, offset: int) -> str:
        if offset < self._first_str:
            return self._base._name(offset)  # type: ignore[union-attr]
        offset -= self._first_str
        return self.strings[offset : self.strings.index(b"\0", offset)].decode()

    def _type(self, type_id: int) -> tuple[int, int, int, int, bytes]:
        if type_id < self._first_id:
            return self._base._type(type_id)  # type: ignore[union-attr]
        return self.types[type_id - self._first_id]

    def _lookup(self, kind: int, name: str) -> int | None:
        found = self._by_name.get((kind, name))
        if found is None and self._base is not None:
            return self._base._lookup(kind, name)
        return found

    def _resolve(self, type_id: int) -> int:
        while self._type(type_id)[0] in _QUALIFIERS:
            type_id = self._type(type_id)[3]
        return type_id

    def ctype(self, type_id: int, depth: int = 0) -> CType:
        """The :class:`CType` of BTF type ``type_id`` (typedefs and qualifiers looked through)."""
        kind, name_off, info, size, data = self._type(self._resolve(type_id))
        if kind == _INT:
            return CType("int", size, bool((struct.unpack_from("<I", data, 0)[0] >> 24) & 1))
        if kind in (_ENUM, _ENUM64):
            return CType("int", size, bool(info >> 31))
        if kind == _PTR:
            target = self._resolve(size)
            if target == 0 or depth > 3 or self._type(target)[0] == _FUNC_PROTO:
                return CType("ptr", 8)
            return CType("ptr", 8, target=self.ctype(target, depth + 1))
        if kind in (_STRUCT, _UNION):
            return CType("struct" if kind == _STRUCT else "union", size, name=self._name(name_off) if name_off else "")
        if kind == _ARRAY:
            elem, _index, count = struct.unpack_from("<III", data, 0)
            return CType("other", self.ctype(elem, depth).size * count)
        return CType("other", size if kind == _FLOAT else 0)

    def field(self, struct_name: str, member_name: str) -> tuple[int, CType]:
        """(byte offset, type) of ``struct_name.member_name`` (anonymous struct and union members
        looked into); MissingCapability names what is missing."""
        type_id = self._lookup(_STRUCT, struct_name)
        if type_id is None:
            raise MissingCapability(f"struct {struct_name} is not in this kernel's BTF")
        found = self._find_member(type_id, member_name, struct_name)
        if found is None:
            raise MissingCapability(f"struct {struct_name} has no member {member_name} in this kernel's BTF")
        return found

    def _find_member(self, type_id: int, member_name: str, struct_name: str) -> tuple[int, CType] | None:
        _kind, _name, info, _size, data = self._type(type_id)
        for i in range(info & 0xFFFF):
            name_off, member_type, offset = struct.unpack_from("<III", data, 12 * i)
            bits = offset & 0xFFFFFF if info >> 31 else offset
            if not name_off:
                inner = self._resolve(member_type)
                if self._type(inner)[0] in (_STRUCT, _UNION):
                    found = self._find_member(inner, member_name, struct_name)
                    if found is not None:
                        return bits // 8 + found[0], found[1]
                continue
            if self._name(name_off) == member_name:
                if (info >> 31 and offset >> 24) or bits % 8:
                    raise MissingCapability(f"{struct_name}.{member_name} is a bitfield; it cannot be read by offset")
                return bits // 8, self.ctype(member_type)
        return None

    def member(self, struct_name: str, member_name: str) -> Member:
        offset, ctype = self.field(struct_name, member_name)
        return Member(offset, ctype.size, ctype.signed)

    def function_id(self, function: str) -> int | None:
        """The type id of ``function``'s BTF ``FUNC`` (what an fentry program attaches to), or None."""
        return self._lookup(_FUNC, function)

    def prototype(self, function: str) -> tuple[tuple[str, CType], ...] | None:
        """``function``'s parameters (name, type) from its BTF ``FUNC``, or None when BTF has none."""
        type_id = self._lookup(_FUNC, function)
        if type_id is None:
            return None
        proto = self._type(self._resolve(self._type(type_id)[3]))
        params = []
        for i in range(proto[2] & 0xFFFF):
            name_off, type_id = struct.unpack_from("<II", proto[4], 8 * i)
            params.append((self._name(name_off) if name_off else f"arg{i + 1}", self.ctype(type_id)))
        return tuple(params)


def image_btf(image: bytes) -> bytes | None:
    """The kernel's BTF blob inside an uncompressed image (past any false magic), or None."""
    pos = image.find(_MAGIC)
    while pos >= 0:
        hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<IIIII", image, pos + 4)
        if hdr_len == 24 and type_off == 0 and str_off == type_len and type_len > 4096:
            return image[pos : pos + 24 + type_len + str_len]
        pos = image.find(_MAGIC, pos + 1)
    return None


def _module_btf(data: bytes, what: str) -> bytes:
    """A module's split BTF: the raw blob (``/sys/kernel/btf/kvm``) or the ``.BTF`` section of its ``.ko``."""
    if data[:4] != b"\x7fELF":
        return data
    section = elf_section(data, ".BTF")
    if section is None:
        raise MissingCapability(f"{what} has no .BTF section (a module built without CONFIG_DEBUG_INFO_BTF_MODULES)")
    return section


def offset_cflags(btf, fields: tuple[tuple[str, str, str], ...]) -> list[str]:
    """bcc cflags defining the offset, size and signedness of each field (``btf`` has :meth:`BtfTypes.field`)."""
    flags = []
    for macro, struct_name, member_name in fields:
        offset, ctype = btf.field(struct_name, member_name)
        flags += [f"-DTK_OFF_{macro}={offset}", f"-DTK_SIZE_{macro}={ctype.size}", f"-DTK_SIGNED_{macro}={int(ctype.signed)}"]
    return flags
