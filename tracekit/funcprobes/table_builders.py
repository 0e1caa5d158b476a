"""Vectorised builders of the function-probe capture tables (numpy columns in, Arrow tables out).

Every function takes whole columns of one batch and loops in Python over distinct values only (probe
names, visit labels, symbols): :func:`table` builds a table of a family (absent columns null),
:func:`concat_tables` joins parts in time order, :func:`args_json` renders integer arguments as JSON
per row, :func:`aggregate_visits` groups visits by walk, visitor, level and kind, and
:func:`stage2_pte_kinds` classifies arm64 descriptors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from tracekit.capture.columns import FUNCPROBE_SCHEMAS as SCHEMAS
from tracekit.funcprobes.stage2_probes import PAGE_LEVEL, VISIT_KINDS

__all__ = ["table", "args_json", "aggregate_visits", "stage2_pte_kinds", "stage2_visit_names", "concat_tables"]

_KIND_NAMES = np.array(["invalid", "page", "block", "table"])


def _column(value: Any, type_: pa.DataType, n: int) -> pa.Array:
    if value is None:
        return pa.nulls(n, type_)
    if isinstance(value, pa.Array | pa.ChunkedArray):
        return value.cast(type_) if value.type != type_ else value
    if pa.types.is_dictionary(type_):
        if np.ndim(value) == 0:
            return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([str(value)])).cast(type_)
        return pa.array(np.asarray(value).astype(str), pa.string()).dictionary_encode().cast(type_)
    if np.ndim(value) == 0:
        return pa.array(np.full(n, value), type=type_)
    if isinstance(value, np.ma.MaskedArray):
        return pa.array(value.data.astype(type_.to_pandas_dtype(), copy=False), type=type_, mask=np.ma.getmaskarray(value))
    array = np.asarray(value)
    if array.dtype.kind in "iu" and pa.types.is_integer(type_):
        array = array.astype(type_.to_pandas_dtype(), copy=False)
    return pa.array(array, type=type_)


def table(family: str, n: int, columns: dict[str, Any]) -> pa.Table:
    """Table of capture ``family`` with ``n`` rows; a column is an array, a scalar or None (nulls)."""
    schema = SCHEMAS[family]
    arrays = [_column(columns.get(f.name), f.type, n) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def concat_tables(family: str, parts: list[pa.Table]) -> pa.Table:
    """The parts in time order (``ts_ns``), or an empty table of the family."""
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return SCHEMAS[family].empty_table()
    joined = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    return joined.sort_by([("ts_ns", "ascending")])  # a stable sort: rows of one instant keep their order


def args_json(fields: dict[str, np.ndarray], n: int) -> np.ndarray:
    """``{"name": value, ...}`` per row (keys sorted, integers only) as a numpy string array."""
    out = np.full(n, "{", dtype=object)
    for i, name in enumerate(sorted(fields)):
        values = np.asarray(fields[name]).astype(np.int64 if np.asarray(fields[name]).dtype.kind == "i" else np.uint64)
        out = out + ((", " if i else "") + f'"{name}": ') + values.astype(str).astype(object)
    return (out + "}").astype(str)


def stage2_pte_kinds(old: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Codes 0 invalid, 1 page, 2 block, 3 table of arm64 descriptors ``old`` at ``level``."""
    old = np.asarray(old, dtype=np.uint64)
    valid = (old & np.uint64(1)) != 0
    table_bit = (old & np.uint64(2)) != 0
    return np.where(~valid, 0, np.where(np.asarray(level) >= PAGE_LEVEL, 1, np.where(table_bit, 3, 2)))


def stage2_visit_names(visit: np.ndarray, pte_codes: np.ndarray | None) -> np.ndarray:
    """``VISIT:PTE`` labels (``leaf:block``) for visit flags and PTE kind codes, per distinct pair;
    just ``VISIT`` (``leaf``) when the PTE is unknown (``pte_codes`` None)."""
    visit = np.asarray(visit, dtype=np.int64)
    codes = np.full(len(visit), -1, np.int64) if pte_codes is None else np.asarray(pte_codes, dtype=np.int64)
    pairs, inverse = np.unique(np.stack([visit, codes], axis=1), axis=0, return_inverse=True)
    labels = np.array([VISIT_KINDS.get(int(v), "unknown") + (f":{_KIND_NAMES[int(k)]}" if k >= 0 else "")
                       for v, k in pairs], dtype=object)  # fmt: skip
    return labels[inverse.reshape(-1)] if len(pairs) else np.empty(0, dtype=object)


def aggregate_visits(common: dict[str, np.ndarray], walk_id: np.ndarray, visitor: np.ndarray, level: np.ndarray,
                     kind: np.ndarray, count: np.ndarray | None = None) -> pa.Table:
    """``stage2_visit`` rows: one per (walk, visitor, level, kind) with the summed ``count`` (1 per
    visit by default) and the common columns of its earliest visit."""
    n = len(walk_id)
    if n == 0:
        return SCHEMAS["stage2_visit"].empty_table()
    count = np.ones(n, dtype=np.int64) if count is None else np.asarray(count, dtype=np.int64)
    visitor_names, visitor_codes = np.unique(np.asarray(visitor).astype(str), return_inverse=True)
    kind_names, kind_codes = np.unique(np.asarray(kind).astype(str), return_inverse=True)
    keys = np.stack([np.asarray(walk_id, dtype=np.int64), visitor_codes.reshape(-1), np.asarray(level, dtype=np.int64),
                     kind_codes.reshape(-1)], axis=1)
    order = np.argsort(np.asarray(common["ts_ns"]), kind="stable")
    unique, first, inverse = np.unique(keys[order], axis=0, return_index=True, return_inverse=True)
    sums = np.bincount(inverse.reshape(-1), weights=count[order], minlength=len(unique)).astype(np.int64)
    rows = order[first]
    cols = {name: np.asarray(values)[rows] for name, values in common.items()}
    cols.update(walk_id=unique[:, 0], visitor=visitor_names[unique[:, 1]], level=unique[:, 2].astype(np.int8),
                kind=kind_names[unique[:, 3]], count=sums)
    result = table("stage2_visit", len(unique), cols)
    return result.sort_by([("ts_ns", "ascending")])
