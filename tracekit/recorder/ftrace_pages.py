"""Decoder of ftrace's binary ring-buffer pages (``per_cpu/cpuN/trace_pipe_raw``), host-independent.

:func:`parse_format` turns an event's ``format`` file into an :class:`EventFormat` with a numpy dtype;
:func:`decode_pages` turns whole pages into per-event arrays with absolute timestamps. Only the page bytes
and the format texts are needed, so buffers read here or copied out of an emulated guest decode alike.
Malformed pages raise :class:`RawBufferError`.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from tracekit.errors import TracekitError
from tracekit.host import format_fields

__all__ = [
    "RawBufferError",
    "FormatField",
    "EventFormat",
    "Decoded",
    "parse_format",
    "decode_pages",
    "PAGE_HEADER_SIZE",
]

PAGE_HEADER_SIZE = 16
_TYPE_PADDING, _TYPE_TIME_EXTEND, _TYPE_TIME_STAMP = 29, 30, 31
_MISSED_EVENTS, _MISSED_STORED = 1 << 31, 1 << 30
_COMMIT_MASK = (1 << 20) - 1
_ABS_TS_BITS = 59


class RawBufferError(TracekitError):
    """A format file or a ring-buffer page that cannot be decoded."""


@dataclass(frozen=True)
class FormatField:
    name: str
    ctype: str
    offset: int
    size: int
    signed: bool

    def numpy_format(self) -> str:
        array = re.search(r"\[(\d*)\]", self.ctype)
        if array or self.size not in (1, 2, 4, 8):
            return f"V{self.size}" if not array else f"S{self.size}"
        if self.ctype.startswith("__data_loc"):
            return "<u4"
        return f"<{'i' if self.signed else 'u'}{self.size}"


@dataclass(frozen=True)
class EventFormat:
    system: str
    name: str
    id: int
    fields: tuple[FormatField, ...]

    @property
    def size(self) -> int:
        return max((f.offset + f.size for f in self.fields), default=0)

    @cached_property
    def dtype(self) -> np.dtype:
        """Record layout of the event (built once: every poll of every CPU decodes with it)."""
        return np.dtype({
            "names": [f.name for f in self.fields],
            "formats": [f.numpy_format() for f in self.fields],
            "offsets": [f.offset for f in self.fields],
            "itemsize": self.size,
        })


def parse_format(text: str, system: str = "") -> EventFormat:
    """Parse one ``format`` file.

    Returns the name, numeric id and fields (offset, size, signedness); :attr:`EventFormat.dtype` is a numpy
    structured dtype of the event record (common fields included). Arrays become byte strings, ``__data_loc``
    fields their raw ``u32`` (offset | length << 16).
    """
    name_match = re.search(r"^name:\s*(\S+)", text, re.M)
    id_match = re.search(r"^ID:\s*(\d+)", text, re.M)
    if not name_match or not id_match:
        raise RawBufferError("format text lacks its name: or ID: line")
    fields = [FormatField(*field) for field in format_fields(text)]
    if not fields:
        raise RawBufferError(f"format of {name_match.group(1)} has no fields")
    return EventFormat(system, name_match.group(1), int(id_match.group(1)), tuple(fields))


@dataclass
class Decoded:
    """Result of :func:`decode_pages`."""

    events: dict[int, np.ndarray] = field(default_factory=dict)
    unknown: int = 0
    missed: int = 0
    missed_unknown: int = 0
    pages: int = 0


def decode_pages(data: bytes, formats: dict[int, EventFormat], *, cpu: int = 0, page_size: int = 4096,
                 commit_size: int = 8) -> Decoded:
    """Decode whole ring-buffer pages of one CPU.

    Pages are ``page_size`` bytes each: a ``u64`` timestamp, a ``commit`` word of ``commit_size`` bytes whose low
    20 bits are the data length and bits 30/31 the missed-events flags, then data. The :class:`Decoded` holds,
    for each event id of ``formats``, a numpy array of the event's fields plus ``ts_ns`` (page timestamp plus the
    events' deltas, absolute ``TIME_STAMP`` records honoured), ``cpu`` and ``tgid`` (a copy of ``common_pid``,
    the thread id, for callers that know the process to overwrite); events of other ids are counted in
    ``unknown``; missed events flagged by the pages in ``missed`` (the count when the page stored it, else 1 per
    flagged page, and ``missed_unknown`` pages). The event headers are scanned in Python (one small loop step
    per event, over the page as a list of 32-bit words); the fields are gathered with numpy per event id.
    """
    if len(data) % page_size:
        raise RawBufferError(f"{len(data)} bytes is not a whole number of {page_size}-byte pages")
    header_size = 8 + commit_size
    offsets: dict[int, list[int]] = {}
    stamps: dict[int, list[int]] = {}
    result = Decoded()
    commit_fmt = struct.Struct("<Q" if commit_size == 8 else "<I").unpack_from
    known = set(formats)
    for page_start in range(0, len(data), page_size):
        result.pages += 1
        ts = struct.unpack_from("<Q", data, page_start)[0]
        commit = commit_fmt(data, page_start + 8)[0]
        length = commit & _COMMIT_MASK
        if length > page_size - header_size:
            raise RawBufferError(f"page at {page_start}: data length {length} exceeds the page")
        if commit & _MISSED_EVENTS:
            if commit & _MISSED_STORED and header_size + length + 8 <= page_size:
                result.missed += struct.unpack_from("<Q", data, page_start + header_size + length)[0]
            else:
                result.missed += 1
                result.missed_unknown += 1
        # The page's data as 32-bit words (events are 4-byte aligned): list indexing is the cheapest
        # way to walk variable-length headers in Python.
        words = np.frombuffer(data, dtype="<u4", count=length // 4, offset=page_start + header_size).tolist()
        base = page_start + header_size
        end = len(words)
        pos = 0
        while pos < end:
            word = words[pos]
            type_len = word & 0x1F
            if type_len == _TYPE_PADDING:
                if word >> 5 == 0:
                    break  # the rest of the page is empty
                pos += 1 + (words[pos + 1] + 3) // 4
                continue
            if type_len == _TYPE_TIME_EXTEND:
                ts += (words[pos + 1] << 27) | (word >> 5)
                pos += 2
                continue
            if type_len == _TYPE_TIME_STAMP:
                ts = (ts & ~((1 << _ABS_TS_BITS) - 1)) | (words[pos + 1] << 27) | (word >> 5)
                pos += 2
                continue
            ts += word >> 5
            if type_len == 0:
                size_words = (words[pos + 1] - 4 + 3) // 4 if pos + 1 < end else 0
                body = pos + 2
            else:
                size_words = type_len
                body = pos + 1
            if size_words < 1 or body + size_words > end:
                raise RawBufferError(f"page at {page_start}: event at {4 * pos + header_size} overruns the page")
            event_id = words[body] & 0xFFFF
            if event_id in known:
                offsets.setdefault(event_id, []).append(base + 4 * body)
                stamps.setdefault(event_id, []).append(ts)
            else:
                result.unknown += 1
            pos = body + size_words
    raw = np.frombuffer(data + bytes(256), dtype=np.uint8)
    for event_id, starts in offsets.items():
        fmt = formats[event_id]
        itemsize = fmt.dtype.itemsize
        index = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(itemsize, dtype=np.int64)
        records = np.ascontiguousarray(raw[index]).view(fmt.dtype).reshape(len(starts))
        out = np.empty(len(starts), dtype=_with_time(fmt.dtype))
        for name in fmt.dtype.names:
            out[name] = records[name]
        out["ts_ns"] = np.asarray(stamps[event_id], dtype=np.int64)
        out["cpu"] = cpu
        out["tgid"] = records["common_pid"] if "common_pid" in fmt.dtype.names else 0
        result.events[event_id] = out
    return result


def _with_time(dtype: np.dtype) -> np.dtype:
    descr = [(name, dtype.fields[name][0]) for name in dtype.names]
    return np.dtype(descr + [("ts_ns", "<i8"), ("cpu", "<i4"), ("tgid", "<i4")])
