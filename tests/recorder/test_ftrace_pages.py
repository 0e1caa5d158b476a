"""The ftrace raw-page decoder against pages built here from the documented layout (no kernel)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.recorder.ftrace_pages import RawBufferError, decode_pages, parse_format

WALK_FORMAT = """name: kvm_mmu_pagetable_walk
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__u64 addr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u32 pferr;\toffset:16;\tsize:4;\tsigned:0;

print fmt: "addr %llx pferr %x", REC->addr, REC->pferr
"""
LOCK_FORMAT = """name: contention_end
ID: 77
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * lock_addr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int ret;\toffset:16;\tsize:4;\tsigned:1;
\tfield:char comm[16];\toffset:20;\tsize:16;\tsigned:0;
"""
PAGE = 4096


def walk_record(pid: int, addr: int, pferr: int) -> bytes:
    return struct.pack("<HBBiQI", 1234, 0, 0, pid, addr, pferr) + b"\0" * 4  # 24 bytes, 4-aligned


def lock_record(pid: int, addr: int, ret: int) -> bytes:
    return struct.pack("<HBBiQi16s", 77, 0, 0, pid, addr, ret, b"worker")


def page(entries: list[bytes], ts: int, *, missed: int | None = None, flag_missed: bool = False) -> bytes:
    """A ring-buffer page: u64 timestamp, u64 commit (length + flags), data, zero fill."""
    data = b"".join(entries)
    commit = len(data)
    tail = b""
    if missed is not None:
        commit |= (1 << 31) | (1 << 30)
        tail = struct.pack("<Q", missed)
    elif flag_missed:
        commit |= 1 << 31
    body = struct.pack("<QQ", ts, commit) + data + tail
    assert len(body) <= PAGE
    return body + bytes(PAGE - len(body))


def event(delta: int, payload: bytes, *, force_long: bool = False) -> bytes:
    """A data event: type_len = words when it fits in 28 words, else 0 with the length in array[0]."""
    assert len(payload) % 4 == 0 and delta < (1 << 27)
    if not force_long and len(payload) <= 28 * 4:
        return struct.pack("<I", (delta << 5) | (len(payload) // 4)) + payload
    return struct.pack("<II", delta << 5, len(payload) + 4) + payload


def time_extend(delta: int) -> bytes:
    return struct.pack("<II", ((delta & ((1 << 27) - 1)) << 5) | 30, delta >> 27)


def time_stamp(absolute: int) -> bytes:
    return struct.pack("<II", ((absolute & ((1 << 27) - 1)) << 5) | 31, absolute >> 27)


def padding(length: int) -> bytes:
    return struct.pack("<II", 29 | (1 << 5), length) + bytes(length - 4)


FORMATS = {1234: parse_format(WALK_FORMAT, "kvmmmu"), 77: parse_format(LOCK_FORMAT, "lock")}


def test_parse_format_fields_and_dtype():
    fmt = FORMATS[77]
    assert (fmt.system, fmt.name, fmt.id) == ("lock", "contention_end", 77)
    assert [f.name for f in fmt.fields][-3:] == ["lock_addr", "ret", "comm"]
    assert fmt.dtype.itemsize == 36
    assert fmt.dtype["ret"] == np.dtype("<i4") and fmt.dtype["comm"] == np.dtype("S16")


def test_parse_format_rejects_garbage():
    with pytest.raises(RawBufferError):
        parse_format("hello")


def test_deltas_extends_and_long_events():
    """Timestamps: page ts 1000, +5, extend by 2**27+3, +1 (long-form event), absolute 7e9, +2."""
    entries = [
        event(5, walk_record(10, 0x1000, 3)),
        time_extend((1 << 27) + 3),
        event(1, lock_record(11, 0xFFFF0000, -4), force_long=True),
        time_stamp(7_000_000_000),
        event(2, walk_record(10, 0x2000, 1)),
    ]
    decoded = decode_pages(page(entries, 1000), FORMATS, cpu=3)
    walks, locks = decoded.events[1234], decoded.events[77]
    assert list(walks["ts_ns"]) == [1005, 7_000_000_002]
    assert list(walks["addr"]) == [0x1000, 0x2000] and list(walks["pferr"]) == [3, 1]
    assert list(locks["ts_ns"]) == [1005 + (1 << 27) + 3 + 1]
    assert locks["ret"][0] == -4 and locks["comm"][0] == b"worker" and locks["lock_addr"][0] == 0xFFFF0000
    assert set(walks["cpu"]) == {3} and list(walks["tgid"]) == [10, 10]


def test_padding_unknown_and_missed_counts():
    entries = [padding(12), event(1, struct.pack("<HBBi", 999, 0, 0, 5) + b"\0" * 4), event(1, walk_record(1, 1, 1))]
    data = page(entries, 0, missed=17) + page([event(4, walk_record(1, 2, 2))], 50, flag_missed=True)
    decoded = decode_pages(data, FORMATS)
    assert decoded.unknown == 1
    assert decoded.missed == 17 + 1 and decoded.missed_unknown == 1
    assert list(decoded.events[1234]["ts_ns"]) == [2, 54] and decoded.pages == 2


def test_truncated_or_overrunning_pages_raise():
    with pytest.raises(RawBufferError, match="whole number"):
        decode_pages(bytes(100), FORMATS)
    bad = struct.pack("<QQ", 0, 12) + struct.pack("<I", 28) + bytes(PAGE - 20)  # claims 112 bytes in 12
    with pytest.raises(RawBufferError, match="overruns"):
        decode_pages(bad, FORMATS)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, (1 << 27) - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
                          st.booleans()), min_size=0, max_size=150))
def test_roundtrip_random_events(rows):
    """Events split over as many pages as needed decode back to the same fields and running times."""
    pages, entries, size, ts, expected = [], [], 0, 0, []
    page_ts = 0
    for delta, addr, pferr, long_form in rows:
        blob = event(delta, walk_record(42, addr, pferr), force_long=long_form)
        if size + len(blob) > PAGE - 16:
            pages.append(page(entries, page_ts))
            entries, size, page_ts = [], 0, ts
        entries.append(blob)
        size += len(blob)
        ts += delta
        expected.append((ts, addr, pferr))
    pages.append(page(entries, page_ts))
    decoded = decode_pages(b"".join(pages), FORMATS)
    got = decoded.events.get(1234)
    got_rows = [] if got is None else list(zip(got["ts_ns"].tolist(), got["addr"].tolist(), got["pferr"].tolist()))
    assert got_rows == expected
