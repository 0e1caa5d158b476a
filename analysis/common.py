"""Helpers shared by the analyses: column loading, vCPU mapping, nearest-rank percentiles, text tables.

Contract
--------
- :func:`load` reads only the listed columns of one family of a capture into a pandas DataFrame
  (dictionary columns become plain strings). A missing family gives an empty frame with those
  columns when ``required=False``, else :class:`tracekit.errors.AnalysisError`.
- :func:`vcpu_map` turns the manifest's ``target.threads`` (``[{tid, comm, vcpu}]``) and, when
  present, the workload record's ``vcpus`` (``[{index, tid, ...}]``) into ``{tid: vcpu}``.
- :func:`add_vcpu` adds an ``int64`` column ``vcpu`` (-1 for threads that are not vCPUs).
- :func:`latency_summary` groups a frame and returns ``count``, ``total_ns``, ``mean_ns``,
  ``p50_ns``, ``p90_ns``, ``p99_ns``, ``max_ns`` per group. Percentiles are *nearest rank*: the
  q-th percentile of n sorted values is the value of rank ``ceil(q/100 * n)`` (1-based), so it is
  always an observed value (p50 of [10, 20, 30, 40] is 20; p99 of 100 values is the 99th).
- :func:`format_table` renders a frame as fixed-width text of at most ``width`` columns.
All times are integer nanoseconds on CLOCK_MONOTONIC.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from tracekit.errors import AnalysisError

__all__ = [
    "PERCENTILES",
    "load",
    "vcpu_map",
    "add_vcpu",
    "nearest_rank",
    "latency_summary",
    "format_table",
    "format_ns",
    "records",
]

#: The percentiles every latency summary reports.
PERCENTILES = (50, 90, 99)


def _plain_table(table: pa.Table) -> pd.DataFrame:
    columns = {}
    for name, column in zip(table.column_names, table.columns):
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        columns[name] = column
    frame = pa.table(columns).to_pandas() if columns else pd.DataFrame(index=range(table.num_rows))
    return frame


def load(cap: Any, family: str, columns: Sequence[str], *, required: bool = True,
         optional_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Columns ``columns`` (+ ``optional_columns`` where the family has them) of ``family``.

    Raises AnalysisError when ``required`` and the family or a required column is missing.
    """
    if family not in cap.families():
        if required:
            raise AnalysisError(f"{cap.path}: the capture has no {family!r} events "
                                f"(has: {', '.join(cap.families()) or 'none'})")
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in (*columns, *optional_columns)})
    names = cap.schema(family).names
    missing = [c for c in columns if c not in names]
    if missing:
        raise AnalysisError(f"{cap.path}: family {family!r} lacks column(s) {', '.join(missing)}")
    wanted = list(columns) + [c for c in optional_columns if c in names]
    frame = _plain_table(cap.table(family, columns=wanted))
    for c in optional_columns:
        if c not in frame.columns:
            frame[c] = pd.Series([None] * len(frame), dtype="object")
    return frame


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
    tids = frame[tid_column].to_numpy(dtype=np.int64, na_value=-1) if len(frame) else np.zeros(0, np.int64)
    if mapping:
        keys = np.fromiter(mapping.keys(), np.int64)
        values = np.fromiter(mapping.values(), np.int64)
        order = np.argsort(keys)
        keys, values = keys[order], values[order]
        pos = np.clip(np.searchsorted(keys, tids), 0, len(keys) - 1)
        vcpu = np.where(keys[pos] == tids, values[pos], -1)
    else:
        vcpu = np.full(len(tids), -1, np.int64)
    frame = frame.copy()
    frame["vcpu"] = vcpu.astype(np.int64)
    return frame


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
        codes, uniques = _group_codes(frame, by)
    else:
        codes, uniques = np.zeros(len(frame), np.int64), pd.DataFrame(index=[0])
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


def _group_codes(frame: pd.DataFrame, by: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    keys = frame[by]
    uniques = keys.drop_duplicates().sort_values(by, na_position="last").reset_index(drop=True)
    uniques["_code"] = np.arange(len(uniques), dtype=np.int64)
    codes = keys.merge(uniques, on=by, how="left")["_code"].to_numpy(dtype=np.int64)
    return codes, uniques.drop(columns="_code")


def format_ns(value: Any) -> str:
    """A duration in ns as a short human string: 950ns, 12.3us, 4.56ms, 1.234s."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "-"
    v = float(value)
    if abs(v) < 1e3:
        return f"{v:.0f}ns"
    if abs(v) < 1e6:
        return f"{v / 1e3:.1f}us"
    if abs(v) < 1e9:
        return f"{v / 1e6:.2f}ms"
    return f"{v / 1e9:.3f}s"


def format_table(frame: pd.DataFrame, *, title: str | None = None, width: int = 80,
                 formats: dict[str, Any] | None = None, max_rows: int = 40) -> str:
    """Fixed-width text of ``frame``; columns are dropped from the right to fit ``width``.

    ``formats`` maps a column to a callable turning one value into text (default: ``str``,
    durations in columns ending in ``_ns`` through :func:`format_ns`).
    """
    formats = formats or {}
    lines: list[str] = []
    if title:
        lines.append(title[:width])
    if frame.empty:
        lines.append("  (no rows)")
        return "\n".join(lines)
    shown = frame.head(max_rows)
    cells: dict[str, list[str]] = {}
    for column in shown.columns:
        fmt = formats.get(column)
        if fmt is None:
            fmt = format_ns if str(column).endswith("_ns") else _plain
        cells[column] = [fmt(v) for v in shown[column].tolist()]
    widths = {c: max(len(str(c).removesuffix("_ns")), *(len(s) for s in cells[c])) for c in shown.columns}
    kept: list[str] = []
    used = 0
    for column in shown.columns:
        need = widths[column] + (2 if kept else 0)
        if used + need > width:
            break
        kept.append(column)
        used += need
    header = "  ".join(str(c).removesuffix("_ns").rjust(widths[c]) for c in kept)
    lines.append(header)
    for i in range(len(shown)):
        lines.append("  ".join(cells[c][i].rjust(widths[c]) for c in kept))
    if len(frame) > max_rows:
        lines.append(f"  ... {len(frame) - max_rows} more rows (use --json for all)")
    if len(kept) < len(shown.columns):
        lines.append(f"  (columns not shown at {width} wide: {', '.join(map(str, shown.columns[len(kept):]))})"[:width])
    return "\n".join(lines)


def _plain(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


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

