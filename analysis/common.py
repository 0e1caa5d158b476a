"""Helpers shared by the analyses: column loading, vCPU mapping, percentiles, grouping, text tables.

:func:`load` reads only the listed columns of one family into a DataFrame (AnalysisError when the family
or a required column is missing); :func:`vcpu_map` / :func:`add_vcpu` map threads to vCPUs from the
manifest (-1 for other threads); :func:`latency_summary` gives count, total, mean, *nearest-rank*
p50/p90/p99 (always an observed value) and max per group; :func:`group_codes` / :func:`count_by` group
large frames by hashing; :func:`format_table` renders a terminal table; :func:`timing_note` says when a
capture's durations are an emulator's. Times are integer nanoseconds on CLOCK_MONOTONIC.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tracekit.capture.reader import exact_pandas
from tracekit.errors import AnalysisError
from tracekit.render import frame_table_text

__all__ = [
    "PERCENTILES",
    "load",
    "frame_of",
    "rows_where",
    "value_index",
    "vcpu_map",
    "add_vcpu",
    "lookup_tids",
    "nearest_rank",
    "latency_summary",
    "format_table",
    "format_ns",
    "format_hex",
    "timing_note",
    "records",
    "group_codes",
    "count_by",
]

#: The percentiles every latency summary reports.
PERCENTILES = (50, 90, 99)




def _pandas_column(column: pa.ChunkedArray) -> Any:
    """``column`` as pandas: a uint64 column (addresses, PTEs, masks) exactly, in pandas' nullable ``UInt64``;
    the others as pyarrow makes them (nulls as NaN: narrower integers stay exact in float64)."""
    if pa.types.is_uint64(column.type):
        return exact_pandas(column)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column.to_pandas()


def _numeric(type_: pa.DataType) -> bool:
    return pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_boolean(type_)


def load(cap: Any, family: str, columns: Sequence[str], *, required: bool = True,
         optional_columns: Sequence[str] = (), where: tuple[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Columns ``columns`` (+ ``optional_columns`` where the family has them) of ``family``; with
    ``where = (column, values)``, only the rows whose text ``column`` (one of ``columns``) is one of
    ``values``, picked batch by batch as the family is read (memory bounded by one batch and the rows kept).

    Numeric columns without nulls are read segment by segment into one preallocated numpy array each
    (no concatenation copy); with nulls, uint64 columns become pandas' nullable ``UInt64`` (exact, never
    float64), the others pyarrow's usual dtypes; dictionary columns become strings. Raises AnalysisError when
    ``required`` and the family or a required column is missing.
    """
    if family not in cap.families():
        if required:
            raise AnalysisError(f"{cap.path}: the capture has no {family!r} events "
                                f"(has: {', '.join(cap.families()) or 'none'})")
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in (*columns, *optional_columns)})
    schema = cap.schema(family)
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise AnalysisError(f"{cap.path}: family {family!r} lacks column(s) {', '.join(missing)}")
    wanted = list(columns) + [c for c in optional_columns if c in schema.names]
    if where is None:
        rows, tables = cap.rows(family), cap.iter_tables(family, wanted)
    else:
        tables = [table for table in (rows_where(batch, *where) for batch in cap.iter_batches(family, wanted))
                  if table.num_rows]
        rows = sum(table.num_rows for table in tables)
    return frame_of(tables, rows, schema, wanted, optional_columns)


def frame_of(tables: Iterable[pa.Table], rows: int, schema: pa.Schema, wanted: Sequence[str],
             optional_columns: Sequence[str] = ()) -> pd.DataFrame:
    """The frame :func:`load` makes of ``tables`` (``rows`` rows in all) of a family of ``schema``: the
    ``wanted`` columns, and those of ``optional_columns`` the tables lack as null."""
    out: dict[str, Any] = {}
    fast = [c for c in wanted if _numeric(schema.field(c).type)]
    arrays = {c: np.empty(rows, dtype=schema.field(c).type.to_pandas_dtype()) for c in fast}
    slow: dict[str, list] = {c: [] for c in wanted if c not in fast}
    offset = 0
    for table in tables:
        n = table.num_rows
        for c in wanted:
            column = table.column(c)
            if c in arrays and column.null_count:
                # Nulls: this column goes the pandas way (nullable), with the rows read so far.
                slow[c] = [pa.chunked_array([pa.array(arrays.pop(c)[:offset], type=column.type)])]
            if c in arrays:
                arrays[c][offset:offset + n] = column.to_numpy()
            else:
                slow[c].append(column)
        offset += n
    for c in wanted:
        if c in arrays:
            out[c] = arrays[c][:offset]
        else:
            chunks = [chunk for part in slow[c] for chunk in part.chunks]
            out[c] = _pandas_column(pa.chunked_array(chunks, type=schema.field(c).type))
    frame = pd.DataFrame(out, copy=False)
    for c in optional_columns:
        if c not in frame.columns:
            frame[c] = pd.Series([None] * len(frame), dtype="object")
    return frame


