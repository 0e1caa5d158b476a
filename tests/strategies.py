"""Hypothesis strategies for tracekit's own data: event tables that obey the capture schema rules.

Tables start with the common columns (ts_ns per-CPU monotonic, cpu, pid, tid) followed by a random set of
typed family columns (unsigned addresses over the full 64-bit range, small signed levels, dictionary strings,
nullable values, string lists).
"""

from __future__ import annotations

import hypothesis.strategies as st
import pyarrow as pa

from tracekit.capture import COMMON_FIELDS

FAMILY_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)

_COLUMN_TYPES = {
    "u64": (pa.uint64(), st.integers(0, 2**64 - 1)),
    "u32": (pa.uint32(), st.integers(0, 2**32 - 1)),
    "i8": (pa.int8(), st.integers(-1, 5)),
    "i64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "dict": (pa.dictionary(pa.int32(), pa.string()), st.sampled_from(["KVM_RUN", "KVM_GET_DIRTY_LOG", "LEAF", "é"])),
    "f64": (pa.float64(), st.floats(allow_nan=False, allow_infinity=False)),
    "frames": (pa.list_(pa.string()), st.lists(st.text(max_size=8), max_size=3)),
}


@st.composite
def family_schemas(draw) -> pa.Schema:
    names = draw(st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), max_size=5, unique=True))
    names = [n for n in names if n not in ("ts_ns", "cpu", "pid", "tid")]
    fields = list(COMMON_FIELDS)
    for name in names:
        kind = draw(st.sampled_from(sorted(_COLUMN_TYPES)))
        fields.append(pa.field(name, _COLUMN_TYPES[kind][0], nullable=True))
    return pa.schema(fields)


def _value_strategy(field: pa.Field):
    for arrow_type, values in _COLUMN_TYPES.values():
        if arrow_type == field.type:
            return st.one_of(st.none(), values)
    raise AssertionError(field)


@st.composite
def event_tables(draw, schema: pa.Schema, max_rows: int = 40) -> pa.Table:
    """A table of ``schema`` whose ts_ns increase per CPU."""
    n = draw(st.integers(0, max_rows))
    cpus = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    steps = draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n))
    last: dict[int, int] = {}
    ts = []
    for cpu, step in zip(cpus, steps):
        last[cpu] = last.get(cpu, 10**9) + step
        ts.append(last[cpu])
    columns = {
        "ts_ns": pa.array(ts, pa.int64()),
        "cpu": pa.array(cpus, pa.int32()),
        "pid": pa.array(draw(st.lists(st.integers(1, 2**22), min_size=n, max_size=n)), pa.int32()),
        "tid": pa.array(draw(st.lists(st.integers(1, 2**22), min_size=n, max_size=n)), pa.int32()),
    }
    for field in list(schema)[len(COMMON_FIELDS):]:
        values = draw(st.lists(_value_strategy(field), min_size=n, max_size=n))
        if pa.types.is_dictionary(field.type):
            columns[field.name] = pa.array(values, pa.string()).dictionary_encode()
        else:
            columns[field.name] = pa.array(values, field.type)
    return pa.table(columns).cast(schema)
