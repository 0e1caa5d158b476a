"""Struct member offsets from kernel BTF, for BPF programs that read KVM structs through kprobe arguments.

Contract
--------
:class:`BtfTypes` parses a BTF blob (``/sys/kernel/btf/vmlinux``) and optionally split BTF blobs of
modules on top of it (``/sys/kernel/btf/kvm``: type ids and string offsets continue the base's).
:meth:`BtfTypes.member` returns the byte offset, size and signedness of ``struct NAME``'s member
(looking through typedefs and qualifiers; bitfields are refused).
:meth:`BtfTypes.from_kernel_image` finds the BTF inside an uncompressed kernel image (the arm64
``Image`` of the lab, a developer's ``vmlinux``), so offsets can be known before booting it. :func:`offset_cflags` turns a
list of ``(macro, struct, member)`` into bcc ``-D`` flags (``-DTK_OFF_<macro>=<bytes>``,
``-DTK_SIZE_<macro>=<bytes>``, ``-DTK_SIGNED_<macro>=0|1``): the BPF sources read fields at these
load-time constants, never at offsets written in the source. A missing struct or member raises
:class:`tracekit.errors.MissingCapability` naming it (the kernel lacks the code or its BTF);
a blob that is not BTF raises :class:`tracekit.errors.ProbeLoadError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from tracekit.errors import MissingCapability, ProbeLoadError

__all__ = ["BtfTypes", "Member", "offset_cflags", "STAGE2_FIELDS", "TDP_FIELDS"]

_MAGIC = b"\x9f\xeb\x01\x00"  # magic 0xEB9F, version 1, flags 0 (little-endian)
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM = 1, 2, 3, 4, 5, 6
_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _FLOAT, _TYPE_TAG, _ENUM64 = 8, 9, 10, 11, 16, 18, 19
_QUALIFIERS = (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG)
#: Trailing bytes per kind: (fixed, per vlen entry); kinds absent here have none.
_TRAILER = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0), 15: (0, 12),
            17: (4, 0), 19: (0, 12)}  # fmt: skip

#: (macro, struct, member) read by probes/stage2.bpf.c.
STAGE2_FIELDS = (
    ("CTX_OLD", "kvm_pgtable_visit_ctx", "old"),
    ("CTX_ADDR", "kvm_pgtable_visit_ctx", "addr"),
    ("CTX_LEVEL", "kvm_pgtable_visit_ctx", "level"),
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


class BtfTypes:
    """Types of one BTF blob plus any split blobs layered on it."""

    def __init__(self, blob: bytes, *split: bytes):
        self.types: list[tuple[int, int, int, int, bytes]] = [(0, 0, 0, 0, b"")]  # id 0 is void
        self.strings = b""
        for part in (blob, *split):
            self._add(part)
        self._by_name: dict[tuple[int, str], int] = {}
        for type_id, (kind, name_off, _info, _size, _data) in enumerate(self.types):
            if name_off:
                self._by_name.setdefault((kind, self._name(name_off)), type_id)

    @classmethod
    def load(cls, vmlinux: str | Path = "/sys/kernel/btf/vmlinux", *modules: str | Path) -> "BtfTypes":
        try:
            return cls(Path(vmlinux).read_bytes(), *(Path(m).read_bytes() for m in modules))
        except OSError as error:
            raise MissingCapability(f"cannot read kernel BTF {error.filename}: {error.strerror} (CONFIG_DEBUG_INFO_BTF)")

    @classmethod
    def from_kernel_image(cls, path: str | Path) -> "BtfTypes":
        """The BTF embedded in an uncompressed kernel image (arm64 ``Image``, ``vmlinux``)."""
        image = Path(path).read_bytes()
        pos = image.find(_MAGIC)
        while pos >= 0:
            hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<IIIII", image, pos + 4)
            if hdr_len == 24 and type_off == 0 and str_off == type_len and type_len > 4096:
                return cls(image[pos : pos + 24 + type_len + str_len])
            pos = image.find(_MAGIC, pos + 1)
        raise MissingCapability(f"{path} holds no BTF (a compressed image, or a kernel built without CONFIG_DEBUG_INFO_BTF)")

    def _add(self, blob: bytes) -> None:
        if len(blob) < 24 or struct.unpack_from("<H", blob, 0)[0] != 0xEB9F:
            raise ProbeLoadError("not a little-endian BTF blob")
        hdr_len = struct.unpack_from("<I", blob, 4)[0]
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, size = struct.unpack_from("<III", blob, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            fixed, each = _TRAILER.get(kind, (0, 0))
            data = blob[pos + 12 : pos + 12 + fixed + each * vlen]
            # split BTF: ids and string offsets continue the base's, so appending keeps them valid
            self.types.append((kind, name_off, info, size, data))
            pos += 12 + fixed + each * vlen
        self.strings += blob[hdr_len + str_off : hdr_len + str_off + str_len]

    def _name(self, offset: int) -> str:
        return self.strings[offset : self.strings.index(b"\0", offset)].decode()

    def _resolve(self, type_id: int) -> int:
        while self.types[type_id][0] in _QUALIFIERS:
            type_id = self.types[type_id][3]
        return type_id

    def _size_signed(self, type_id: int) -> tuple[int, bool]:
        kind, _name, info, size, data = self.types[self._resolve(type_id)]
        if kind == _INT:
            return size, bool((struct.unpack_from("<I", data, 0)[0] >> 24) & 1)
        if kind == _PTR:
            return 8, False
        if kind in (_ENUM, _ENUM64):
            return size, bool(info >> 31)
        if kind == _ARRAY:
            elem, _index, count = struct.unpack_from("<III", data, 0)
            return self._size_signed(elem)[0] * count, False
        return size, False

    def member(self, struct_name: str, member_name: str) -> Member:
        type_id = self._by_name.get((_STRUCT, struct_name))
        if type_id is None:
            raise MissingCapability(f"struct {struct_name} is not in this kernel's BTF")
        _kind, _name, info, _size, data = self.types[type_id]
        for i in range(info & 0xFFFF):
            name_off, member_type, offset = struct.unpack_from("<III", data, 12 * i)
            if name_off and self._name(name_off) == member_name:
                bits = offset & 0xFFFFFF if info >> 31 else offset
                if (info >> 31 and offset >> 24) or bits % 8:
                    raise MissingCapability(f"{struct_name}.{member_name} is a bitfield; it cannot be read by offset")
                size, signed = self._size_signed(member_type)
                return Member(bits // 8, size, signed)
        raise MissingCapability(f"struct {struct_name} has no member {member_name} in this kernel's BTF")


def offset_cflags(btf: BtfTypes, fields: tuple[tuple[str, str, str], ...]) -> list[str]:
    """bcc cflags defining the offset, size and signedness of each field."""
    flags = []
    for macro, struct_name, member_name in fields:
        m = btf.member(struct_name, member_name)
        flags += [f"-DTK_OFF_{macro}={m.offset}", f"-DTK_SIZE_{macro}={m.size}", f"-DTK_SIGNED_{macro}={int(m.signed)}"]
    return flags