def rows_where(batch: pa.RecordBatch, column: str, values: Sequence[str]) -> pa.Table:
    """The rows of ``batch`` whose ``column`` (text, or dictionary-encoded text) is one of ``values``."""
    data = batch.column(column)
    if pa.types.is_dictionary(data.type):  # compare the few dictionary entries, then the codes
        codes = [i for i, value in enumerate(data.dictionary.to_pylist()) if value in values]
        keep = pc.is_in(data.indices, value_set=pa.array(codes, data.indices.type))
    else:
        keep = pc.is_in(data, value_set=pa.array(list(values), data.type))
    return pa.Table.from_batches([batch.filter(keep)])


def value_index(batch: pa.RecordBatch, column: str, values: Sequence[str]) -> np.ndarray:
    """Per row of ``batch``, the position in ``values`` of its ``column`` (text, or dictionary-encoded
    text), -1 for any other value (int32): one comparison of the column however many sets are picked."""
    found = pc.index_in(batch.column(column), value_set=pa.array(list(values), pa.string()))
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)


def vcpu_map(manifest: dict) -> dict[int, int]:
    """``{tid: vcpu index}`` from the manifest (target threads, then the workload's vCPU list)."""
    out: dict[int, int] = {}
    for thread in (manifest.get("target") or {}).get("threads") or []:
        tid, vcpu = thread.get("tid"), thread.get("vcpu")
        if isinstance(tid, int) and isinstance(vcpu, int):
            out[tid] = vcpu
    for vcpu in (manifest.get("workload") or {}).get("vcpus") or []:
        tid, index = vcpu.get("tid"), vcpu.get("index")
        if isinstance(tid, int) and isinstance(index, int):
            out.setdefault(tid, index)
    return out


def add_vcpu(frame: pd.DataFrame, manifest: dict, tid_column: str = "tid") -> pd.DataFrame:
    """``frame`` with an int64 column ``vcpu`` (-1 where the thread is not a known vCPU)."""
    mapping = vcpu_map(manifest)
    if not len(frame) or not mapping:
        return frame.assign(vcpu=np.full(len(frame), -1, np.int64))
    tids = frame[tid_column].to_numpy()
    if tids.dtype.kind not in "iu":
        tids = frame[tid_column].to_numpy(dtype=np.int64, na_value=-1)
    keys = np.array(sorted(mapping), np.int64)
    values = np.array([mapping[tid] for tid in keys.tolist()], np.int64)
    return frame.assign(vcpu=lookup_tids(tids, keys, values, -1))


def lookup_tids(tids: np.ndarray, keys: np.ndarray, values: np.ndarray, missing: int) -> np.ndarray:
    """``values[i]`` for each of ``tids`` equal to ``keys[i]`` (``keys`` sorted int64), ``missing`` for
    the others (int64): a direct table over the range of ``tids`` when it is small, else a binary search."""
    if len(keys) == 0 or len(tids) == 0:
        return np.full(len(tids), missing, np.int64)
    low, high = int(tids.min()), int(tids.max())
    if high - low < _DENSE_LIMIT:  # a direct table over the thread ids present
        table = np.full(high - low + 1, missing, np.int64)
        inside = (keys >= low) & (keys <= high)
        table[keys[inside] - low] = values[inside]
        return table[tids - tids.dtype.type(low)]
    tids = tids.astype(np.int64, copy=False)
    pos = np.minimum(np.searchsorted(keys, tids), len(keys) - 1)
    return np.where(keys[pos] == tids, values[pos], missing)


def nearest_rank(sorted_values: np.ndarray, q: float) -> Any:
    """The nearest-rank ``q``-th percentile of already sorted values (None when empty)."""
    n = len(sorted_values)
    if n == 0:
        return None
    rank = max(1, int(np.ceil(q / 100.0 * n)))
    return sorted_values[min(rank, n) - 1]


