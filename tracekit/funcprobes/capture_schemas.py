"""Arrow schemas of the capture families written by the function probes.

Contract
--------
Each schema starts with :data:`tracekit.capture.COMMON_FIELDS` (``ts_ns`` CLOCK_MONOTONIC ns,
``cpu``, ``pid``, ``tid``), then the typed columns documented in
``docs/capture-families-funcprobes.md``. Addresses and sizes are bytes (uint64), durations ns
(int64, -1 when the return was not seen), levels are the architecture's own numbering (arm64: 0..3
with 3 the page level; x86: 1 = 4K leaf .. 4/5 root), low-cardinality strings are dictionary
encoded. :data:`SCHEMAS` maps family name to schema.
"""

from __future__ import annotations

import pyarrow as pa

from tracekit.capture import COMMON_FIELDS

__all__ = ["SCHEMAS", "STAGE2_WALK", "STAGE2_VISIT", "SPLIT", "FAULT", "FUNC_CALL"]

_DICT = pa.dictionary(pa.int32(), pa.string())

STAGE2_WALK = pa.schema(
    COMMON_FIELDS
    + [
        pa.field("walk_id", pa.int64(), nullable=False),
        pa.field("addr", pa.uint64()),
        pa.field("size", pa.uint64()),
        pa.field("flags", pa.uint32()),
        pa.field("start_level", pa.int8()),
        pa.field("initiator", _DICT),
        pa.field("duration_ns", pa.int64()),
        pa.field("ret", pa.int32()),
    ]
)

STAGE2_VISIT = pa.schema(
    COMMON_FIELDS
    + [
        pa.field("walk_id", pa.int64(), nullable=False),
        pa.field("visitor", _DICT, nullable=False),
        pa.field("level", pa.int8(), nullable=False),
        pa.field("kind", _DICT, nullable=False),
        pa.field("count", pa.int64(), nullable=False),
    ]
)

SPLIT = pa.schema(
    COMMON_FIELDS
    + [
        pa.field("probe", _DICT, nullable=False),
        pa.field("addr", pa.uint64()),
        pa.field("size", pa.uint64()),
        pa.field("level", pa.int8()),
        pa.field("duration_ns", pa.int64()),
        pa.field("ret", pa.int32()),
    ]
)

FAULT = pa.schema(
    COMMON_FIELDS
    + [
        pa.field("probe", _DICT, nullable=False),
        pa.field("vcpu_id", pa.int32()),
        pa.field("addr", pa.uint64()),
        pa.field("duration_ns", pa.int64()),
        pa.field("ret", pa.int64()),
    ]
)

FUNC_CALL = pa.schema(
    COMMON_FIELDS
    + [
        pa.field("name", _DICT, nullable=False),
        pa.field("duration_ns", pa.int64()),
        pa.field("ret", pa.int64()),
        pa.field("args", pa.string()),
    ]
)

SCHEMAS = {
    "stage2_walk": STAGE2_WALK,
    "stage2_visit": STAGE2_VISIT,
    "split": SPLIT,
    "fault": FAULT,
    "func_call": FUNC_CALL,
}
