"""The streaming walk-rebuild core: every guest walk of a capture rebuilt and cross-checked in one pass.

:func:`stream_walks` reads ``walk`` and ``walk_element`` in batches and rebuilds each walk as its
elements go by, its shape to a caller's sink and its comparison with the model into counts, with per-walk
arrays in :mod:`.spill`. Rules: docs/analysis.md; reference: tests/analysis/walkref.py.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from tracekit.analysis import spill
from tracekit.analysis.crosscheck import (MISMATCH_COLUMNS, CrossCheck, LostCpus, ModelCache, check_summary,
                                          compare_elements, compared_passes, cut_short, mismatch_row, modelled,
                                          per_level_table)
from tracekit.analysis.walks import ELEMENT_COLUMNS, WALK_COLUMNS, depth_of, leaf_levels, level_paths
from tracekit.errors import AnalysisError

__all__ = ["stream_walks", "StreamedWalks", "WalkShapes", "RowMap", "IdScan", "prefetch", "feed_passes",
           "HOLD_ROWS", "MAX_PASSES", "WALK_BATCH_ROWS", "ELEMENT_BATCH_ROWS", "STREAM_COLUMNS"]

#: Rows per batch of the ``walk`` family (smaller batches: less decoded data and fewer temporaries at once).
WALK_BATCH_ROWS = 1 << 18
#: Rows per batch of ``walk_element`` (as fast as 1 Mi-row batches here, 100 MB less at the peak).
ELEMENT_BATCH_ROWS = 1 << 18
#: The walks seen in the stream's last this many rows are held for the next batch (they may go on there).
HOLD_ROWS = 4096
#: Passes over the elements at most: each sets aside the walks the one before found too far apart.
MAX_PASSES = 3
#: The ``walk_element`` columns the stream reads: the element columns and each row's CPU.
STREAM_COLUMNS = (*ELEMENT_COLUMNS, "cpu")
_LOW_BITS = np.uint64((1 << 48) - 1)
_ID_CHUNK = 1 << 20
#: Walk ids per block of the id map's table (:class:`IdScan`).
_BLOCK_BITS = 12
_BLOCK = 1 << _BLOCK_BITS
_BLOCK_MASK = np.uint64(_BLOCK - 1)


class IdScan:
    """The walk ids of a walk table of ``n`` rows, given a chunk at a time in row order (:meth:`add`) and
    placed in the id map's table as they come, so they need not be kept: their number, whether they are
    consecutive and in order (then no table), and the table of ids ``hi << 48 | lo`` whose ``lo`` are
    nearly consecutive for each ``hi`` (blocks of :data:`_BLOCK` ids; ``table`` None once the ids turn
    out sparse or an id repeats, and the map reads them once more)."""

    def __init__(self, n: int) -> None:
        self.n = 0
        self.first: np.uint64 | None = None
        self.last: np.uint64 | None = None
        self.increasing = True
        self._consecutive = True  # every id so far first + its row: the table is made only once one is not
        # Room for the ids, their CPUs' first and last blocks and a few gaps (lost walk events) before the
        # table must grow (a copy); only the blocks written take pages (row + 1 per slot, 0 in gaps).
        self.table: np.ndarray | None = spill.full((n // _BLOCK + n // (16 * _BLOCK) + 64) << _BLOCK_BITS, 0,
                                                   np.int32 if n < 1 << 31 else np.int64)
        self.blocks = 0  # blocks of the table in use
        self._max_blocks = (2 * n + 4096) // _BLOCK  # and two more per hi (its first and last block)
        self.hi_index = np.zeros(1 << 16, np.int64)  # hi -> its row of the directory (0: no ids of it)
        self.his = [0]  # the hi of each directory row (row 0: none)
        self.dir_base = np.zeros(1, np.int64)  # per directory row its first block number (lo >> _BLOCK_BITS)
        self.width = 1
        self.directory = np.full(1, -1, np.int64)  # (directory row, block number - base) -> block of the table
        self.block_row = np.zeros(0, np.int64)  # per block of the table its directory row and block number
        self.block_number = np.zeros(0, np.int64)

    def add(self, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        if self.first is None:
            self.first = ids[0]
        if self.increasing:
            self.increasing = bool(np.all(ids[1:] > ids[:-1])) and (self.last is None or bool(ids[0] > self.last))
        start = self.n
        self.last = ids[-1]
        self.n += len(ids)
        if self._consecutive:
            self._consecutive = (self.increasing and int(ids[0]) - int(self.first) == start
                                 and int(ids[-1]) - int(self.first) == self.n - 1)
            if self._consecutive:
                return
            for first in range(0, start, _ID_CHUNK):  # the ids before: first + their rows
                count = min(_ID_CHUNK, start - first)
                self._place(self.first + np.arange(first, first + count, dtype=np.uint64), first)
        self._place(ids, start)

    @property
    def consecutive(self) -> bool:
        return self.n > 0 and self._consecutive

    def _place(self, ids: np.ndarray, start: int) -> None:
        """Rows ``start`` ... of ``ids`` into the table (their blocks made as needed)."""
        if self.table is None:
            return
        ids = np.asarray(ids, np.uint64)
        hi = (ids >> np.uint64(48)).view(np.int64)
        block = ((ids & _LOW_BITS) >> np.uint64(_BLOCK_BITS)).view(np.int64)
        row = self.hi_index[hi]
        if not row.all():  # a new hi
            for value in np.unique(hi[row == 0]).tolist():
                self.hi_index[value] = len(self.his)
                self.his.append(value)
            row = self.hi_index[hi]
        rel = block - self.dir_base[row] if len(self.dir_base) == len(self.his) else None
        if rel is None or not ((rel >= 0) & (rel < self.width)).all():
            if not self._relayout(row, block):
                return self._drop()
            rel = block - self.dir_base[row]
        entry = row * self.width + rel
        found = self.directory[entry]
        missing = found < 0
        if missing.any():
            wanted = np.zeros(len(self.directory), bool)
            wanted[entry[missing]] = True
            if not self._new_blocks(np.flatnonzero(wanted)):
                return self._drop()
            found = self.directory[entry]
        slot = (found << _BLOCK_BITS) | (ids & _BLOCK_MASK).view(np.int64)
        self.table[slot] = np.arange(start + 1, start + 1 + len(ids), dtype=self.table.dtype)
        spill.trim()

    def repeats(self) -> bool:
        """Whether some id came twice (fewer slots of the table filled than ids placed)."""
        filled = 0
        for first in range(0, self.blocks << _BLOCK_BITS, _ID_CHUNK):
            filled += int(np.count_nonzero(self.table[first:min(first + _ID_CHUNK, self.blocks << _BLOCK_BITS)]))
            spill.trim()
        return filled != self.n

    def _relayout(self, row: np.ndarray, block: np.ndarray) -> bool:
        """Widen the directory to every directory row's blocks so far and in ``block``; False when it would
        outgrow the ids (sparse ids)."""
        rows = len(self.his)
        low = np.full(rows, np.iinfo(np.int64).max, np.int64)
        high = np.full(rows, -1, np.int64)
        np.minimum.at(low, row, block)
        np.maximum.at(high, row, block)
        old = len(self.dir_base)
        used = np.zeros(rows, bool)
        used[np.unique(self.block_row)] = True
        base_old = np.r_[self.dir_base, np.zeros(rows - old, np.int64)]
        low = np.where(used, np.minimum(low, base_old), low)
        top_old = np.r_[self.dir_base + self.width - 1, np.full(rows - old, -1, np.int64)]
        high = np.where(used, np.maximum(high, top_old), high)
        low[0], high[0] = 0, 0
        span = np.where(high >= low, high - low + 1, 1)
        width = int(span.max())
        width += width // 4 + 16  # room to grow
        if rows * width > 4 * (self._max_blocks + 2 * rows) + 65536:
            return False
        base = np.where(high >= low, low, 0)
        directory = np.full(rows * width, -1, np.int64)
        if len(self.block_row):
            directory[self.block_row * width + self.block_number - base[self.block_row]] = np.arange(len(self.block_row))
        self.dir_base, self.width, self.directory = base, width, directory
        return True

    def _new_blocks(self, entries: np.ndarray) -> bool:
        """Blocks of the table for directory ``entries``; False past the table's most blocks."""
        count = len(entries)
        most = self._max_blocks + 2 * len(self.his)
        if self.blocks + count > most:
            return False
        if (self.blocks + count) << _BLOCK_BITS > len(self.table):
            size = min(max(self.blocks + count, 2 * (len(self.table) >> _BLOCK_BITS)), most)
            self.table = spill.widened(self.table, self.table.dtype, size << _BLOCK_BITS, self.blocks << _BLOCK_BITS)
        row, number = entries // self.width, entries % self.width + self.dir_base[entries // self.width]
        self.directory[entries] = np.arange(self.blocks, self.blocks + count)
        self.block_row = np.concatenate((self.block_row, row))
        self.block_number = np.concatenate((self.block_number, number))
        self.blocks += count
        return True

    def _drop(self) -> None:
        self.table = None  # sparse or repeated ids: the map sorts them instead

    def release(self) -> None:
        self.table = None