def latency_summary(frame: pd.DataFrame, by: Sequence[str], value: str = "duration_ns") -> pd.DataFrame:
    """Per group of ``by``: count, total, mean, nearest-rank p50/p90/p99 and max of ``value`` (ns).

    Vectorised: one sort by (group, value), then percentile ranks are picked by index. Rows whose
    value is null are ignored. Groups come out sorted by their keys.
    """
    by = list(by)
    out_cols = [*by, "count", "total_ns", "mean_ns", *(f"p{q}_ns" for q in PERCENTILES), "max_ns"]
    frame = frame.loc[frame[value].notna(), [*by, value]]
    if frame.empty:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in out_cols})
    values = frame[value].to_numpy(dtype=np.int64)
    if by:
        codes, uniques = group_codes(frame, by)
    else:
        codes = np.zeros(len(frame), np.int64)
    order = np.lexsort((values, codes))
    codes_sorted, values_sorted = codes[order], values[order]
    starts = np.flatnonzero(np.r_[True, codes_sorted[1:] != codes_sorted[:-1]])
    counts = np.diff(np.r_[starts, len(codes_sorted)])
    totals = np.add.reduceat(values_sorted, starts)
    result = uniques.iloc[codes_sorted[starts]].reset_index(drop=True) if by else pd.DataFrame(index=range(1))
    result["count"] = counts.astype(np.int64)
    result["total_ns"] = totals.astype(np.int64)
    result["mean_ns"] = (totals / counts).astype(np.float64)
    for q in PERCENTILES:
        ranks = np.maximum(1, np.ceil(q / 100.0 * counts).astype(np.int64))
        result[f"p{q}_ns"] = values_sorted[starts + ranks - 1]
    result["max_ns"] = values_sorted[starts + counts - 1]
    return result[out_cols]


_DENSE_LIMIT = 1 << 22
_RANGE_LIMIT = 1 << 16


def _key_codes(values: pd.Series) -> tuple[np.ndarray, int]:
    """Codes ranking one key column's values in sorted order (nulls last) and how many codes there are."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        categories = np.asarray(values.cat.categories, dtype=object)
        order = np.argsort(categories.astype(str), kind="stable")
        rank = np.empty(len(order) + 1, np.int32)
        rank[order] = np.arange(len(order))
        rank[-1] = len(categories)  # code -1 (null) indexes the last slot: nulls last
        return rank[values.cat.codes.to_numpy()], len(categories) + 1
    array = values.to_numpy()
    if array.dtype.kind in "iu" and len(array):
        low, high = array.min(), array.max()
        span = int(high) - int(low)
        if span < _RANGE_LIMIT:
            if array.dtype.itemsize <= 2 or (array.dtype.itemsize == 4 and array.dtype.kind == "i"):
                return np.subtract(array, low, dtype=np.int32), span + 1
            return (array - low).astype(np.int32), span + 1
    codes, uniques = pd.factorize(values, sort=True, use_na_sentinel=True)
    return np.where(codes >= 0, codes, len(uniques)).astype(np.int64), len(uniques) + 1


def _combined_codes(frame: pd.DataFrame, by: Sequence[str]) -> tuple[np.ndarray, int]:
    """One code per row combining the key columns' codes (mixed radix, so sorted by the keys) and the
    number of possible codes; a column that would overflow int64 is factorised with the ones before."""
    keyed = [_key_codes(frame[column]) for column in by]
    total = 1
    for _, size in keyed:
        total *= size
    small = total < 1 << 31  # int32 codes halve the memory traffic of the common case
    combined = np.zeros(len(frame), np.int32 if small else np.int64)
    radix = 1
    for codes, size in keyed:
        if radix * size >= 1 << 62:
            dense_so_far, uniques = pd.factorize(combined, sort=True)
            combined, radix = np.asarray(dense_so_far, np.int64), len(uniques)
        combined *= size
        combined += codes.astype(combined.dtype, copy=False)
        radix *= size
    return combined, radix


def _first_rows(codes: np.ndarray, groups: int, dense_of: np.ndarray | None = None,
                block: int = 1 << 20) -> np.ndarray:
    """The first row of each of ``groups`` dense codes (``dense_of[codes]`` when given, mapped a block
    at a time), reading ``codes`` until every group was seen (usually within the first block)."""
    first = np.full(groups, -1, np.int64)
    missing = groups
    for start in range(0, len(codes), block):
        part = codes[start:start + block]
        if dense_of is not None:
            part = dense_of[part]
        unseen = first[part] < 0
        if unseen.any():
            values, where = np.unique(part[unseen], return_index=True)
            first[values] = start + np.flatnonzero(unseen)[where]
            missing -= len(values)
            if missing == 0:
                break
    return first


def _dense_groups(frame: pd.DataFrame, by: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None, int]:
    """``(combined, dense_of, groups)``: the combined codes, and when they are small enough a table
    from combined code to dense group number (else the combined codes are already dense)."""
    combined, radix = _combined_codes(frame, by)
    if radix <= _DENSE_LIMIT:
        present = np.bincount(combined, minlength=radix) > 0
        dense_of = (np.cumsum(present) - 1).astype(combined.dtype)
        return combined, dense_of, int(present.sum())
    dense, uniques = pd.factorize(combined, sort=True)
    return np.asarray(dense, np.int64), None, len(uniques)


def group_codes(frame: pd.DataFrame, by: Sequence[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Dense int64 group codes of the rows of ``frame`` by ``by`` (groups sorted by their keys, nulls
    last) and the frame of unique keys, one row per code. O(rows): small integer ranges are used as
    codes directly, other keys hashed (``pandas.factorize``); only unique values are sorted."""
    combined, dense_of, groups = _dense_groups(frame, by)
    dense = (dense_of[combined] if dense_of is not None else combined).astype(np.int64, copy=False)
    uniques_frame = frame[list(by)].iloc[_first_rows(dense, groups)].reset_index(drop=True)
    return dense, uniques_frame


