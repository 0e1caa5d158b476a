"""Harvesting one vCPU's KVM dirty ring.

:class:`DirtyRing` wraps the ``struct kvm_dirty_gfn`` array KVM shares at ``KVM_DIRTY_LOG_PAGE_OFFSET``
of a vCPU fd. :meth:`DirtyRing.harvest` collects the published entries from the fetch index on, marks
them for the next ``KVM_RESET_DIRTY_RINGS`` and returns ``(slot, page offset)`` pairs; only the thread
that owns the ring may harvest it. :func:`ring_bytes_for` chooses a ring size. Standard library only.
"""

from __future__ import annotations

import ctypes

from tracekit.workload import uapi

__all__ = ["DirtyRing", "ring_bytes_for", "DIRTY_GFN_SIZE"]

DIRTY_GFN_SIZE = ctypes.sizeof(uapi.KvmDirtyGfn)


def ring_bytes_for(pages: int, max_bytes: int, page_size: int = 4096) -> int:
    """A power-of-two ring size (bytes) holding ``pages`` entries plus slack, within [page_size, max_bytes]."""
    wanted = (pages + 1024) * DIRTY_GFN_SIZE
    size = page_size
    while size < wanted and size * 2 <= max_bytes:
        size *= 2
    return size


class DirtyRing:
    """A vCPU's mapped dirty ring of ``size_bytes`` at ``address``."""

    def __init__(self, address: int, size_bytes: int) -> None:
        self.entries = size_bytes // DIRTY_GFN_SIZE
        raw = (ctypes.c_char * size_bytes).from_address(address)
        view = memoryview(raw).cast("B")
        self._u32 = view.cast("I")  # entry k: flags at 4k, slot at 4k+1
        self._u64 = view.cast("Q")  # entry k: offset at 2k+1
        self.fetch_index = 0
        self.harvested = 0

    def harvest(self) -> list[tuple[int, int]]:
        """Entries published since the last harvest, each marked RESET (see the module contract)."""
        found: list[tuple[int, int]] = []
        u32, u64, mask = self._u32, self._u64, self.entries - 1
        index = self.fetch_index
        while True:
            k = index & mask
            if not u32[4 * k] & uapi.KVM_DIRTY_GFN_F_DIRTY:
                break
            found.append((u32[4 * k + 1], u64[2 * k + 1]))
            u32[4 * k] = uapi.KVM_DIRTY_GFN_F_RESET
            index += 1
        self.fetch_index = index
        self.harvested += len(found)
        return found

    def release(self) -> None:
        """Drop the views so the mapping can be unmapped."""
        self._u32.release()
        self._u64.release()
