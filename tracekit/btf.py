"""Minimal reader of the kernel's BTF type section: find a type id by kind and name.

Contract: :func:`find_type_id` scans a raw BTF blob (``/sys/kernel/btf/vmlinux``) and returns the id of the
first type of the given kind with the given name, or None. Only the type records' sizes are interpreted;
the layout follows include/uapi/linux/btf.h (``struct btf_header``, ``struct btf_type`` and the per-kind
trailing data). Raises ValueError on a blob that is not BTF.
"""

from __future__ import annotations

import struct

__all__ = ["BTF_KIND_FUNC", "BTF_KIND_STRUCT", "find_type_id"]

BTF_MAGIC = 0xEB9F
BTF_KIND_INT, BTF_KIND_PTR, BTF_KIND_ARRAY, BTF_KIND_STRUCT, BTF_KIND_UNION = 1, 2, 3, 4, 5
BTF_KIND_ENUM, BTF_KIND_FUNC, BTF_KIND_FUNC_PROTO, BTF_KIND_VAR, BTF_KIND_DATASEC = 6, 12, 13, 14, 15
BTF_KIND_DECL_TAG, BTF_KIND_ENUM64 = 17, 19

# Bytes of kind-specific data after the 12-byte struct btf_type: (fixed, per vlen entry).
_TRAILING = {
    BTF_KIND_INT: (4, 0),
    BTF_KIND_ARRAY: (12, 0),
    BTF_KIND_STRUCT: (0, 12),
    BTF_KIND_UNION: (0, 12),
    BTF_KIND_ENUM: (0, 8),
    BTF_KIND_FUNC_PROTO: (0, 8),
    BTF_KIND_VAR: (4, 0),
    BTF_KIND_DATASEC: (0, 12),
    BTF_KIND_DECL_TAG: (4, 0),
    BTF_KIND_ENUM64: (0, 12),
}


def find_type_id(blob: bytes, kind: int, name: str) -> int | None:
    """Id of the first BTF type of ``kind`` named ``name`` in ``blob``, or None."""
    if len(blob) < 24:
        raise ValueError("BTF blob too short")
    magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
    if magic != BTF_MAGIC:
        raise ValueError("not a little-endian BTF blob")
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
    types = hdr_len + type_off
    strings = hdr_len + str_off
    wanted = name.encode()
    pos, end, type_id = types, types + type_len, 1
    while pos < end:
        name_off, info, _size = struct.unpack_from("<III", blob, pos)
        k = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        if k == kind and name_off < str_len:
            start = strings + name_off
            stop = blob.index(b"\0", start)
            if blob[start:stop] == wanted:
                return type_id
        fixed, per = _TRAILING.get(k, (0, 0))
        pos += 12 + fixed + per * vlen
        type_id += 1
    return None
