"""Constants and checks shared by the capture writer and reader (capture format v1).

A capture is a directory ``NAME.tkcap/`` holding ``capture.json`` (the manifest) and one
sub-directory per event family with numbered Parquet segments ``part-NNNNNN.parquet`` and a zero-row
``_schema.parquet``. Every family schema starts with :data:`COMMON_FIELDS`. See docs/capture-format.md.
"""

from __future__ import annotations

import re

import pyarrow as pa

from tracekit.errors import CaptureFormatError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "SCHEMA_FILE",
    "SEGMENT_GLOB",
    "COMMON_FIELDS",
    "BULKY_MANIFEST_KEYS",
    "segment_name",
    "check_family_name",
    "check_family_schema",
    "is_family_name",
    "is_segment_name",
    "shown_path",
]

FORMAT_NAME = "tracekit-capture"
FORMAT_VERSION = 1
MANIFEST_NAME = "capture.json"
SCHEMA_FILE = "_schema.parquet"
SEGMENT_GLOB = "part-*.parquet"

#: The columns every family table starts with, in this order.
COMMON_FIELDS = [
    pa.field("ts_ns", pa.int64(), nullable=False),  # CLOCK_MONOTONIC, as bpf_ktime_get_ns()
    pa.field("cpu", pa.int32(), nullable=False),
    pa.field("pid", pa.int32(), nullable=False),  # tgid
    pa.field("tid", pa.int32(), nullable=False),
]

#: Manifest keys too large to copy into every segment's key-value metadata.
BULKY_MANIFEST_KEYS = ("workload", "command_output")

_FAMILY_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SEGMENT_RE = re.compile(r"^part-[0-9]{6,}\.parquet$")


def segment_name(index: int) -> str:
    """File name of segment ``index`` (1-based)."""
    return f"part-{index:06d}.parquet"


def is_family_name(name: str) -> bool:
    """True when ``name`` can be a family directory (lowercase letters, digits and ``_``)."""
    return isinstance(name, str) and _FAMILY_RE.match(name) is not None


def is_segment_name(name: str) -> bool:
    """True when ``name`` is a finished segment's file name (``part-NNNNNN.parquet``)."""
    return _SEGMENT_RE.match(name) is not None


def shown_path(path: object) -> str:
    """``path`` as printable text: bytes of non-UTF-8 names as ``\\xNN`` escapes."""
    text = str(path)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_family_name(family: str) -> None:
    """Raise CaptureFormatError unless ``family`` is a safe directory name (lowercase, digits, ``_``)."""
    if not is_family_name(family):
        raise CaptureFormatError(f"invalid family name {family!r}: use lowercase letters, digits and '_'")


def check_family_schema(family: str, schema: pa.Schema) -> None:
    """Raise CaptureFormatError unless ``schema`` starts with the common columns, in order and type."""
    names = schema.names[: len(COMMON_FIELDS)]
    for i, field in enumerate(COMMON_FIELDS):
        if i >= len(names) or schema.field(i).name != field.name or schema.field(i).type != field.type:
            expected = ", ".join(f"{f.name}:{f.type}" for f in COMMON_FIELDS)
            raise CaptureFormatError(f"family {family!r}: schema must start with {expected}")
