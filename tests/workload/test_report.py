"""The dirty_log_perf_test output format, parsed with the regexes of PRIOR-ART §4.2 (no KVM needed)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracekit.workload import report

# The parsing regexes existing dirty_log_perf_test parsers use.
VALUE = re.compile(r"(\d+)\.(\d{9})s")
ITERATION = re.compile(r"^(?:# )?Iteration (\d+) (dirty memory|get dirty log|clear dirty log) time: (\d+\.\d{9})s$")
TOTAL = re.compile(r"^(?:# )?(Get|Clear) dirty log over (\d+) iterations took (\S+)s\. \(Avg (\S+)s/iteration\)$")


def parse_seconds(text: str) -> int:
    match = VALUE.fullmatch(text)
    assert match, text
    return int(match.group(1)) * 1_000_000_000 + int(match.group(2))


@given(st.integers(min_value=0, max_value=10**12))
def test_seconds_round_trip(ns):
    assert parse_seconds(report.seconds(ns)) == ns


def test_seconds_golden():
    assert report.seconds(1_234_567_890) == "1.234567890s"
    assert report.seconds(5) == "0.000000005s"
    with pytest.raises(ValueError):
        report.seconds(-1)


def test_iteration_lines_parse():
    lines = report.iteration_lines(3, 44_609_414, 103_103, 504_911)
    parsed = [ITERATION.match(line).groups() for line in lines]
    assert parsed == [
        ("3", "dirty memory", "0.044609414"),
        ("3", "get dirty log", "0.000103103"),
        ("3", "clear dirty log", "0.000504911"),
    ]
    assert len(report.iteration_lines(1, 1, 2, None)) == 2  # -g: no clear line


def test_total_lines_average():
    """Totals are sums and averages are floor(sum / iterations): (10+20+31) ns / 3 = 20 ns."""
    get, clear = report.total_lines([10, 20, 31], [3, 3, 3])
    assert TOTAL.match(get).groups() == ("Get", "3", "0.000000061", "0.000000020")
    assert TOTAL.match(clear).groups() == ("Clear", "3", "0.000000009", "0.000000003")
    assert len(report.total_lines([1], None)) == 1


def test_header_and_phase_lines():
    assert report.header_lines(2, "PA-bits:ANY, VA-bits:48,  2M pages", 1 << 32, 64 << 20) == [
        "Test iterations: 2",
        "Testing guest mode: PA-bits:ANY, VA-bits:48,  2M pages",
        "guest physical test memory: [0x100000000, 0x104000000)",
    ]
    assert report.populate_line(1) == "Populate memory time: 0.000000001s"
    assert report.enable_lines(2) == ["Enabling dirty logging time: 0.000000002s", ""]
    assert report.disable_line(3) == "Disabling dirty logging time: 0.000000003s"
