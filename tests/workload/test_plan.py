"""Access plans: every page once, the write bits equal the expected dirty set (no KVM needed)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from tracekit.workload.plan import pass_plan, set_bits

BASE = 0xC000_0000


def _bits(bitmap: bytearray) -> set[int]:
    value = int.from_bytes(bitmap, "little")
    return {i for i in range(value.bit_length()) if value >> i & 1}


@given(
    first=st.integers(min_value=0, max_value=200),
    pages=st.integers(min_value=0, max_value=300),
    random_order=st.booleans(),
    write_percent=st.integers(min_value=0, max_value=100),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_plan_touches_each_page_once_and_marks_exactly_its_writes(first, pages, random_order, write_percent, seed):
    written = bytearray(64)
    plan = pass_plan(BASE, first, pages, random_order=random_order, write_percent=write_percent,
                     rng=random.Random(seed), written=written)  # fmt: skip
    touched = [(entry & ~1) for entry in plan]
    assert sorted(touched) == [BASE + (first + i) * 4096 for i in range(pages)]
    assert _bits(written) == {(entry - BASE) // 4096 for entry in plan if entry & 1}
    if not random_order:
        assert touched == sorted(touched)
    if write_percent in (0, 100):
        assert all(entry & 1 == (write_percent == 100) for entry in plan)


def test_plan_is_reproducible_from_the_seed():
    def plan(seed):
        return list(pass_plan(BASE, 0, 500, random_order=True, write_percent=40, rng=random.Random(seed), written=bytearray(64)))

    assert plan(1) == plan(1) != plan(2)


def test_write_fraction_is_close_to_the_percentage():
    """500 pages at 40 %: 200 expected writes, binomial sd ~11; the seeded draw is within 4 sd."""
    written = bytearray(64)
    pass_plan(BASE, 0, 500, random_order=False, write_percent=40, rng=random.Random(5), written=written)
    assert abs(len(_bits(written)) - 200) < 44


@given(st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=300))
def test_set_bits_matches_naive(first, count):
    bitmap = bytearray(80)
    set_bits(bitmap, first, count)
    assert int.from_bytes(bitmap, "little") == ((1 << count) - 1) << first