class RowMap:
    """Walk id -> row of the walk table; an id that repeats maps to its first row, and :meth:`repeats`
    names the later rows of each (they get that walk's elements too).

    Consecutive ids map by their offset; ids ``hi << 48 | lo`` whose ``lo`` are nearly consecutive for
    each ``hi`` (the recorder's per-CPU sequences, with gaps where walk events were lost) through the
    table :class:`IdScan` made of them, a directory of blocks of 4 bytes per id; other ids by binary
    search (16 bytes per id). Made from an id array, or (:meth:`from_chunks`) from an :class:`IdScan`
    that saw every id and a source of the ids in chunks, read only for the binary search."""

    def __init__(self, ids: np.ndarray):
        ids = np.asarray(ids, dtype=np.uint64)
        scan = IdScan(len(ids))
        for start in range(0, len(ids), _ID_CHUNK):
            scan.add(ids[start:start + _ID_CHUNK])
        self._build(scan, lambda: (ids[start:start + _ID_CHUNK] for start in range(0, len(ids), _ID_CHUNK)), ids)

    @classmethod
    def from_chunks(cls, scan: IdScan, chunks: Callable[[], Iterable[np.ndarray]]) -> RowMap:
        """The map of the ids ``scan`` saw; ``chunks()`` yields them again in row order when it must sort them."""
        row_map = cls.__new__(cls)
        row_map._build(scan, chunks, None)
        return row_map

    def _build(self, scan: IdScan, chunks: Callable[[], Iterable[np.ndarray]], ids: np.ndarray | None) -> None:
        self.n = scan.n
        self.repeated = self.first_rows = np.zeros(0, np.int64)  # later rows of repeated ids, by their first row
        self._lookup = self._sorted = self._order = None
        self._first = None
        if self.n == 0:
            return
        if scan.consecutive:
            self._first = scan.first  # consecutive ids in order: the row is the id's offset
            scan.release()
            return
        if scan.table is not None and not scan.repeats():
            self._lookup, self._hi_index, self._base, self._width = (scan.table, scan.hi_index, scan.dir_base,
                                                                     scan.width)
            self._directory, self._his = scan.directory, np.array(scan.his, np.uint64)
            self._block_row, self._block_number = scan.block_row, scan.block_number
            return
        if ids is None:
            ids = np.concatenate([np.asarray(part, np.uint64) for part in chunks()])
        order = np.argsort(ids, kind="stable")
        ids_sorted = ids[order]
        again = np.flatnonzero(ids_sorted[1:] == ids_sorted[:-1]) + 1
        if len(again):  # each repeat's first row: the row of the first of its run of equal ids
            run_first = np.maximum.accumulate(np.where(np.r_[True, ids_sorted[1:] != ids_sorted[:-1]],
                                                       np.arange(len(ids_sorted)), 0))
            first, later = order[run_first[again]], order[again]
            by_first = np.argsort(first, kind="stable")
            self.first_rows, self.repeated = first[by_first].astype(np.int64), later[by_first].astype(np.int64)
        self._sorted, self._order = ids_sorted, order

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The row of each id (int64), -1 for ids the walk table does not have."""
        ids = np.asarray(ids, dtype=np.uint64)
        if self.n == 0:
            return np.full(len(ids), -1, np.int64)
        if self._first is not None:
            offset = ids - self._first  # ids below the first wrap around to large offsets
            return np.where(offset < np.uint64(self.n), offset.view(np.int64), -1)
        if self._lookup is not None:
            row = self._hi_index[(ids >> np.uint64(48)).view(np.int64)]
            rel = ((ids & _LOW_BITS) >> np.uint64(_BLOCK_BITS)).view(np.int64) - self._base[row]
            known = (rel >= 0) & (rel < self._width)
            every = bool(known.all())  # the usual case: no unknown id, no masking
            block = self._directory[row * self._width + (rel if every else np.where(known, rel, 0))]
            known &= block >= 0
            every = every and bool(known.all())
            slot = (block << _BLOCK_BITS) | (ids & _BLOCK_MASK).view(np.int64)
            found = self._lookup[slot if every else np.where(known, slot, 0)].astype(np.int64)
            if not every:
                found *= known
            found -= 1
            return found
        pos = np.minimum(np.searchsorted(self._sorted, ids), self.n - 1)
        return np.where(self._sorted[pos] == ids, self._order[pos], -1)

    def repeats(self, wi: np.ndarray, starts: np.ndarray, counts: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Walks ``wi`` with their element runs ``starts`` / ``counts``, and the later rows of their
        repeated ids with the same runs (the in-memory rebuild gives every row of an id its elements)."""
        if len(self.repeated) == 0 or len(wi) == 0:
            return wi, starts, counts
        lo = np.searchsorted(self.first_rows, wi, "left")
        k = np.searchsorted(self.first_rows, wi, "right") - lo
        has = np.flatnonzero(k)
        if len(has) == 0:
            return wi, starts, counts
        more = self.repeated[_expand(lo[has], k[has])]
        return (np.concatenate((wi, more)), np.concatenate((starts, np.repeat(starts[has], k[has]))),
                np.concatenate((counts, np.repeat(counts[has], k[has]))))

    def ids(self, rows: np.ndarray) -> np.ndarray:
        """The walk id of each of a few ``rows`` (the inverse of :meth:`rows`; one pass over the table
        per call, meant for the handful of walks a report names)."""
        rows = np.asarray(rows, np.int64)
        if len(rows) == 0:
            return np.zeros(0, np.uint64)
        if self._first is not None:
            return self._first + rows.astype(np.uint64)
        table = self._lookup if self._lookup is not None else self._order
        wanted = rows + 1 if self._lookup is not None else rows  # the table holds row + 1
        found = {}
        for first in range(0, len(table), _ID_CHUNK):  # a block at a time: the table may be spilled
            block = table[first:first + _ID_CHUNK]
            where = np.flatnonzero(np.isin(block, wanted))
            found.update(zip(block[where].tolist(), (where + first).tolist()))
            spill.trim()
        slots = np.array([found[r] for r in wanted.tolist()], np.int64)
        if self._lookup is None:
            return self._sorted[slots]
        block = slots >> _BLOCK_BITS
        lo = (self._block_number[block] << _BLOCK_BITS) | (slots & (_BLOCK - 1))
        return (self._his[self._block_row[block]] << np.uint64(48)) | lo.astype(np.uint64)


