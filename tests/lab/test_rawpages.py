"""Decoding of ftrace ring-buffer pages: hand-built pages with every record type, and a round trip."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.errors import CaptureFormatError
from tracekit.lab.rawpages import DecodeStats, decode_pages, parse_format

SPLIT_FORMAT = """name: stage2_split
ID: 1500
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned long __probe_ip;\toffset:8;\tsize:8;\tsigned:0;
\tfield:s8 level;\toffset:16;\tsize:1;\tsigned:1;
\tfield:u64 addr;\toffset:17;\tsize:8;\tsigned:0;
\tfield:s32 visit;\toffset:25;\tsize:4;\tsigned:1;

print fmt: "(%lx) level=%d addr=0x%Lx visit=%d", REC->__probe_ip, REC->level, REC->addr, REC->visit
"""

PRINT_FORMAT = """name: print
ID: 5
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned long ip;\toffset:8;\tsize:8;\tsigned:0;
\tfield:char buf[];\toffset:16;\tsize:0;\tsigned:0;

print fmt: "%ps: %s", (void *)REC->ip, REC->buf
"""


def _split_record(pid: int, level: int, addr: int, visit: int) -> bytes:
    return struct.pack("<HBBiQbQi", 1500, 0, 0, pid, 0xFFFF0000, level, addr, visit)


def _page(records: list[tuple[int, bytes]], base_ts: int, *, long_form: bool = False) -> bytes:
    """One 4 KiB page: each record is (delta_ns, payload); deltas >= 2**27 get a time-extend record."""
    body = b""
    for delta, payload in records:
        if delta >= 1 << 27:
            body += struct.pack("<II", 30 | ((delta & ((1 << 27) - 1)) << 5), delta >> 27)
            delta = 0
        padded = payload + b"\0" * (-len(payload) % 4)
        if long_form or len(padded) > 28 * 4:
            body += struct.pack("<II", delta << 5, len(padded) + 4) + padded
        else:
            body += struct.pack("<I", (len(padded) // 4) | (delta << 5)) + padded
    assert len(body) <= 4096 - 16
    return struct.pack("<QQ", base_ts, len(body)) + body + b"\0" * (4096 - 16 - len(body))


def _formats() -> dict:
    split = parse_format(SPLIT_FORMAT, "tk")
    marker = parse_format(PRINT_FORMAT, "ftrace")
    return {split.id: split, marker.id: marker}


def test_format_fields_are_parsed_with_types():
    fmt = parse_format(SPLIT_FORMAT, "tk")
    by_name = {f.name: f for f in fmt.fields}
    assert (fmt.id, fmt.name, fmt.system) == (1500, "stage2_split", "tk")
    assert (by_name["level"].offset, by_name["level"].size, by_name["level"].signed) == (16, 1, True)
    assert by_name["addr"].offset == 17 and by_name["addr"].kind == "int"


def test_hand_built_page_decodes_values_and_timestamps():
    """Absolute time = page timestamp + running sum of deltas (100, then 7 more, then a 2**30 extend)."""
    page = _page(
        [(100, _split_record(42, 2, 0x4000_0000, 1)), (7, _split_record(42, -1, 0x20_0000, 4)),
         (1 << 30, _split_record(43, 3, 0x4000_1000, 1))],  # fmt: skip
        base_ts=1_000_000,
    )
    stats = DecodeStats()
    events = list(decode_pages(page, _formats(), cpu=1, stats=stats))
    assert [e.ts for e in events] == [1_000_100, 1_000_107, 1_000_107 + (1 << 30)]
    assert [e.fields["level"] for e in events] == [2, -1, 3]
    assert events[0].fields["addr"] == 0x4000_0000 and events[1].fields["visit"] == 4
    assert [e.pid for e in events] == [42, 42, 43] and {e.cpu for e in events} == {1}
    assert stats.events == 3 and stats.pages == 1 and stats.by_name == {"stage2_split": 3}


def test_long_form_records_and_trailing_char_array():
    marker = struct.pack("<HBBiQ", 5, 0, 0, 7, 0) + b"tk-step-begin 0 touch\n\0"
    page = _page([(5, marker), (5, _split_record(7, 2, 0x1000, 1))], base_ts=10, long_form=True)
    events = list(decode_pages(page, _formats(), cpu=0))
    assert events[0].fields["buf"] == "tk-step-begin 0 touch\n"
    assert events[1].ts == 20 and events[1].fields["addr"] == 0x1000


def test_unknown_event_ids_are_counted_and_skipped():
    unknown = struct.pack("<HBBi", 999, 0, 0, 1) + b"\0" * 8
    stats = DecodeStats()
    events = list(decode_pages(_page([(1, unknown), (1, _split_record(1, 2, 0, 1))], 0), _formats(), 0, stats))
    assert len(events) == 1 and stats.unknown == 1


def test_truncated_input_is_a_format_error():
    with pytest.raises(CaptureFormatError):
        list(decode_pages(b"\0" * 100, _formats(), 0))


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, (1 << 31)), st.integers(-1, 3), st.integers(0, (1 << 52) - 1), st.sampled_from([1, 2, 4])),
        min_size=1,
        max_size=60,
    ),
    st.integers(0, 1 << 40),
)
def test_round_trip(records, base_ts):
    """Whatever the deltas and values, decoding returns them in order with cumulative timestamps."""
    page = _page([(d, _split_record(9, lvl, addr, v)) for d, lvl, addr, v in records], base_ts)
    events = list(decode_pages(page, _formats(), cpu=0))
    expected_ts, ts = [], base_ts
    for delta, *_ in records:
        ts += delta
        expected_ts.append(ts)
    assert [e.ts for e in events] == expected_ts
    assert [(e.fields["level"], e.fields["addr"], e.fields["visit"]) for e in events] == [r[1:] for r in records]
