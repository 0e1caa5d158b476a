"""Access plans: which 4 KiB pages a vCPU touches in one pass, in which order, writing or reading.

:func:`pass_plan` returns one vCPU's plan for one pass (an ``array('Q')`` of guest-virtual page
addresses, bit 0 set for a write; every page of the share exactly once, shuffled with
``random_order``, each written with probability ``write_percent`` %) and marks the written pages in
the test region's dirty bitmap. Standard library only.
"""

from __future__ import annotations

import random
from array import array

from tracekit.workload.backend import ACCESS_STRIDE, PLAN_WRITE_BIT

__all__ = ["pass_plan", "set_bits"]


def pass_plan(
    base_gva: int,
    first_page: int,
    pages: int,
    *,
    random_order: bool,
    write_percent: int,
    rng: random.Random,
    written: bytearray,
) -> array:
    """The plan of one pass (see the module contract); sets the written pages' bits in ``written``."""
    start = base_gva + first_page * ACCESS_STRIDE
    if not random_order and write_percent == 100:
        set_bits(written, first_page, pages)
        return array("Q", range(start | PLAN_WRITE_BIT, start + pages * ACCESS_STRIDE, ACCESS_STRIDE))
    order = list(range(pages))
    if random_order:
        rng.shuffle(order)
    if write_percent == 100:
        writes = [True] * pages
    elif write_percent == 0:
        writes = [False] * pages
    else:
        threshold = write_percent / 100.0
        draw = rng.random
        writes = [draw() < threshold for _ in range(pages)]
    for page, write in zip(order, writes):
        if write:
            bit = first_page + page
            written[bit >> 3] |= 1 << (bit & 7)
    return array("Q", [start + page * ACCESS_STRIDE + write for page, write in zip(order, writes)])


def set_bits(bitmap: bytearray, first: int, count: int) -> None:
    """Set bits [first, first+count) of a little-endian bitmap."""
    end = first + count
    while first < end and first & 7:
        bitmap[first >> 3] |= 1 << (first & 7)
        first += 1
    whole = (end - first) >> 3
    bitmap[first >> 3 : (first >> 3) + whole] = b"\xff" * whole
    first += whole << 3
    while first < end:
        bitmap[first >> 3] |= 1 << (first & 7)
        first += 1