class prefetch:  # noqa: N801 - used like a generator function
    """Iterate ``items`` in a thread started at once, up to ``depth`` items ahead (Parquet decoding
    releases the GIL, so it overlaps the caller's numpy work); the thread's exceptions are raised in
    the caller. :meth:`close` (or leaving a ``with`` block) stops the thread."""

    _DONE = object()

    def __init__(self, items: Iterable[Any], depth: int = 1):
        self._slots: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, args=(items,), name="tracekit-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, items: Iterable[Any]) -> None:
        try:
            for item in items:
                if not self._put((item, None)):
                    return
            self._put((self._DONE, None))
        except BaseException as error:  # handed to the consumer
            self._put((self._DONE, error))

    def __iter__(self) -> prefetch:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        item, error = self._slots.get()
        if item is self._DONE:
            self.close()
            if error is not None:
                raise error
            raise StopIteration
        return item

    def close(self) -> None:
        self._finished = True
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> prefetch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class WalkShapes:
    """Each walk's rebuilt shape, one full array per column: ``depth`` (int16), ``root`` and ``leaf``
    (int8), ``path`` (int64 level path), as the walk frame has them."""

    def __init__(self, n: int):
        self.depth = np.zeros(n, np.int16)
        self.root = np.full(n, -1, np.int8)
        self.leaf = np.full(n, -1, np.int8)
        self.path = np.zeros(n, np.int64)

    def rebuilt(self, wi: np.ndarray) -> np.ndarray:
        """Which walks ``wi`` were already rebuilt."""
        return self.depth[wi] > 0

    def put(self, wi: np.ndarray, counts: np.ndarray, root: np.ndarray, leaf: np.ndarray, path: np.ndarray) -> None:
        self.depth[wi], self.root[wi], self.leaf[wi], self.path[wi] = depth_of(counts), root, leaf, path


