"""Dirty-ring harvesting over a ring held in ordinary memory (no KVM needed)."""

from __future__ import annotations

import ctypes

from tracekit.workload import uapi
from tracekit.workload.dirtyring import DIRTY_GFN_SIZE, DirtyRing, ring_bytes_for


def _ring(entries: int):
    array = (uapi.KvmDirtyGfn * entries)()
    return array, DirtyRing(ctypes.addressof(array), entries * DIRTY_GFN_SIZE)


def _publish(array, index: int, slot: int, offset: int) -> None:
    entry = array[index % len(array)]
    entry.slot, entry.offset, entry.flags = slot, offset, uapi.KVM_DIRTY_GFN_F_DIRTY


def test_harvest_collects_published_entries_and_marks_them_reset():
    array, ring = _ring(8)
    for i, (slot, offset) in enumerate([(1, 5), (1, 6), (2 | (1 << 16), 7)]):
        _publish(array, i, slot, offset)
    assert ring.harvest() == [(1, 5), (1, 6), (65538, 7)]
    assert [array[i].flags for i in range(4)] == [uapi.KVM_DIRTY_GFN_F_RESET] * 3 + [0]
    assert ring.harvest() == []
    ring.release()


def test_harvest_wraps_around():
    """The kernel's producer index runs on modulo the ring size; so does the consumer."""
    array, ring = _ring(4)
    for i in range(3):
        _publish(array, i, 1, i)
    assert len(ring.harvest()) == 3
    for i in range(3):  # the kernel resets entries (flags = 0) on KVM_RESET_DIRTY_RINGS
        array[i].flags = 0
    for i in range(3, 7):
        _publish(array, i, 1, i)
    assert ring.harvest() == [(1, 3), (1, 4), (1, 5), (1, 6)]
    assert ring.fetch_index == 7 and ring.harvested == 7
    ring.release()


def test_ring_size_is_a_power_of_two_within_limits():
    assert ring_bytes_for(16384, 1 << 20) == 1 << 19  # (16384 + 1024) * 16 bytes rounds up to 512 KiB
    assert ring_bytes_for(10, 1 << 20) == 1 << 15  # slack of 1024 entries: 1034 * 16 -> 32 KiB
    assert ring_bytes_for(1 << 22, 1 << 20) == 1 << 20  # capped at what KVM offers
    assert ring_bytes_for(0, 0) == 4096  # never below one page
