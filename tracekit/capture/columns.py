"""The columns of every capture family, declared once: name, Arrow type and unit.

Every family table is :data:`tracekit.capture.COMMON_FIELDS` then the columns of
:data:`FAMILIES`; :data:`SCHEMAS` holds the resulting Arrow schemas. A unit says what a number
counts (``ns``, ``bytes``, ``pages``; empty for codes, identifiers and values). The pages
``docs/capture-families-*.md`` document the same columns, types and units, checked by a test.
"""

from __future__ import annotations

from typing import NamedTuple

import pyarrow as pa

from tracekit.capture.format import COMMON_FIELDS

__all__ = ["LABEL", "Column", "COMMON_UNITS", "FAMILIES", "SCHEMAS", "TRACEPOINT_FAMILIES", "FUNCPROBE_FAMILIES",
           "TARGET_FAMILIES", "FUNCPROBE_SCHEMAS", "unit_of"]

#: Low-cardinality text (command, event and probe names, visit kinds): a plain string column, which Parquet
#: stores dictionary-encoded anyway. Captures written before it hold ``dictionary<int32, string>`` here
#: (every reader accepts both; dictionaries differing per segment broke ``pyarrow.dataset``).
LABEL = pa.string()


class Column(NamedTuple):
    """One column of a family table."""

    name: str
    type: pa.DataType
    unit: str = ""
    nullable: bool = True


def _col(name: str, type_: pa.DataType, unit: str = "") -> Column:
    return Column(name, type_, unit)


def _required(name: str, type_: pa.DataType, unit: str = "") -> Column:
    return Column(name, type_, unit, nullable=False)


#: Units of :data:`COMMON_FIELDS`.
COMMON_UNITS = {"ts_ns": "ns", "cpu": "", "pid": "", "tid": ""}

_MMU_VALUES = [
    _col("gfn", pa.uint64(), "pages"), _col("addr", pa.uint64(), "bytes"), _col("addr_end", pa.uint64(), "bytes"),
    _col("spte", pa.uint64()), _col("old_spte", pa.uint64()), _col("new_spte", pa.uint64()),
    _col("pfn", pa.uint64(), "pages"), _col("error_code", pa.uint64()), _col("sptep", pa.uint64(), "bytes"),
    _col("role", pa.uint32()), _col("count", pa.uint32()), _col("level", pa.int32()), _col("errno", pa.int32()),
    _col("vcpu_id", pa.int32()), _col("ret", pa.int32()), _col("slot", pa.uint32()), _col("as_id", pa.uint8()),
    _col("mmu_valid_gen", pa.uint8()),
]  # fmt: skip

#: Tables written by the tracepoint probe families (docs/capture-families-tracepoints.md).
TRACEPOINT_FAMILIES: dict[str, list[Column]] = {
    "walk": [_col("walk_id", pa.uint64()), _col("addr", pa.uint64(), "bytes"), _col("pferr", pa.uint32())],
    "walk_element": [_col("walk_id", pa.uint64()), _col("index", pa.uint8()), _col("level", pa.int8()),
                     _col("pte", pa.uint64())],
    "walk_error": [_col("walk_id", pa.uint64()), _col("pferr", pa.uint32())],
    "ioctl": [
        _col("duration_ns", pa.int64(), "ns"), _col("fd", pa.int32()), _col("cmd", pa.uint32()),
        _col("cmd_name", LABEL), _col("ret", pa.int64()), _col("slot", pa.uint16()), _col("as_id", pa.uint16()),
        _col("flags", pa.uint32()), _col("guest_phys_addr", pa.uint64(), "bytes"),
        _col("memory_size", pa.uint64(), "bytes"), _col("userspace_addr", pa.uint64(), "bytes"),
        _col("first_page", pa.uint64(), "pages"), _col("num_pages", pa.uint32(), "pages"), _col("cap", pa.uint32()),
        _col("cap_arg0", pa.uint64()), _col("arg", pa.uint64()), _col("partial", LABEL),
    ],
    "ioctl_summary": [
        _col("cmd", pa.uint32()), _col("cmd_name", LABEL), _col("count", pa.int64()), _col("total_ns", pa.int64(), "ns"),
        _col("max_ns", pa.int64(), "ns"), _col("errors", pa.int64()), _col("fd", pa.int32()), _col("errno", pa.int32()),
        _col("partial", pa.int64()),
    ],
    "lock": [
        _col("lock_addr", pa.uint64(), "bytes"), _col("flags", pa.uint32()), _col("flags_name", LABEL),
        _col("wait_ns", pa.int64(), "ns"), _col("ret", pa.int32()), _col("stack_id", pa.int32()),
    ],
    "stack": [_col("stack_id", pa.int32()), _col("frames", pa.list_(pa.string()))],
    "mmu": [_col("event", LABEL), *_MMU_VALUES, _col("r", pa.bool_()), _col("x", pa.bool_()), _col("u", pa.bool_()),
            _col("unsync", pa.bool_()), _col("created", pa.bool_())],
}  # fmt: skip