def count_by(frame: pd.DataFrame, by: Sequence[str], name: str = "count", weights: str | None = None) -> pd.DataFrame:
    """Rows per group of ``by`` (groups sorted by key), as a frame with the keys and ``name``; with
    ``weights``, the sum of that integer column per group instead (rows that stand for several)."""
    if frame.empty:
        return pd.DataFrame({**{c: pd.Series(dtype=frame[c].dtype) for c in by}, name: pd.Series(dtype="int64")})
    combined, dense_of, groups = _dense_groups(frame, by)
    weight = None if weights is None else frame[weights].to_numpy(np.int64)
    if dense_of is None:
        counts = _int_bincount(combined, weight, groups)
        first = _first_rows(combined, groups)
    else:  # count the combined codes; only the first rows need the dense numbers
        per_code = _int_bincount(combined, weight, len(dense_of))
        counts = per_code[np.bincount(combined, minlength=len(dense_of)) > 0]
        first = _first_rows(combined, groups, dense_of)
    uniques = frame[list(by)].iloc[first].reset_index(drop=True)
    uniques[name] = counts.astype(np.int64)
    return uniques


def _int_bincount(codes: np.ndarray, weights: np.ndarray | None, size: int) -> np.ndarray:
    """``bincount`` of ``codes`` (int64), each counted ``weights`` times when given (exact: small sums go
    through float64, which holds integers up to 2**53)."""
    if weights is None:
        return np.bincount(codes, minlength=size)
    if len(weights) and int(np.abs(weights).sum()) >= 1 << 53:
        totals = np.zeros(size, np.int64)
        np.add.at(totals, codes, weights)
        return totals
    return np.bincount(codes, weights=weights, minlength=size).astype(np.int64)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def format_ns(value: Any) -> str:
    """A duration in ns as a short human string: 950ns, 12.3us, 4.56ms, 1.234s."""
    if _missing(value):
        return "-"
    v = float(value)
    if abs(v) < 1e3:
        return f"{v:.0f}ns"
    if abs(v) < 1e6:
        return f"{v / 1e3:.1f}us"
    if abs(v) < 1e9:
        return f"{v / 1e6:.2f}ms"
    return f"{v / 1e9:.3f}s"


def format_hex(value: Any) -> str:
    """An integer (an address, a PTE) as ``0x...`` text; ``-`` for a missing value."""
    return "-" if value is None or pd.isna(value) else f"{int(value):#x}"


def timing_note(manifest: dict) -> str | None:
    """Why the durations of a capture are not the hardware's: its ``timing_note`` (a lab run under QEMU
    TCG), or a generic one for any other lab capture; None for a capture of real hardware."""
    if manifest.get("timing_note"):
        return str(manifest["timing_note"])
    if (manifest.get("source") or {}).get("kind") == "lab" or manifest.get("lab") \
            or str(manifest.get("host") or "").startswith("qemu-"):
        return "emulated machine: durations are those of the emulator and say nothing about real hardware"
    return None


def format_table(frame: pd.DataFrame, *, title: str | None = None, width: int | None = None,
                 formats: dict[str, Any] | None = None, max_rows: int = 40) -> str:
    """``frame`` as a terminal table (:func:`tracekit.render.frame_table_text`): every column, fitted to
    ``width`` (default: the terminal's; a pipe gets each table at its natural width).

    ``formats`` maps a column to a callable turning one value into text (default: durations in columns
    ending in ``_ns`` through :func:`format_ns`, which also drops the ``_ns`` from the header).
    """
    headers = {c: str(c).removesuffix("_ns") for c in frame.columns}
    return frame_table_text(frame, title=title, formats=formats, max_rows=max_rows, headers=headers,
                            default=lambda column: format_ns if column.endswith("_ns") else None, width=width)


def records(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready rows (numpy scalars and NaN turned into Python values and null)."""
    out = []
    for row in frame.to_dict(orient="records"):
        out.append({k: _jsonable(v) for k, v in row.items()})
    return out


def _jsonable(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    return value

