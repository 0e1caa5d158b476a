"""Dirty logging on one memslot of the model: enable and ``KVM_CLEAR_DIRTY_LOG``.

:class:`DirtyLog` runs the arch code of both: :meth:`DirtyLog.enable` write-protects and eagerly
splits the slot unless manual-protect and initially-set are both on (then nothing is walked and the
bitmap starts all ones); :meth:`DirtyLog.clear` write-protects (arm64) and splits, per 64-page word,
the span from its first to its last dirty page, as ``kvm_clear_dirty_log_protect`` does. Each returns
a :class:`DirtyLogResult` (split and write-protect accounting, ``enable_log_dirty_pt_masked`` calls).
``write_protect=False`` skips the write-protect walks, which never change the split accounting.
Bad CLEAR arguments raise ModelError (the ioctl's -EINVAL).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from tracekit.errors import ModelError
from tracekit.model.accounting import WalkStats
from tracekit.model.split import EagerSplitter
from tracekit.model.stage2_ops import wrprotect_range
from tracekit.model.tdp import TdpPageTable

__all__ = ["WORD_PAGES", "DirtyLogResult", "DirtyLog"]

#: Pages per dirty-bitmap word (BITS_PER_LONG on 64-bit hosts).
WORD_PAGES = 64


@dataclass
class DirtyLogResult:
    """What one enable or CLEAR did to the page tables."""

    split: WalkStats = field(default_factory=WalkStats)
    write_protect: WalkStats = field(default_factory=WalkStats)
    masked_calls: int = 0


class DirtyLog:
    """Dirty logging of the memslot ``[base, base + size)`` on an arm64 or x86 model."""

    def __init__(
        self,
        tables: Union[EagerSplitter, TdpPageTable],
        base: int,
        size: int,
        *,
        manual_protect: bool = False,
        initially_set: bool = False,
        eager_page_split: bool = True,
        alloc_drops_lock: bool = True,
        write_protect: bool = True,
    ) -> None:
        self.tables = tables
        self.write_protect = write_protect
        self.arm64 = isinstance(tables, EagerSplitter)
        page = tables.pgt.geom.granule if self.arm64 else 4096
        if base % page or size % page or size <= 0:
            raise ModelError(f"memslot {base:#x}+{size:#x} is not page aligned")
        self.page = page
        self.base = base
        self.npages = size // page
        self.manual_and_init_set = manual_protect and initially_set
        self.manual_protect = manual_protect
        self.eager_page_split = eager_page_split
        self.alloc_drops_lock = alloc_drops_lock
        self.dirty = [0] * -(-self.npages // WORD_PAGES)  # the slot's dirty bitmap, 64 pages a word
        self.enabled = False

    # -- arch hooks ----------------------------------------------------------------------------

    def _split(self, start: int, end: int, stats: WalkStats) -> None:
        if self.arm64:
            self.tables.split_huge_pages(start, end, stats)
        elif self.eager_page_split:
            self.tables.split_huge_pages(start, end, stats, alloc_drops_lock=self.alloc_drops_lock)

    def _write_protect(self, start: int, end: int, stats: WalkStats) -> None:
        if self.arm64 and self.write_protect:
            wrprotect_range(self.tables.pgt, start, end, stats)

    # -- ioctls --------------------------------------------------------------------------------

    def enable(self) -> DirtyLogResult:
        """Set ``KVM_MEM_LOG_DIRTY_PAGES`` on the slot (see the module docstring)."""
        result = DirtyLogResult()
        self.enabled = True
        end = self.base + self.npages * self.page
        if self.manual_and_init_set:
            full = (1 << WORD_PAGES) - 1
            self.dirty = [full] * len(self.dirty)
            tail = self.npages % WORD_PAGES
            if tail:
                self.dirty[-1] = (1 << tail) - 1
            return result
        if self.arm64:
            self._write_protect(self.base, end, result.write_protect)
            self._split(self.base, end, result.split)
        else:
            self._split(self.base, end, result.split)
            self._write_protect(self.base, end, result.write_protect)
        return result

    def mark_dirty(self, page_index: int) -> None:
        """Record a guest write to page ``page_index`` of the slot."""
        if not 0 <= page_index < self.npages:
            raise ModelError(f"page {page_index} is outside the {self.npages}-page memslot")
        self.dirty[page_index // WORD_PAGES] |= 1 << (page_index % WORD_PAGES)

    def clear(self, first_page: int = 0, num_pages: Optional[int] = None, bitmap: Optional[int] = None) -> DirtyLogResult:
        """``KVM_CLEAR_DIRTY_LOG`` of ``num_pages`` from ``first_page``; ``bitmap`` (bit i = page
        first_page + i) defaults to all ones."""
        if not self.manual_protect:
            raise ModelError("KVM_CLEAR_DIRTY_LOG needs KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (manual protect)")
        if num_pages is None:
            num_pages = self.npages - first_page
        if first_page % WORD_PAGES or num_pages <= 0:
            raise ModelError("CLEAR_DIRTY_LOG first_page must be a multiple of 64 and num_pages positive")
        if first_page + num_pages > self.npages:
            raise ModelError("CLEAR_DIRTY_LOG range is beyond the end of the memslot")
        if num_pages % WORD_PAGES and first_page + num_pages != self.npages:
            raise ModelError("CLEAR_DIRTY_LOG num_pages must be a multiple of 64 unless it reaches the slot end")
        nwords = -(-num_pages // WORD_PAGES)
        full_word = (1 << WORD_PAGES) - 1
        raw = None if bitmap is None else (bitmap & ((1 << num_pages) - 1)).to_bytes(nwords * 8, "little")
        result = DirtyLogResult()
        for word in range(nwords):
            offset = first_page + word * WORD_PAGES
            user = full_word if raw is None else int.from_bytes(raw[word * 8 : word * 8 + 8], "little")
            if not user:
                continue
            mask = user & self.dirty[offset // WORD_PAGES]
            self.dirty[offset // WORD_PAGES] &= ~mask
            if mask:
                result.masked_calls += 1
                self._enable_log_dirty_pt_masked(offset, mask, result)
        return result

    def _enable_log_dirty_pt_masked(self, offset: int, mask: int, result: DirtyLogResult) -> None:
        first = offset + ((mask & -mask).bit_length() - 1)  # __ffs(mask)
        last = offset + (mask.bit_length() - 1)  # __fls(mask)
        start = self.base + first * self.page
        end = self.base + (last + 1) * self.page
        if self.arm64:
            self._write_protect(start, end, result.write_protect)
            if self.manual_and_init_set:
                self._split(start, end, result.split)
        else:
            if self.manual_and_init_set:
                self._split(start, end, result.split)  # kvm_mmu_try_split_huge_pages(start, end + 1)
            self._write_protect(start, end, result.write_protect)
