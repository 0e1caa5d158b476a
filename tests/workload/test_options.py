"""Option parsing and validation of the dirty-log workload (no KVM needed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracekit.errors import WorkloadError
from tracekit.workload.command import build_options
from tracekit.workload.options import DirtyLogOptions, format_size, parse_page_size, parse_size

MIB = 1 << 20


@pytest.mark.parametrize(
    "text,value",
    [("4096", 4096), ("64M", 64 * MIB), ("64m", 64 * MIB), ("1G", 1 << 30), ("2gb", 2 << 30), ("8k", 8192), ("1t", 1 << 40)],
)
def test_parse_size_like_dirty_log_perf_test(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "1.5G", "-1", "12x", "64 MiB"])
def test_parse_size_rejects(text):
    with pytest.raises(WorkloadError, match="bad size"):
        parse_size(text)


@given(st.integers(min_value=1, max_value=1 << 20), st.sampled_from(["", "K", "M", "G"]))
def test_format_size_round_trips(number, unit):
    size = parse_size(f"{number}{unit}")
    assert parse_size(format_size(size)) == size


def test_page_sizes():
    assert [parse_page_size(t) for t in ("4k", "2M", "1g", "2mb")] == [4096, 2 * MIB, 1 << 30, 2 * MIB]
    with pytest.raises(WorkloadError, match="4k, 2m or 1g"):
        parse_page_size("16k")


def test_defaults_are_valid():
    options = DirtyLogOptions()
    options.validate()
    assert (options.vcpus, options.bytes_per_vcpu, options.iterations, options.guest_page_size) == (1, 64 * MIB, 4, 2 * MIB)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"vcpus": 0}, "--vcpus"),
        ({"bytes_per_vcpu": 1000}, "--bytes-per-vcpu"),
        ({"iterations": 0}, "--iterations"),
        ({"backing": "hugepages"}, "--backing"),
        ({"write_percent": 101}, "--write-percent"),
        ({"seed": -1}, "--seed"),
        ({"log_mode": "bitmap"}, "--log-mode"),
        ({"guest_page_size": 8192}, "--guest-page-size"),
        ({"memslots": 0}, "--memslots"),
        ({"pass_timeout_s": 0.0}, "pass time limit must be positive"),
        ({"bytes_per_vcpu": 3 * MIB}, "not a multiple of the 2M guest page size"),
        ({"memslots": 3}, "-x 3 does not split"),
        ({"backing": "anonymous_hugetlb_2mb", "memslots": 64}, "multiples of 2M"),
    ],
)
def test_validate_names_the_option(changes, message):
    with pytest.raises(WorkloadError, match=message):
        DirtyLogOptions(**changes).validate()


def _build(**changes):
    values = dict(
        vcpus=1, bytes_per_vcpu="64M", iterations=4, backing="anonymous", write_percent=100, random_order=False,
        seed=1, no_manual_protect=False, memslots=1, log_mode=None, no_initially_set=False, guest_page_size="2m",
    )  # fmt: skip
    values.update(changes)
    return build_options(**values)


def test_dash_g_selects_legacy_get():
    assert _build(no_manual_protect=True).log_mode == "get"
    assert _build(log_mode="ring").log_mode == "ring"
    assert _build(no_initially_set=True).initially_set is False


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"no_manual_protect": True, "log_mode": "ring"}, "contradicts"),
        ({"no_initially_set": True, "log_mode": "get"}, "applies to --log-mode clear"),
        ({"log_mode": "dirty"}, "unknown"),
    ],
)
def test_conflicting_flags(changes, message):
    with pytest.raises(WorkloadError, match=message):
        _build(**changes)


@pytest.mark.parametrize(
    "changes,message",
    [({"ring_entries": 1024}, "applies to --log-mode ring"), ({"log_mode": "ring", "ring_entries": 1000}, "power of two"),
     ({"log_mode": "ring", "ring_entries": 128}, "at least 256")],
)
def test_ring_entries_validation(changes, message):
    with pytest.raises(WorkloadError, match=message):
        DirtyLogOptions(**changes).validate()