#: Tables written by the function-probe families (docs/capture-families-funcprobes.md).
FUNCPROBE_FAMILIES: dict[str, list[Column]] = {
    "stage2_walk": [
        _required("walk_id", pa.int64()), _col("addr", pa.uint64(), "bytes"), _col("size", pa.uint64(), "bytes"),
        _col("flags", pa.uint32()), _col("start_level", pa.int8()), _col("initiator", LABEL),
        _col("duration_ns", pa.int64(), "ns"), _col("ret", pa.int32()),
    ],
    "stage2_visit": [
        _required("walk_id", pa.int64()), _required("visitor", LABEL), _required("level", pa.int8()),
        _required("kind", LABEL), _required("count", pa.int64()),
    ],
    "split": [
        _required("probe", LABEL), _col("addr", pa.uint64(), "bytes"), _col("size", pa.uint64(), "bytes"),
        _col("level", pa.int8()), _col("duration_ns", pa.int64(), "ns"), _col("ret", pa.int32()),
    ],
    "fault": [
        _required("probe", LABEL), _col("vcpu_id", pa.int32()), _col("addr", pa.uint64(), "bytes"),
        _col("duration_ns", pa.int64(), "ns"), _col("ret", pa.int64()),
    ],
    "func_call": [
        _required("name", LABEL), _col("duration_ns", pa.int64(), "ns"), _col("ret", pa.int64()),
        _col("args", pa.string()),
    ],
}  # fmt: skip

#: Tables the recorder writes about its target, not from probes (docs/capture-families-target.md). ``threads``:
#: ``ts_ns`` first seen, ``cpu`` -1 (no event), ``pid`` 0 where unknown.
TARGET_FAMILIES: dict[str, list[Column]] = {
    "threads": [
        _col("last_seen_ns", pa.int64(), "ns"), _col("comm", pa.string()), _col("vcpu", pa.int32()),
        _col("vcpu_from", LABEL), _col("pre_exec", pa.bool_()),
    ],
}  # fmt: skip

#: Every family a capture may hold -> its columns after the common ones.
FAMILIES: dict[str, list[Column]] = {**TRACEPOINT_FAMILIES, **FUNCPROBE_FAMILIES, **TARGET_FAMILIES}

#: Every family -> its Arrow schema (the common fields first).
SCHEMAS: dict[str, pa.Schema] = {
    family: pa.schema(list(COMMON_FIELDS) + [pa.field(c.name, c.type, nullable=c.nullable) for c in columns])
    for family, columns in FAMILIES.items()
}

#: The schemas of the function-probe families only (what those families write, in this order).
FUNCPROBE_SCHEMAS: dict[str, pa.Schema] = {family: SCHEMAS[family] for family in FUNCPROBE_FAMILIES}


def unit_of(family: str, column: str) -> str:
    """The unit of ``column`` in ``family`` (``""`` when it counts nothing)."""
    if column in COMMON_UNITS:
        return COMMON_UNITS[column]
    return next(c.unit for c in FAMILIES[family] if c.name == column)
