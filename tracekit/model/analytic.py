"""Eager-split accounting of a uniformly backed memslot, in closed form.

:func:`split_accounting` returns the :class:`WalkStats` of eager splitting ``[base, base + size)``
mapped with one mapping size, at dirty-log enable (``mode="enable"``) or at one whole-slot
``KVM_CLEAR_DIRTY_LOG`` (``mode="clear"``), on arm64 or x86, without building the tables: counter
for counter what :func:`simulate_split` (the explicit model) gives, which the tests check on every
case small enough to simulate. The method (arithmetic for page-backed slots, periodic walks for
block-backed ones) is in docs/model.md. ModelError for a misaligned slot, a size the granule lacks or
a slot beyond the address space.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from tracekit.errors import ModelError
from tracekit.model.accounting import WalkStats
from tracekit.model.dirty_memslot import WORD_PAGES, DirtyLog
from tracekit.model.geometry import LAST_LEVEL, Arm64Geometry, X86Geometry, format_size
from tracekit.model.split import EagerSplitter, check_chunk_size, range_addr_end, split_nr_page_tables
from tracekit.model.stage2 import Stage2PageTable
from tracekit.model.tdp import TdpPageTable

__all__ = ["SplitCase", "split_accounting", "simulate_split", "check_case", "skip_comparison"]


@dataclass(frozen=True)
class SplitCase:
    """One eager-split scenario. ``geom`` decides the architecture."""

    geom: "Arm64Geometry | X86Geometry"
    base: int
    size: int
    mapping_size: int
    mode: str = "enable"
    chunk_size: int = 0  # arm64 only
    cache_capacity: Optional[int] = None  # arm64 only; None = kvm_mmu_split_nr_page_tables(chunk)
    skip_levels: frozenset = frozenset()  # arm64 only
    alloc_drops_lock: bool = True  # x86 only

    @property
    def arm64(self) -> bool:
        return isinstance(self.geom, Arm64Geometry)

    @property
    def page(self) -> int:
        return self.geom.granule if self.arm64 else 4096

    @property
    def word(self) -> int:
        return WORD_PAGES * self.page


def check_case(case: SplitCase) -> int:
    """Validate ``case``; return the leaf level of its mapping. ModelError when impossible."""
    g = case.geom
    if case.mode not in ("enable", "clear"):
        raise ModelError(f"mode must be enable or clear, not {case.mode!r}")
    level = g.level_of_size(case.mapping_size)
    if case.size <= 0:
        raise ModelError("the memslot size must be positive")
    space = g.ipa_size if case.arm64 else 1 << g.va_bits
    if case.base + case.size > space:
        what = f"{g.ipa_bits}-bit IPA space" if case.arm64 else f"{g.va_bits}-bit address space"
        raise ModelError(
            f"memslot {format_size(case.base)}+{format_size(case.size)} is beyond the {what} ({format_size(space)})"
        )
    for name, value in (("base", case.base), ("size", case.size)):
        if value % case.mapping_size:
            raise ModelError(
                f"memslot {name} {format_size(value)} is not aligned to the {format_size(case.mapping_size)} "
                f"mapping (blocks need an aligned slot)"
            )
    if case.arm64:
        check_chunk_size(g, case.chunk_size)
        if case.cache_capacity is not None and case.cache_capacity < 0:
            raise ModelError("the split cache capacity cannot be negative")
    return level


# ---------------------------------------------------------------------------------------------
# The explicit reference


def simulate_split(case: SplitCase) -> WalkStats:
    """Build the tables entry by entry and run the explicit simulation (the reference)."""
    check_case(case)
    if case.arm64:
        pgt = Stage2PageTable(case.geom)
        pgt.populate(case.base, case.size, case.mapping_size)
        tables = EagerSplitter(
            pgt, case.chunk_size, cache_capacity=case.cache_capacity, skip_levels=case.skip_levels
        )
    else:
        tables = TdpPageTable(case.geom)
        tables.populate(case.base, case.size, case.mapping_size)
    log = DirtyLog(
        tables,
        case.base,
        case.size,
        manual_protect=case.mode == "clear",
        initially_set=case.mode == "clear",
        alloc_drops_lock=case.alloc_drops_lock,
        write_protect=False,  # permissions only: no effect on the split accounting
    )
    if case.mode == "enable":
        return log.enable().split
    log.enable()
    return log.clear().split


# ---------------------------------------------------------------------------------------------
# Arithmetic helpers


def _ngran(size: int, a: int, e: int) -> int:
    """Entries of ``size`` bytes overlapping [a, e) (a < e)."""
    return -(-e // size) - a // size


def _multiples(m: int, lo: int, hi: int) -> int:
    """Multiples of m strictly inside (lo, hi)."""
    return max(0, (hi - 1) // m - lo // m)


class _Boundaries:
    """Interior walk boundaries of a page-backed slot: chunk multiples and slot-relative words."""

    def __init__(self, start: int, end: int, chunk: int, word: int) -> None:
        self.start, self.end, self.chunk, self.word = start, end, chunk, word

    def _words(self, m: int) -> int:
        # |{S + kW in (S, E)} ∩ mZ|; W and m are powers of two.
        if not self.word:
            return 0
        if self.start % min(m, self.word):
            return 0
        if m <= self.word:
            return max(0, (self.end - self.start - 1) // self.word)
        return _multiples(m, self.start, self.end)

    def count(self, m: int = 1) -> int:
        """Boundaries that are multiples of m (m = 1: all of them)."""
        chunks = _multiples(max(self.chunk, m), self.start, self.end) if self.chunk else 0
        both = self._words(max(self.chunk, m)) if self.chunk else 0
        return chunks + self._words(m) - both


# ---------------------------------------------------------------------------------------------
# arm64


def _reach(case: SplitCase) -> int:
    """The deepest level the walker visits: one above the shallowest SKIP_LEVEL."""
    return min(case.skip_levels) - 1 if case.skip_levels else LAST_LEVEL


class _Arm64State:
    """Frontiers of split blocks (everything below is split) and the split memory cache."""

    def __init__(self, case: SplitCase, at: int, nobjs: int) -> None:
        g = case.geom
        self.g = g
        self.ptrs = g.entries_per_table
        self.skip3 = LAST_LEVEL in case.skip_levels
        self.reach = _reach(case)
        self.f1 = at
        self.f2 = at
        self.nobjs = nobjs
        self.cap = split_nr_page_tables(g, case.chunk_size) if case.cache_capacity is None else case.cache_capacity


def _arm64_l3(st: _Arm64State, s: WalkStats, a: int, e: int, fresh: bool) -> None:
    """Descents into level-2 tables covering [a, e): level-3 pages, all early returns."""
    if st.skip3:
        s.skipped_levels.add(LAST_LEVEL)
        return
    n = _ngran(st.g.granule, a, e)
    s.entries[4] += n
    s.leaf[4] += n
    s.early[4] += n
    if fresh:
        s.fresh[4] += n


def _arm64_l2_blocks(st: _Arm64State, s: WalkStats, a: int, e: int, fresh: bool) -> Optional[int]:
    """Level-2 entries of [a, e) under a table: split ones descend, unsplit ones are split while
    the cache lasts. Returns the address of the entry that failed with -ENOMEM, or None."""
    g2 = st.g.level_size(2)
    i0, i1 = a // g2, (e - 1) // g2
    f2_index = -(-st.f2 // g2)
    n_split = max(0, min(i1, f2_index - 1) - i0 + 1)
    if n_split:
        s.entries[3] += n_split
        if fresh:
            s.fresh[3] += n_split
        _arm64_l3(st, s, a, min(e, st.f2), fresh)
    first = max(i0, f2_index)
    k = i1 - first + 1
    if k <= 0:
        return None
    u0 = first * g2
    done = min(k, st.nobjs)
    if done:
        if u0 != st.f2 and u0 > st.f2:
            raise AssertionError("analytic model: unsplit blocks behind the walk (gap)")
        st.nobjs -= done
        s.entries[3] += done
        s.leaf[3] += done
        s.splits[3] += done
        s.tables += done
        s.build[4] += done * st.ptrs
        if fresh:
            s.fresh[3] += done
        _arm64_l3(st, s, max(a, u0), min(e, u0 + done * g2), True)
        st.f2 = u0 + done * g2
    if done < k:
        s.entries[3] += 1
        s.leaf[3] += 1
        s.enomem[3] += 1
        if fresh:
            s.fresh[3] += 1
        return max(a, u0 + done * g2)
    return None


def _arm64_walk(case: SplitCase, st: _Arm64State, s: WalkStats, a: int, e: int, top: int) -> bool:
    """One ``kvm_pgtable_stage2_split`` walk over [a, e); returns True if it stopped on -ENOMEM."""
    g = st.g
    s.walks += 1
    stop: Optional[int] = None
    if top > st.reach:  # the blocks sit below a skipped level: the walk never reaches them
        for level in range(g.start_level, st.reach + 1):
            s.entries[level + 1] += _ngran(g.level_size(level), a, e)
        s.skipped_levels.add(st.reach + 1)
        return False
    skip2 = st.reach < 2
    if top == 2:
        stop = _arm64_l2_blocks(st, s, a, e, False)
    else:  # 1G blocks: the walk lies inside one of them (chunk <= 1G, aligned)
        g1 = g.level_size(1)
        bs = a - a % g1
        s.entries[2] += 1
        if bs < st.f1:
            if skip2:
                s.skipped_levels.add(2)
            else:
                stop = _arm64_l2_blocks(st, s, a, e, False)
        else:
            s.leaf[2] += 1
            need = st.ptrs + 1
            if st.nobjs >= need:  # force_pte: the whole subtree down to pages
                st.nobjs -= need
                s.tables += need
                s.splits[2] += 1
                s.build[3] += st.ptrs
                s.build[4] += st.ptrs * st.ptrs
                st.f1 = st.f2 = bs + g1
                if skip2:
                    s.skipped_levels.add(2)
                else:
                    n2 = _ngran(g.level_size(2), a, e)
                    s.entries[3] += n2
                    s.fresh[3] += n2
                    _arm64_l3(st, s, a, e, True)
            elif st.nobjs >= 1:  # one table of level-2 blocks, split as the walk descends
                st.nobjs -= 1
                s.tables += 1
                s.splits[2] += 1
                s.build[3] += st.ptrs
                st.f1 = bs + g1
                st.f2 = max(st.f2, bs)
                if skip2:
                    s.skipped_levels.add(2)
                else:
                    stop = _arm64_l2_blocks(st, s, a, e, True)
            else:
                s.enomem[2] += 1
                stop = a
    visited_end = e if stop is None else stop + 1
    for level in range(g.start_level, top):
        s.entries[level + 1] += _ngran(g.level_size(level), a, visited_end)
    return stop is not None


def _arm64_run(case: SplitCase, st: _Arm64State, s: WalkStats, lo: int, hi: int, top: int) -> bool:
    """Every walk of [lo, hi) in order; returns True if an enable-mode split stopped for good."""
    word = case.word if case.mode == "clear" else 0
    addr = lo
    while addr < hi:
        call_end = min(hi, addr - addr % word + word) if word else hi
        while addr < call_end:
            if st.nobjs < st.cap:  # need_split_memcache_topup_or_resched
                s.topups += 1
                st.nobjs = st.cap
            nxt = range_addr_end(addr, call_end, case.chunk_size)
            if _arm64_walk(case, st, s, addr, nxt, top):
                s.stopped = True
                if not word:
                    return True
                addr = call_end
                break
            addr = nxt
    return False


def _arm64_pages(case: SplitCase) -> WalkStats:
    g = case.geom
    s = WalkStats()
    start, end = case.base, case.base + case.size
    bounds = _Boundaries(start, end, case.chunk_size, case.word if case.mode == "clear" else 0)
    s.walks = bounds.count() + 1
    cap = split_nr_page_tables(g, case.chunk_size) if case.cache_capacity is None else case.cache_capacity
    s.topups = 1 if cap > 0 else 0
    reach = _reach(case)
    for level in range(g.start_level, min(reach, LAST_LEVEL - 1) + 1):
        m = g.level_size(level)
        s.entries[level + 1] = _ngran(m, start, end) + bounds.count() - bounds.count(m)
    if reach < LAST_LEVEL:
        s.skipped_levels.add(reach + 1)
    else:
        pages = case.size // g.granule
        s.entries[4] = s.leaf[4] = s.early[4] = pages
    return s


def _relation(frontier: int, at: int, period: int) -> str:
    """Where a split frontier lies relative to the period starting at ``at``."""
    if frontier < at:
        return "behind"
    if frontier == at:
        return "at"
    return "beyond" if frontier >= at + period else "inside"


def _arm64_span(case: SplitCase, st: _Arm64State, total: WalkStats, lo: int, hi: int, top: int,
                periods: list[int]) -> bool:
    """Every walk of [lo, hi), with whole periods of ``periods[0]`` computed once per distinct
    starting state and multiplied (finer periods inside). True if the split stopped for good."""
    if not periods:
        return _arm64_run(case, st, total, lo, hi, top)
    period, finer = periods[0], periods[1:]
    first = -(-lo // period) * period
    last = hi - hi % period
    if last - first < 3 * period:
        # Few periods: each on its own, so a finer period never straddles one of these.
        cuts = sorted({lo, hi, *range(max(first, lo), min(last, hi) + 1, period)})
        return any(_arm64_span(case, st, total, a, b, top, finer) for a, b in zip(cuts, cuts[1:]) if a < b)
    if _arm64_span(case, st, total, lo, first, top, finer):
        return True
    at = first
    while at < last:
        key = (st.nobjs, _relation(st.f1, at, period), _relation(st.f2, at, period))
        rep = WalkStats()
        if _arm64_span(case, st, rep, at, at + period, top, finer):
            total.merge(rep)
            return True
        total.merge(rep)
        at += period
        if at < last and key == (st.nobjs, _relation(st.f1, at, period), _relation(st.f2, at, period)):
            # The next period starts exactly like this one did (same cache, same split state of
            # its blocks), so it and every later one repeat these walks.
            total.merge(rep, (last - at) // period)
            st.f1 = last if st.f1 == at else st.f1
            st.f2 = last if st.f2 == at else st.f2
            at = last
    return _arm64_span(case, st, total, last, hi, top, finer)


def _arm64_blocks(case: SplitCase, top: int) -> WalkStats:
    g = case.geom
    unit = max(case.chunk_size, case.word if case.mode == "clear" else 0)
    # Periods: the top block (all walks of one block), then, inside a 1G block, one 2M child.
    periods = sorted({max(unit, g.level_size(level)) for level in range(top, LAST_LEVEL)}, reverse=True)
    total = WalkStats()
    st = _Arm64State(case, case.base, 0)
    _arm64_span(case, st, total, case.base, case.base + case.size, top, periods)
    return total


# ---------------------------------------------------------------------------------------------
# x86


class _X86State:
    def __init__(self, at: int) -> None:
        self.f3 = at
        self.f2 = at


def _x86_split_level(case: SplitCase, s: WalkStats, a: int, e: int, level: int, frontier: int) -> Optional[int]:
    """Split the huge entries at ``level`` in [a, e) from ``frontier`` on (the earlier ones are
    split already); return the address of the first one split, or None if none was."""
    size = case.geom.level_size(level)
    first = max(a // size, -(-frontier // size))
    count = (e - 1) // size - first + 1
    if count <= 0:
        return None
    s.splits[level + 1] += count
    s.tables += count
    if case.alloc_drops_lock:
        # Each split first drops the lock to allocate, then restarts the walk from the root.
        s.restarts += count
        for walked in range(case.geom.root_level, level - 1, -1):
            s.entries[walked + 1] += count
    return first * size


def _x86_walk(case: SplitCase, st: _X86State, s: WalkStats, a: int, e: int, leaf_level: int) -> None:
    """One ``tdp_mmu_split_huge_pages_root`` walk over [a, e) (min_level 2)."""
    g = case.geom
    s.walks += 1
    for level in range(g.root_level, 3, -1):
        s.entries[level + 1] += _ngran(g.level_size(level), a, e)
    g3, g2 = g.level_size(3), g.level_size(2)
    s.entries[4] += _ngran(g3, a, e)
    fresh_children = 0
    if leaf_level == 3:
        first = _x86_split_level(case, s, a, e, 3, st.f3)
        if first is not None:
            fresh_children = _ngran(g2, max(a, first), e)
            st.f3 = ((e - 1) // g3 + 1) * g3
    s.entries[3] += _ngran(g2, a, e)
    s.skipped_levels.add(1)
    if leaf_level >= 2 and _x86_split_level(case, s, a, e, 2, st.f2) is not None:
        st.f2 = ((e - 1) // g2 + 1) * g2
    s.fresh[3] += fresh_children * (2 if case.alloc_drops_lock else 1)


def _x86_pages(case: SplitCase) -> WalkStats:
    g = case.geom
    s = WalkStats()
    start, end = case.base, case.base + case.size
    if case.mode == "enable":
        bounds = _Boundaries(start, end, 0, 0)
    else:
        bounds = _Boundaries(start, end, 0, case.word)
    s.walks = bounds.count() + 1
    for level in range(g.root_level, 1, -1):
        m = g.level_size(level)
        s.entries[level + 1] = _ngran(m, start, end) + bounds.count() - bounds.count(m)
    s.skipped_levels.add(1)
    return s


def _x86_blocks(case: SplitCase, leaf_level: int) -> WalkStats:
    start, end = case.base, case.base + case.size
    total = WalkStats()
    st = _X86State(start)
    if case.mode == "enable":
        _x86_walk(case, st, total, start, end, leaf_level)
        return total
    word = case.word
    period = max(word, case.geom.level_size(leaf_level))
    first = -(-start // period) * period
    last = end - end % period

    def run(lo: int, hi: int, stats: WalkStats) -> None:
        for a in range(lo, hi, word):
            _x86_walk(case, st, stats, a, min(a + word, hi), leaf_level)

    if last - first < 3 * period:
        run(start, end, total)
        return total
    run(start, first, total)
    rep = WalkStats()
    st.f3 = st.f2 = first
    run(first, first + period, rep)
    total.merge(rep, (last - first) // period)
    st.f3 = st.f2 = last
    run(last, end, total)
    return total


# ---------------------------------------------------------------------------------------------


def split_accounting(case: SplitCase) -> WalkStats:
    """The split accounting of ``case``, computed without building the tables."""
    level = check_case(case)
    if case.arm64:
        if case.chunk_size == 0:
            return WalkStats()  # eager splitting disabled (KVM_ARM_EAGER_SPLIT_CHUNK_SIZE_DEFAULT)
        if level == LAST_LEVEL:
            return _arm64_pages(case)
        return _arm64_blocks(case, level)
    if level == 1:
        return _x86_pages(case)
    return _x86_blocks(case, level)


def skip_comparison(case: SplitCase, skip_levels: frozenset = frozenset({LAST_LEVEL})) -> dict:
    """Visits of ``case`` without and with SKIP_LEVEL flags (arm64; x86 has none to add).

    Returns ``{"without_skip": WalkStats, "with_skip": WalkStats, "skipped_levels": [...],
    "reduction_percent": {"entries": float | None, "callbacks": float | None}}``.
    """
    base = replace(case, skip_levels=frozenset())
    skipped = replace(case, skip_levels=frozenset(skip_levels)) if case.arm64 else base
    without, with_skip = split_accounting(base), split_accounting(skipped)

    def percent(name: str) -> Optional[float]:
        before, after = without.total(name), with_skip.total(name)
        return None if before == 0 else 100.0 * (after - before) / before

    return {
        "without_skip": without,
        "with_skip": with_skip,
        "skipped_levels": sorted(with_skip.skipped_levels),
        "reduction_percent": {"entries": percent("entries"), "callbacks": percent("callbacks")},
    }