class _State:
    """Per-walk outputs, filled batch by batch: the walks' shapes go to ``shapes`` (a :class:`WalkShapes`,
    or the narrow codes of :mod:`.walkgroups`), the cross-check's counts stay here. Mismatch rows carry
    the walk's row until :meth:`mismatch_frame` puts in the walk ids and addresses."""

    def __init__(self, n: int, shapes: Any, row_map: RowMap, model: ModelCache | None = None,
                 model_rows: np.ndarray | None = None, limit: int = 20, selected: np.ndarray | None = None,
                 lost: LostCpus | None = None):
        self.n, self.shapes, self.row_map, self.model, self.limit, self.selected = (n, shapes, row_map, model,
                                                                                    limit, selected)
        self.lost = lost  # CPUs that lost walk elements: their short walks may be cut short, not mismatches
        self.walk_model_rows = model_rows  # per walk its row in the model cache
        self.compared = 0  # walks compared with the model
        self.retried = 0  # compared walks read in several passes from the root (the last one compared)
        self.mismatched = 0
        self.cut_short = 0  # compared walks cut short by lost events (cut_short), not counted as mismatched
        self.outside = 0  # walks whose address the model does not cover
        self.orphans = 0
        self.late: list[np.ndarray] = []  # walks rebuilt before more of their elements came (too far apart)
        self.observed_levels = np.zeros(8, np.int64)
        self.model_rows = np.zeros(0, np.int64)  # compared walks per model row
        self.mismatches: list[tuple[int, tuple]] = []  # (walk row, row of MISMATCH_COLUMNS), smallest rows

    def mismatch_frame(self, walk_ids: Callable[[np.ndarray], np.ndarray],
                       addrs: Callable[[np.ndarray], np.ndarray]) -> pd.DataFrame:
        """The kept mismatch rows, their walk ids from ``walk_ids(rows)`` and addresses from ``addrs(rows)``."""
        rows = np.array([w for w, _ in self.mismatches], np.int64)
        ids = walk_ids(rows).tolist() if len(rows) else []
        where = addrs(rows).tolist() if len(rows) else []
        return pd.DataFrame([(walk_id, addr, *row[2:]) for walk_id, addr, (_, row) in zip(ids, where, self.mismatches)],
                            columns=MISMATCH_COLUMNS)

    def process(self, wi: np.ndarray, starts: np.ndarray, counts: np.ndarray, level: np.ndarray,
                pte: np.ndarray, cpu: np.ndarray) -> None:
        """Walks ``wi`` (rows of the walk table, each once) whose elements are ``level`` / ``pte`` / ``cpu``
        rows ``starts[i]`` .. ``starts[i] + counts[i] - 1`` in index order."""
        if len(wi) == 0:
            return
        done = self.shapes.rebuilt(wi)
        if bool(np.any(done)):  # more elements of walks already rebuilt: noted, the next pass sets them aside
            self.late.append(wi[done])
            keep = ~done
            wi, starts, counts = wi[keep], starts[keep], counts[keep]
            if len(wi) == 0:
                return
        wi, starts, counts = self.row_map.repeats(wi, starts, counts)
        ends = starts + counts - 1
        self.shapes.put(wi, counts, level[starts], leaf_levels(level[ends], pte[ends]),
                        level_paths(level, starts, counts))
        if self.model is None:
            return
        if self.selected is not None:
            keep = self.selected[wi]
            if not keep.all():
                starts, counts, wi = starts[keep], counts[keep], wi[keep]
            if len(starts) == 0:
                return
        self._compare(wi, starts, counts, level, pte, cpu)

    def _model_rows(self, wi: np.ndarray) -> np.ndarray:
        """The model rows of walks ``wi``, counted for the per-level table."""
        rows = self.walk_model_rows[wi].astype(np.int64)
        size = len(self.model)
        if len(self.model_rows) < size:
            self.model_rows = np.concatenate((self.model_rows, np.zeros(size - len(self.model_rows), np.int64)))
        self.model_rows += np.bincount(rows, minlength=len(self.model_rows))
        return rows

    def _note_mismatches(self, wi, bad, first_bad, counts, starts, rows, level, pte) -> None:
        """Keep the mismatch rows of the first ``limit`` bad walks in walk-table order."""
        found = np.flatnonzero(bad)
        if len(self.mismatches) >= self.limit:  # only walks before the last one kept can enter
            found = found[wi[found] < self.mismatches[-1][0]]
        found = found[np.argsort(wi[found], kind="stable")[: self.limit]]
        model = self.model.table(rows)
        for i in found.tolist():
            w = int(wi[i])
            # The model row's own address stands in (the same model fault) until mismatch_frame puts
            # the walk's address in.
            addr = self.model.walked(int(rows[i]))
            self.mismatches.append((w, mismatch_row(-1, addr, int(first_bad[i]),
                                                    int(counts[i]), int(starts[i]), level, pte, model, int(rows[i]))))
        self.mismatches.sort(key=lambda item: item[0])
        del self.mismatches[self.limit:]

    def _compare(self, wi, starts, counts, level, pte, cpu) -> None:
        rows = self._model_rows(wi)
        inside = modelled(rows, self.model.depths)
        if not inside.all():  # addresses the model does not cover: counted, not compared
            self.outside += int((~inside).sum())
            wi, starts, counts, rows = wi[inside], starts[inside], counts[inside], rows[inside]
            if not len(wi):
                return
        m_levels, m_ptes = self.model.columns()
        model_depth = self.model.depths[rows]
        starts, counts, retried, earlier = compared_passes(level, starts, counts, model_depth)
        if len(earlier):
            self.observed_levels += np.bincount(level[earlier].astype(np.intp) + 2, minlength=8)[:8]
            self.retried += int(retried.sum())
        bad, first_bad, observed = compare_elements(level, pte, starts, counts, rows, m_levels, m_ptes, model_depth)
        self.observed_levels += observed
        self.compared += len(wi)
        if self.lost and bad.any():
            maybe = np.flatnonzero(bad & self.lost.on(cpu[starts]))
            short = cut_short(level, pte, starts[maybe], counts[maybe], rows[maybe], m_levels, m_ptes,
                              model_depth[maybe])
            self.cut_short += int(short.sum())
            bad[maybe[short]] = False
        self.mismatched += int(bad.sum())
        if bad.any():
            self._note_mismatches(wi, bad, first_bad, counts, starts, rows, level, pte)


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Starts and lengths of the runs of equal values of ``keys``, and ``keys[1:] == keys[:-1]``."""
    same = keys[1:] == keys[:-1]
    starts = np.concatenate(([0], np.flatnonzero(~same) + 1))
    return starts, np.diff(np.append(starts, len(keys))), same


def _expand(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Every row of the runs ``starts`` / ``counts``, in order."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    step = np.ones(total, np.int64)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    keep = counts > 0
    step[first[keep]] = starts[keep] - np.concatenate(([0], (starts + counts - 1)[keep][:-1]))
    step[0] = starts[keep][0]
    return np.cumsum(step)


class _Rebuilder:
    """Feeds batches of elements to a :class:`_State`, holding the rows of walks that may go on."""

    def __init__(self, state: _State, row_map: RowMap, aside: np.ndarray | None = None):
        self.state, self.row_map = state, row_map
        self.aside = np.zeros(0, np.int64) if aside is None else aside  # sorted walk rows rebuilt at the end
        self.put_aside: list[list[np.ndarray]] = []  # their rows: walk row, index, level, pte, CPU
        # Held rows: walk row, index, level, pte, stream, position in that stream's rows, CPU.
        self.held: list[np.ndarray] | None = None
        self.cpu_seen = np.zeros(1, np.int64)  # rows fed so far, per CPU
        self._mark = np.zeros(0, bool)  # scratch over the walk rows of one batch (all False between batches)
        self._owner = np.zeros(0, np.int32)

    def _scratch(self, span: int) -> tuple[np.ndarray, np.ndarray]:
        """Scratch arrays for ``span`` consecutive walk rows, reused from batch to batch (a batch's walks
        usually span about its own length of walk rows, so this stays small)."""
        if len(self._mark) < span:
            size = max(span, 2 * len(self._mark))
            self._mark, self._owner = np.zeros(size, bool), np.zeros(size, np.int32)
        return self._mark[:span], self._owner[:span]

    def _cpu_tail(self, cpu: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """For a batch of ``n`` rows (``cpu``: each row's CPU; None or a negative CPU: one stream): each
        row's CPU (0 for every row without ``cpu``), per CPU the first row of its last :data:`HOLD_ROWS`
        rows in the batch, per CPU the rows fed once the batch is (:attr:`cpu_seen` grown), and the
        first row of any CPU's last rows. Only the batch's last rows are searched, a few times
        :data:`HOLD_ROWS` of them for the busy CPUs."""
        if cpu is None or int(cpu.min()) < 0:  # one stream: its last HOLD_ROWS rows
            per_cpu = np.zeros(len(self.cpu_seen), np.int64)
            per_cpu[0] = n
            lowest = max(n - HOLD_ROWS, 0)
            return np.zeros(n, np.int8), np.array([lowest], np.int64), self.cpu_seen + per_cpu, lowest
        cpus = cpu
        low, top = int(cpus.min()), int(cpus.max()) + 1
        if top > len(self.cpu_seen):
            self.cpu_seen = np.concatenate((self.cpu_seen, np.zeros(top - len(self.cpu_seen), np.int64)))
        if top - low <= 8:  # a few CPUs: counted one by one (bincount would widen every row first)
            per_cpu = np.zeros(len(self.cpu_seen), np.int64)
            for c in range(low, top):
                per_cpu[c] = np.count_nonzero(cpus == c)
        else:
            per_cpu = np.bincount(cpus, minlength=len(self.cpu_seen))
        first = np.zeros(len(per_cpu), np.int64)  # CPUs with fewer rows than HOLD_ROWS: all of them
        busy = np.flatnonzero(per_cpu >= HOLD_ROWS)
        window = min(n, 4 * HOLD_ROWS)
        while len(busy):
            tail = cpus[n - window:]
            found = np.bincount(tail, minlength=len(per_cpu))[busy] >= HOLD_ROWS
            if window == n or found.all():
                for c in busy[found].tolist():
                    first[c] = n - window + np.flatnonzero(tail == c)[-HOLD_ROWS]
                break
            window = min(n, 4 * window)
        return cpus, first, self.cpu_seen + per_cpu, int(first[per_cpu > 0].min())

    def feed(self, wid: np.ndarray, idx: np.ndarray, level: np.ndarray, pte: np.ndarray,
             cpu: np.ndarray | None = None, *, last: bool) -> None:
        """One batch of element columns in stream order (``cpu``: each row's CPU, when known: the walks
        held are those seen in the last :data:`HOLD_ROWS` rows of each CPU)."""
        state = self.state
        n = len(wid)
        cpu_of = cpu if cpu is not None else np.zeros(n, np.int8)  # each row's CPU, as recorded
        if n == 0:
            if last:
                self._finish([], None)
                self._rebuild_aside()
            return
        starts, counts, same = _runs(wid)
        wi = self.row_map.rows(wid[starts])
        orphan = wi < 0
        some_orphans = bool(orphan.any())
        if some_orphans:
            state.orphans += int(counts[orphan].sum())
        if len(self.aside) and self._set_aside(wi, starts, counts, idx, level, pte, cpu_of):
            orphan = wi < 0  # the walks set aside are left out here like orphans
            some_orphans = True
        # Runs out of index order, walks with several runs here, walks held from before or seen at the
        # end of this batch: gathered with the held rows and sorted by (walk, index).
        disorder = np.flatnonzero(same & (idx[1:] <= idx[:-1]))
        flagged = np.zeros(len(starts), bool)
        if len(disorder):
            flagged[np.searchsorted(starts, disorder, side="right") - 1] = True
        valid = np.flatnonzero(~orphan) if some_orphans else slice(None)
        v_wi = wi[valid]
        low = int(v_wi.min()) if len(v_wi) else 0
        mark, owner = self._scratch(int(v_wi.max()) - low + 1 if len(v_wi) else 0)
        local = v_wi - low
        # A walk with several runs here: the last run of it to be written owns the walk.
        order = np.arange(len(v_wi), dtype=np.int32)
        owner[local] = order
        repeated = v_wi[owner[local] != order]
        holding: np.ndarray | None = None
        cpus, first, seen_after, lowest = self._cpu_tail(cpu, n)
        if not last:  # the walks seen in the last HOLD_ROWS rows of their CPU (by a run's ends) may go on
            ends = starts + counts - 1
            late = int(np.searchsorted(ends, lowest))  # the runs before end before every CPU's last rows
            l_starts, l_ends = starts[late:], ends[late:]
            tail = late + np.flatnonzero((l_ends >= first[cpus[l_ends]]) | (l_starts >= first[cpus[l_starts]]))
            holding = wi[tail][wi[tail] >= 0]
            if self.held is not None:
                recent = self.held[5] >= seen_after[self.held[4]] - HOLD_ROWS
                holding = np.concatenate((holding, self.held[0][recent]))
        flag_walks = []  # walks to gather, as offsets in this batch's range of walk rows
        for walks in (repeated, holding, None if self.held is None else self.held[0]):
            if walks is not None and len(walks):
                offsets = walks - low
                flag_walks.append(offsets[(offsets >= 0) & (offsets < len(mark))])
        for walks in flag_walks:
            mark[walks] = True
        if flag_walks:
            flagged[valid] |= mark[local]
            for walks in flag_walks:
                mark[walks] = False
        if some_orphans:
            flagged &= ~orphan
            clean = np.flatnonzero(~flagged & ~orphan)
        else:
            clean = np.flatnonzero(~flagged)
        state.process(wi[clean], starts[clean], counts[clean], level, pte, cpu_of)
        if flagged.any():
            rows = _expand(starts[flagged], counts[flagged])
            position = seen_after[cpus[rows]]  # its CPU's rows fed by the batch's end: held a little longer
            gathered = [np.repeat(wi[flagged], counts[flagged]), idx[rows], level[rows], pte[rows], cpus[rows],
                        position, cpu_of[rows]]
        else:
            gathered = None
        self.cpu_seen = seen_after
        self._finish([gathered] if gathered is not None else [], holding)
        if last:
            self._rebuild_aside()

    def _set_aside(self, wi: np.ndarray, starts: np.ndarray, counts: np.ndarray, idx: np.ndarray, level: np.ndarray,
                   pte: np.ndarray, cpu: np.ndarray) -> bool:
        """Keep the rows of the runs of walks set aside (:attr:`aside`) and mark those runs -1 in ``wi``;
        False when there were none."""
        away = np.isin(wi, self.aside)
        if not away.any():
            return False
        rows = _expand(starts[away], counts[away])
        self.put_aside.append([np.repeat(wi[away], counts[away]), idx[rows], level[rows], pte[rows], cpu[rows]])
        wi[away] = -1
        return True

    def _rebuild_aside(self) -> None:
        """Rebuild the walks set aside, now that all their elements were read."""
        if not self.put_aside:
            return
        wi, idx, level, pte, cpu = (np.concatenate([part[c] for part in self.put_aside]) for c in range(5))
        self.put_aside = []
        order = np.lexsort((idx, wi))
        wi, level, pte, cpu = wi[order], level[order], pte[order], cpu[order]
        starts, counts, _ = _runs(wi)
        self.state.process(wi[starts], starts, counts, level, pte, cpu)

    def _finish(self, parts: list[list[np.ndarray]], holding: np.ndarray | None) -> None:
        """Rebuild the held and gathered rows except those of ``holding`` walks, which are held again."""
        if self.held is not None:
            parts = [self.held, *parts]
        self.held = None
        if not parts:
            return
        columns = [np.concatenate([p[c] for p in parts]) for c in range(7)]
        if holding is not None and len(holding):
            hold = np.isin(columns[0], holding)
            if hold.any():
                self.held = [c[hold] for c in columns]
                columns = [c[~hold] for c in columns]
        if len(columns[0]) == 0:
            return
        order = np.lexsort((columns[1], columns[0]))
        wi, level, pte, cpu = columns[0][order], columns[2][order], columns[3][order], columns[6][order]
        starts, counts, _ = _runs(wi)
        self.state.process(wi[starts], starts, counts, level, pte, cpu)


def feed_all(rebuilder: _Rebuilder, batches: Iterable[list[np.ndarray]]) -> bool:
    """Feed every batch; False when some walk's elements turned out too far apart (``state.late``)."""
    batches = iter(batches)
    pending = next(batches, None)
    while pending is not None:
        following = next(batches, None)
        rebuilder.feed(*pending, last=following is None)
        pending = following
        spill.trim()
    return not rebuilder.state.late


def feed_passes(row_map: RowMap, make_state: Callable[[], _State], batches: Callable[[], Iterable[list[np.ndarray]]],
                first: Iterable[list[np.ndarray]] | None = None) -> _State:
    """A fresh ``make_state()`` fed every element batch, ``batches()`` read once more (at most
    :data:`MAX_PASSES` times in all) when a pass found walks whose elements lie further apart than the
    held rows: the next pass sets those walks' rows aside and rebuilds them at its end (two passes
    settle: the walks not set aside meet the same rows). ``first`` is the first pass's batches when they
    were already started."""
    aside = np.zeros(0, np.int64)
    for number in range(MAX_PASSES):
        state = make_state()
        if feed_all(_Rebuilder(state, row_map, aside), first if number == 0 and first is not None else batches()):
            break
        aside = np.union1d(aside, np.concatenate(state.late))
    return state


def cross_check(state: _State, walk_ids: Callable[[np.ndarray], np.ndarray],
                addrs: Callable[[np.ndarray], np.ndarray]) -> CrossCheck:
    """The :class:`CrossCheck` of a fed :class:`_State` (with a model); ``walk_ids(rows)`` and
    ``addrs(rows)`` name the mismatching walks."""
    per_level = per_level_table(state.observed_levels, state.model.levels, row_counts=state.model_rows)
    summary = check_summary(int(state.n if state.selected is None else state.selected.sum()), state.compared,
                            state.compared - state.mismatched - state.cut_short, state.retried, state.outside,
                            state.cut_short)
    return CrossCheck(summary, state.mismatch_frame(walk_ids, addrs), per_level)


@dataclass
class StreamedWalks:
    """What :func:`stream_walks` found: ``n`` walk events, ``shapes`` (the caller's sink, filled),
    ``check`` (None without a model), ``orphans`` (elements whose walk event is missing), ``row_map``
    (walk ids <-> rows), ``error_rows`` (rows of the walks with a walker error, sorted), ``selected``
    (per walk, in the cut; None without ``select``)."""

    n: int
    shapes: Any
    check: CrossCheck | None
    orphans: int
    row_map: RowMap
    error_rows: np.ndarray
    selected: np.ndarray | None


def _walk_batches(cap: Any, columns: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
    """``columns`` of the ``walk`` family a batch at a time (decoded by a reader thread), nulls read as 0."""
    with prefetch(cap.iter_batches("walk", list(columns), WALK_BATCH_ROWS), depth=2) as batches:
        for batch in batches:
            yield {name: (pc.fill_null(column, 0) if column.null_count else column).to_numpy()
                   for name, column in zip(batch.schema.names, batch.columns)}


def _walk_rows(cap: Any, column: str, rows: np.ndarray) -> np.ndarray:
    """``column`` of the ``walk`` family at ``rows`` (a few: the family is read a batch at a time)."""
    rows = np.asarray(rows, np.int64)
    out = np.zeros(len(rows), np.uint64)
    start = 0
    for part in _walk_batches(cap, [column]):
        values = part[column]
        inside = (rows >= start) & (rows < start + len(values))
        out[inside] = values[rows[inside] - start]
        start += len(values)
    return out


def _element_batches(batches: Iterable[Any]) -> Iterator[list[np.ndarray]]:
    """:data:`STREAM_COLUMNS` of each record batch (zero-copy); AnalysisError when one holds nulls."""
    for batch in batches:
        nulls = [c for c in STREAM_COLUMNS if batch.column(c).null_count]
        if nulls:
            raise AnalysisError(f"walk_element column(s) {', '.join(nulls)} hold nulls: the capture is damaged")
        yield [batch.column(c).to_numpy() for c in STREAM_COLUMNS]


def _element_reader(cap: Any) -> prefetch:
    return prefetch(cap.iter_batches("walk_element", list(STREAM_COLUMNS), ELEMENT_BATCH_ROWS), depth=2)


def _element_stream(cap: Any) -> Iterator[list[np.ndarray]]:
    with _element_reader(cap) as reader:
        yield from _element_batches(reader)


def stream_walks(cap: Any, shapes: Callable[[int], Any] | None = None, *, on_walks: Callable[[int, dict[str, np.ndarray]], None] | None = None,
                 model_walk: Callable | None = None, select: Callable[[np.ndarray], np.ndarray] | None = None,
                 limit: int = 20) -> StreamedWalks:
    """Rebuild and cross-check every walk of ``cap`` (a capture, or anything with its ``rows``,
    ``iter_batches``, ``families`` and ``manifest``).

    ``shapes(n)`` makes the sink of each walk's shape (default :class:`WalkShapes`; any object with its
    ``rebuilt`` / ``put`` methods), once per pass over the elements; ``on_walks(start, columns)`` is given each batch of
    :data:`~.walks.WALK_COLUMNS` (walk rows ``start`` ...) as it is read; ``select(ts_ns) -> bool``
    limits the cross-check to some walks (a phase cut: every walk is still rebuilt). The first ``limit``
    mismatching walks in walk order are listed. Raises what reading the capture raises."""
    n = cap.rows("walk")
    shapes = shapes or WalkShapes
    model = ModelCache(model_walk) if model_walk is not None else None
    model_rows = spill.full(n if model is not None else 0, 0, np.uint8)  # per walk its row in the model cache
    selected = spill.full(n, False, bool) if select is not None else None
    scan = IdScan(n)  # the id map's table, made as the walk ids are read
    with _element_reader(cap) as reader:  # decodes the first element batches while the walks are read
        start = 0
        for columns in _walk_batches(cap, WALK_COLUMNS):
            count = len(columns["walk_id"])
            if start + count > n:
                raise AnalysisError(f"{cap.path}: the walk family holds more rows than its segments say")
            scan.add(columns["walk_id"])
            if model is not None:
                rows = model.rows(columns["addr"])
                model_rows = _widened(model_rows, len(model), start)
                model_rows[start:start + count] = rows
            if selected is not None:
                selected[start:start + count] = select(columns["ts_ns"])
            if on_walks is not None:
                on_walks(start, columns)
            start += count
            spill.trim()
        row_map = RowMap.from_chunks(scan, lambda: (part["walk_id"] for part in _walk_batches(cap, ["walk_id"])))
        state = feed_passes(row_map, lambda: _State(n, shapes(n), row_map, model, model_rows, limit, selected,
                                                    LostCpus(cap.manifest)),
                            lambda: _element_stream(cap), _element_batches(reader))
    check = None
    if model is not None:
        check = cross_check(state, row_map.ids, lambda rows: _walk_rows(cap, "addr", rows))
    error_rows = np.zeros(0, np.int64)
    if "walk_error" in cap.families():
        ids = [part["walk_id"] for part in _walk_error_batches(cap)]
        found = row_map.rows(np.concatenate(ids)) if ids else np.zeros(0, np.int64)
        error_rows = np.unique(found[found >= 0])
    return StreamedWalks(n, state.shapes, check, state.orphans, row_map, error_rows, selected)


def _walk_error_batches(cap: Any) -> Iterator[dict[str, np.ndarray]]:
    for batch in cap.iter_batches("walk_error", ["walk_id"]):
        yield {"walk_id": pc.fill_null(batch.column(0), 0).to_numpy().astype(np.uint64)}


def _widened(column: np.ndarray, count: int, rows: int) -> np.ndarray:
    """``column`` (unsigned codes, its first ``rows`` written), widened when needed to hold codes 0 ..
    ``count - 1``."""
    wanted = np.min_scalar_type(max(count - 1, 0))
    return spill.widened(column, wanted, rows=rows) if wanted.itemsize > column.dtype.itemsize else column
