"""Decode ftrace ring-buffer pages (``per_cpu/cpuN/trace_pipe_raw``) with the events' ``format`` files.

Contract
--------
:func:`parse_format` reads one tracefs ``format`` file into an :class:`EventFormat` (id, name,
fields with offset/size/signedness; ``__data_loc`` strings and trailing ``char buf[]`` arrays are
decoded as text). :func:`decode_pages` walks the pages of one CPU (page size 4096 by default, the
``header_page`` layout of 64-bit kernels: u64 timestamp, 8-byte commit word whose low 27 bits are
the data length, data from byte 16) and yields :class:`RawEvent` records: absolute timestamp in
the buffer's clock (ns for ``mono``/``local``), the CPU given by the caller, the common pid and a
dict of field values. Ring-buffer padding, time-extend and absolute-timestamp records are handled;
an event id with no format is counted in ``unknown`` and skipped. Malformed pages raise
:class:`tracekit.errors.CaptureFormatError`. Standard library only.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Iterator

from tracekit.errors import CaptureFormatError

__all__ = ["EventFormat", "FieldFormat", "RawEvent", "parse_format", "decode_pages", "DecodeStats"]

_FIELD = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d+);")
_INT = {1: "b", 2: "h", 4: "i", 8: "q"}
_TYPE_PADDING, _TYPE_TIME_EXTEND, _TYPE_TIME_STAMP = 29, 30, 31
_COMMIT_MASK = (1 << 27) - 1
_TS_SHIFT = 27


@dataclass(frozen=True)
class FieldFormat:
    name: str
    offset: int
    size: int
    signed: bool
    kind: str  # "int", "data_loc", "chars"


@dataclass
class EventFormat:
    id: int
    system: str
    name: str
    fields: list[FieldFormat]

    def decode(self, data: bytes) -> dict:
        values: dict = {}
        for f in self.fields:
            if f.kind == "int":
                code = _INT.get(f.size)
                if code is None:
                    continue
                values[f.name] = struct.unpack_from("<" + (code if f.signed else code.upper()), data, f.offset)[0]
            elif f.kind == "data_loc":
                loc = struct.unpack_from("<I", data, f.offset)[0]
                start, length = loc & 0xFFFF, loc >> 16
                values[f.name] = data[start : start + length].split(b"\0", 1)[0].decode(errors="replace")
            else:
                end = f.offset + f.size if f.size else len(data)
                values[f.name] = data[f.offset : end].split(b"\0", 1)[0].decode(errors="replace")
        return values


@dataclass
class RawEvent:
    ts: int
    cpu: int
    pid: int
    system: str
    name: str
    fields: dict


@dataclass
class DecodeStats:
    events: int = 0
    pages: int = 0
    unknown: int = 0
    missed_pages: int = 0
    by_name: dict[str, int] = field(default_factory=dict)


def parse_format(text: str, system: str | None = None) -> EventFormat:
    """Parse a tracefs ``format`` file (the common_* fields are kept; ``system`` overrides the group)."""
    name_match = re.search(r"^name:\s*(\S+)", text, re.M)
    id_match = re.search(r"^ID:\s*(\d+)", text, re.M)
    if not name_match or not id_match:
        raise CaptureFormatError("tracefs format file without name/ID lines")
    fields = []
    for m in _FIELD.finditer(text):
        decl = m.group("decl").strip()
        is_loc = decl.startswith("__data_loc")
        array = re.search(r"(\w+)\s*\[(\d*)\]\s*$", decl)
        if array:
            fname = array.group(1)
            kind = "data_loc" if is_loc else "chars"
        else:
            fname = decl.split()[-1]
            kind = "data_loc" if is_loc else "int"
        fields.append(FieldFormat(fname, int(m.group("offset")), int(m.group("size")), m.group("signed") == "1", kind))
    return EventFormat(int(id_match.group(1)), system or "", name_match.group(1), fields)


def decode_pages(
    data: bytes, formats: dict[int, EventFormat], cpu: int, stats: DecodeStats | None = None, page_size: int = 4096
) -> Iterator[RawEvent]:
    """Yield the events of one CPU's raw pages, in buffer order."""
    stats = stats if stats is not None else DecodeStats()
    if len(data) % page_size:
        raise CaptureFormatError(f"raw trace of cpu {cpu} is {len(data)} bytes, not a multiple of the page size {page_size}")
    for page_start in range(0, len(data), page_size):
        ts, commit = struct.unpack_from("<QQ", data, page_start)
        if commit & (1 << 31):
            stats.missed_pages += 1
        length = commit & _COMMIT_MASK
        if length > page_size - 16:
            raise CaptureFormatError(f"raw trace page at byte {page_start} of cpu {cpu} has commit {length}")
        stats.pages += 1
        pos, end = page_start + 16, page_start + 16 + length
        while pos < end:
            header = struct.unpack_from("<I", data, pos)[0]
            type_len, delta = header & 0x1F, header >> 5
            if type_len == _TYPE_PADDING:
                if delta == 0:
                    break
                pos += 4 + struct.unpack_from("<I", data, pos + 4)[0]
                continue
            if type_len == _TYPE_TIME_EXTEND:
                ts += (struct.unpack_from("<I", data, pos + 4)[0] << _TS_SHIFT) + delta
                pos += 8
                continue
            if type_len == _TYPE_TIME_STAMP:
                absolute = (struct.unpack_from("<I", data, pos + 4)[0] << _TS_SHIFT) | delta
                ts = (ts & ~((1 << 59) - 1)) | absolute
                pos += 8
                continue
            if type_len == 0:
                size = struct.unpack_from("<I", data, pos + 4)[0] - 4
                body = pos + 8
            else:
                size = type_len * 4
                body = pos + 4
            ts += delta
            record = data[body : body + size]
            pos = body + ((size + 3) & ~3)
            event_id = struct.unpack_from("<H", record, 0)[0]
            fmt = formats.get(event_id)
            if fmt is None:
                stats.unknown += 1
                continue
            stats.events += 1
            stats.by_name[fmt.name] = stats.by_name.get(fmt.name, 0) + 1
            pid = struct.unpack_from("<i", record, 4)[0]
            yield RawEvent(ts, cpu, pid, fmt.system, fmt.name, fmt.decode(record))
