"""Observed x86 guest walks compared with the reference model's walks of the same guest page tables.

:func:`model_from_layout` rebuilds the model from the built-in workload's layout record (AnalysisError
when the rebuilt tables differ from it); :class:`ModelCache` walks the model once per 2 MiB region or
4 KiB page. A walk matches when its depth, and at each depth its level and PTE (ignoring A/D), equal the
model's (:func:`compare_elements`; a walk retried from the root is compared by its last pass,
:func:`compared_passes`); one cut short by lost events (:func:`cut_short`, on the CPUs of
:class:`LostCpus`) is counted apart. :func:`check_summary` makes the verdict, :class:`CrossCheck` holds
it with the first mismatches and the per-level reads. Rules and fields: docs/analysis.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from tracekit.errors import AnalysisError, ModelError
from tracekit.model.x86 import PTE_AD_MASK, X86PageTables, X86Walk

__all__ = ["CrossCheck", "ModelCache", "model_from_layout", "mismatch_row", "MISMATCH_COLUMNS",
           "check_summary", "modelled", "per_level_table", "last_passes", "compared_passes", "compare_elements",
           "LostCpus", "cut_short", "match_text"]

MISMATCH_COLUMNS = ["walk_id", "addr", "depth", "observed_level", "observed_pte", "model_level", "model_pte", "reason"]
_PAGE_MASK = np.uint64(~0xFFF & (2**64 - 1))
_AD = np.uint64(PTE_AD_MASK)


@dataclass
class CrossCheck:
    """A cross-check's ``summary`` (:func:`check_summary`), ``mismatches`` (the first differing walks,
    :data:`MISMATCH_COLUMNS`) and ``per_level`` (PTE reads per level, observed and model)."""

    summary: dict
    mismatches: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=MISMATCH_COLUMNS))
    per_level: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["level", "observed", "model"]))


def model_from_layout(workload: dict | None) -> Callable[[int], X86Walk]:
    """The model's walk function for the guest page tables described by a workload layout record."""
    paging = (workload or {}).get("guest_paging") or {}
    mappings = paging.get("mappings")
    if not mappings or "root_gpa" not in paging:
        raise AnalysisError("the capture has no workload guest-paging record to rebuild the model from")
    if (workload or {}).get("arch", "x86_64") not in ("x86_64", "x86"):
        raise AnalysisError(f"the workload's guest is {workload.get('arch')}, not x86-64")
    try:
        tables = X86PageTables(levels=int(paging.get("levels", 4)))
        for m in mappings:
            tables.map(int(m["gva"]), int(m["gpa"]), int(m["size"]), int(m.get("page_size", 4096)), user=True)
        recorded = sorted(int(t) for t in paging.get("table_gpas") or [])
        base = recorded[0] if recorded else int(paging["root_gpa"])
        root, pages = tables.serialize(base)
    except (ModelError, KeyError, TypeError, ValueError) as error:
        raise AnalysisError(f"cannot rebuild the guest page tables from the workload record: {error}") from error
    if root != int(paging["root_gpa"]) or (recorded and sorted(pages) != recorded):
        raise AnalysisError("the rebuilt guest page tables do not match the workload record "
                            f"(root {root:#x} vs {int(paging['root_gpa']):#x}, {len(pages)} vs {len(recorded)} tables)")
    return tables.walk


_NO_LEVEL = -128
_OUTSIDE = object()  # a ModelCache walk the model does not cover (model_walk returned None)
_DENSE_REGIONS = 1 << 20  # direct-indexed region rows up to this span of 2 MiB regions (2 TiB)


class ModelCache:
    """The model's walks, each computed once: per 2 MiB region whose walk ends on a 2 MiB or 1 GiB leaf
    (every address inside shares it), else per distinct 4 KiB page.

    :meth:`rows` maps addresses (uint64 array) to rows of :attr:`levels` (int8, ``_NO_LEVEL`` past a
    walk's end), :attr:`ptes` (uint64) and :attr:`depths` (int64; 0 when the model faults, the message
    in :attr:`faults` keyed by the walked address; -1 when ``model_walk`` returned None: an address the
    model does not cover, not compared). Rows only grow, so rows handed out stay valid; the
    arrays are rebuilt when new walks were added."""

    def __init__(self, model_walk: Callable[[int], X86Walk]):
        self.model_walk = model_walk
        self.faults: dict[int, str] = {}
        self._walks: list[X86Walk | None] = []
        self._walked: list[int] = []  # the address each row's walk was made for (a region's or a page's)
        self._region_keys = np.zeros(0, np.uint64)  # sorted 2 MiB region numbers
        self._region_rows = np.zeros(0, np.int64)  # their rows; -1: walked per 4 KiB page
        self._page_keys = np.zeros(0, np.uint64)  # sorted 4 KiB page addresses
        self._page_rows = np.zeros(0, np.int64)
        self._built = -1
        self._dense: np.ndarray | None = None
        self._dense_low = np.uint64(0)
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] = (np.zeros((0, 1), np.int8),
                                                                   np.zeros((0, 1), np.uint64), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self._walks)

    def _walk(self, gva: int) -> X86Walk | object | None:
        try:
            walk = self.model_walk(gva)
        except ModelError as error:
            self.faults[gva] = str(error)
            return None
        return _OUTSIDE if walk is None else walk

    @staticmethod
    def _lookup(keys: np.ndarray, values: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(keys) == 0:
            return np.zeros(len(wanted), np.int64), np.zeros(len(wanted), bool)
        pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        return values[pos], keys[pos] == wanted

    def _dense_regions(self) -> None:
        """A direct-indexed copy of the region rows when the known regions span a compact range."""
        keys = self._region_keys
        self._dense = None
        if len(keys) and int(keys[-1]) - int(keys[0]) < _DENSE_REGIONS:
            dense = np.full(int(keys[-1]) - int(keys[0]) + 1, -2, np.int64)  # -2: not walked yet
            dense[(keys - keys[0]).astype(np.intp)] = self._region_rows
            self._dense, self._dense_low = dense, keys[0]

    def _region_lookup(self, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._dense is None:
            return self._lookup(self._region_keys, self._region_rows, regions)
        offset = regions - self._dense_low  # wraps around below the range: out of range too
        inside = offset < np.uint64(len(self._dense))
        if inside.all():
            row = self._dense[offset.view(np.int64)]
        else:
            row = np.where(inside, self._dense[np.where(inside, offset, 0).view(np.int64)], -2)
        return row, row != -2

    @staticmethod
    def _merge(keys: np.ndarray, values: np.ndarray, new_keys: np.ndarray, new_values: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        keys, values = np.concatenate((keys, new_keys)), np.concatenate((values, new_values))
        order = np.argsort(keys, kind="stable")
        return keys[order], values[order]

    def rows(self, addrs: np.ndarray) -> np.ndarray:
        """The model row of each address (int64), walking the model for regions and pages not seen yet."""
        addrs = np.asarray(addrs, dtype=np.uint64)
        regions = addrs >> np.uint64(21)
        row, hit = self._region_lookup(regions)
        if not hit.all():
            new = np.unique(regions[~hit])
            new_rows = np.full(len(new), -1, np.int64)
            for i, region in enumerate(new.tolist()):
                w = self._walk(region << 21)
                if isinstance(w, X86Walk) and w.leaf_level in (2, 3):
                    new_rows[i] = len(self._walks)
                    self._walks.append(w)
                    self._walked.append(region << 21)
            self._region_keys, self._region_rows = self._merge(self._region_keys, self._region_rows, new, new_rows)
            self._dense_regions()
            row, _ = self._region_lookup(regions)
        small = row < 0
        if small.any():
            pages = addrs[small] & _PAGE_MASK
            page_row, hit = self._lookup(self._page_keys, self._page_rows, pages)
            if not hit.all():
                new = np.unique(pages[~hit])
                new_rows = np.arange(len(self._walks), len(self._walks) + len(new), dtype=np.int64)
                self._walks.extend(self._walk(page) for page in new.tolist())
                self._walked.extend(new.tolist())
                self._page_keys, self._page_rows = self._merge(self._page_keys, self._page_rows, new, new_rows)
                page_row, _ = self._lookup(self._page_keys, self._page_rows, pages)
            row[small] = page_row
        return row

    def walked(self, row: int) -> int:
        """The address whose model walk row ``row`` holds (its 2 MiB region's or 4 KiB page's start):
        stands for any address of that row where only the model's fault for it matters."""
        return self._walked[row]

    def _tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._built != len(self._walks):
            walks = self._walks
            depth = max((len(w.levels) for w in walks if isinstance(w, X86Walk)), default=0)
            levels = np.full((len(walks), max(depth, 1)), _NO_LEVEL, np.int8)
            ptes = np.zeros((len(walks), max(depth, 1)), np.uint64)
            depths = np.zeros(len(walks), np.int64)
            for i, w in enumerate(walks):
                if not isinstance(w, X86Walk):
                    depths[i] = -1 if w is _OUTSIDE else 0
                    continue
                depths[i] = len(w.levels)
                for d, st in enumerate(w.levels):
                    levels[i, d] = st.level
                    ptes[i, d] = st.pte
            self._arrays, self._built = (levels, ptes, depths), len(walks)
            self._columns = ([np.ascontiguousarray(levels[:, d]) for d in range(levels.shape[1])],
                             [np.ascontiguousarray(ptes[:, d]) for d in range(ptes.shape[1])])
        return self._arrays

    def columns(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """:attr:`levels` and :attr:`ptes` one contiguous array per depth (fast ``np.take``)."""
        self._tables()
        return self._columns

    @property
    def levels(self) -> np.ndarray:
        return self._tables()[0]

    @property
    def ptes(self) -> np.ndarray:
        return self._tables()[1]

    @property
    def depths(self) -> np.ndarray:
        return self._tables()[2]

    def table(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
        """``(row, levels, ptes, depths, faults)``: the tuple :func:`mismatch_row` takes."""
        levels, ptes, depths = self._tables()
        return row, levels, ptes, depths, self.faults


def mismatch_row(walk_id: int, addr: int, at: int, depth: int, first: int, level: np.ndarray, pte: np.ndarray,
                 model: tuple, model_row: int) -> tuple:
    """The :data:`MISMATCH_COLUMNS` row of a walk whose first difference is at depth ``at``; ``first`` is
    the row of its first element in ``level`` / ``pte``, ``model`` what :meth:`ModelCache.table` returned."""
    _, m_levels, m_ptes, m_depths, faults = model
    model_depth = int(m_depths[model_row])
    m_level = int(m_levels[model_row, at]) if at < m_levels.shape[1] and m_levels[model_row, at] != _NO_LEVEL else None
    m_pte = int(m_ptes[model_row, at]) if m_level is not None else None
    if at >= depth:
        return (walk_id, addr, at, None, None, m_level, m_pte,
                f"observed walk ends at depth {depth}, model at {model_depth}")
    o_level, o_pte = int(level[first + at]), int(pte[first + at])
    if m_level is None:
        fault = faults.get(addr & ~0xFFF) or faults.get((addr >> 21) << 21)
        reason = f"model walk ends at depth {model_depth}" + (f" ({fault})" if fault else "")
    else:
        reason = "level differs" if m_level != o_level else "pte differs"
    return (walk_id, addr, at, o_level, o_pte, m_level, m_pte, reason)


def check_summary(walks: int, compared: int, matched: int, retried: int = 0, outside: int = 0,
                  cut_short: int = 0) -> dict:
    """The :class:`CrossCheck` ``summary`` dict for ``walks`` walks of which ``compared`` were compared,
    ``matched`` matched and ``cut_short`` were cut short by lost events (:func:`cut_short`: not judged),
    ``retried`` of the compared ones read in several passes from the root, ``outside`` not compared
    because the model does not cover their address. ``match_rate`` is over the complete walks."""
    judged = compared - cut_short
    mismatched = judged - matched
    if not compared:
        verdict = "no walks"
    elif mismatched:
        verdict = "mismatch"
    else:
        verdict = "match" if judged else "cut short"
    return {"walks": walks, "compared": compared, "matched": matched,
            "match_rate": matched / judged if judged else None, "mismatched": mismatched,
            "retried": retried, "outside_model": outside, "cut_short": cut_short, "verdict": verdict}


def match_text(summary: dict, match: str = "match") -> str:
    """``"49,217 of 49,217 walks match (100.00%)"`` of a ``summary``; the walks judged are the complete
    ones when some were cut short by lost events."""
    judged = summary["compared"] - (summary.get("cut_short") or 0)
    walks = "complete walks" if summary.get("cut_short") else "walks"
    rate = f" ({summary['match_rate']:.2%})" if judged else ""
    return f"{summary['matched']:,} of {judged:,} {walks} {match}{rate}"


#: The lost-event probes that can cut a walk short: its element tracepoint, and a tracefs ring's overruns
#: (``tracefs:ring_buffer``, ``tracefs:missed_pages``, the labs' ``tracefs``), which lose any event.
_ELEMENT_LOSSES = ("kvmmmu:kvm_mmu_paging_element", "tracefs")


class LostCpus:
    """The CPUs on which a capture lost events that may be walk elements (manifest ``lost``: probe, CPU,
    count; a CPU of -1 stands for every CPU). Empty for a capture that lost none of them."""

    def __init__(self, manifest: dict):
        cpus: set[int] = set()
        for entry in manifest.get("lost") or []:
            probe, count = str(entry.get("probe", "")), entry.get("count") or 0
            if count and (probe == _ELEMENT_LOSSES[0] or probe.split(":")[0] == _ELEMENT_LOSSES[1]):
                cpus.add(int(entry.get("cpu", -1)))
        self.every = -1 in cpus
        self.cpus = np.array(sorted(cpus - {-1}), np.int64)

    def __bool__(self) -> bool:
        return self.every or len(self.cpus) > 0

    def on(self, cpu: np.ndarray) -> np.ndarray:
        """Per walk, whether its CPU (``cpu``) lost such events."""
        if self.every:
            return np.ones(len(cpu), bool)
        return np.isin(np.asarray(cpu, np.int64), self.cpus)


def cut_short(level: np.ndarray, pte: np.ndarray, starts: np.ndarray, counts: np.ndarray, rows: np.ndarray,
              model_levels: list[np.ndarray], model_ptes: list[np.ndarray], model_depth: np.ndarray) -> np.ndarray:
    """Which walks (elements ``starts[i]`` .. ``starts[i] + counts[i] - 1``, model rows ``rows``) are their
    model walk with elements missing: fewer elements than the model's, levels strictly descending, each
    element equal to the model's element of its level (PTE ignoring A/D). A lost element event leaves
    exactly that; a wrong level or PTE is never explained by a loss."""
    fits = (counts < model_depth) & (counts > 0)
    for d in range(int(counts[fits].max()) if fits.any() else 0):
        has = np.flatnonzero(fits & (counts > d))
        e = starts[has] + d
        o_level = level[e]
        found = np.zeros(len(has), bool)
        for m_level, m_pte in zip(model_levels, model_ptes):
            found |= (m_level[rows[has]] == o_level) & (((pte[e] ^ m_pte[rows[has]]) & ~_AD) == 0)
        if d:
            found &= o_level < level[e - 1]
        fits[has[~found]] = False
    return fits


def modelled(rows: np.ndarray, model_depths: np.ndarray) -> np.ndarray:
    """True for the walks whose model rows ``rows`` hold a model walk (not an address outside the model)."""
    return model_depths[rows] >= 0


def last_passes(level: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per walk (elements ``starts[i]`` .. ``starts[i] + counts[i] - 1`` of ``level``), where its last
    pass from the root begins: the depth of its last element, after the first, at the walk's first
    (root) level; 0 for a walk read in one pass. ``walk_addr_generic`` retries a walk from the root
    when its accessed/dirty-bit update loses a race, under the same walk event (int64)."""
    offset = np.zeros(len(starts), np.int64)
    if len(starts) == 0:
        return offset
    root = level[starts]
    for d in range(1, int(counts.max())):
        has = np.flatnonzero(counts > d)
        again = level[starts[has] + d] == root[has]
        offset[has[again]] = d
    return offset


def compared_passes(level: np.ndarray, starts: np.ndarray, counts: np.ndarray, model_depth: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What is compared of each walk: ``(starts, counts, retried, earlier)``, the walk's last pass from
    the root (:func:`last_passes`) where the walk is longer than the model's (only then can a retried
    walk's last pass match), ``retried`` flagging those walks and ``earlier`` the element rows of their
    earlier passes (still PTE reads: counted per level, not compared)."""
    longer = np.flatnonzero(counts > model_depth)
    retried = np.zeros(len(starts), bool)
    if len(longer) == 0:
        return starts, counts, retried, np.zeros(0, np.int64)
    offset = last_passes(level, starts[longer], counts[longer])
    again = offset > 0
    if not again.any():
        return starts, counts, retried, np.zeros(0, np.int64)
    which, shift = longer[again], offset[again]
    earlier = np.concatenate([np.arange(a, a + k) for a, k in zip(starts[which].tolist(), shift.tolist())])
    starts, counts = starts.copy(), counts.copy()
    starts[which] += shift
    counts[which] -= shift
    retried[which] = True
    return starts, counts, retried, earlier


def compare_elements(level: np.ndarray, pte: np.ndarray, starts: np.ndarray, counts: np.ndarray, rows: np.ndarray,
                     model_levels: list[np.ndarray], model_ptes: list[np.ndarray], model_depth: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each walk's elements ``starts[i]`` .. ``starts[i] + counts[i] - 1`` of ``level`` / ``pte`` against
    model row ``rows[i]`` (``model_levels`` / ``model_ptes``: one array per depth; ``model_depth`` per
    walk), one vectorised pass per depth: ``(bad, first_bad, observed)``, ``bad`` where the depths, a
    level or a PTE (ignoring A/D) differ, ``first_bad`` the depth of the first difference (-1 for a
    match), ``observed`` the PTE reads per level + 2 (8 counts). ``counts`` must not be empty."""
    bad = counts != model_depth
    first_bad = np.where(bad, np.minimum(counts, model_depth), -1)
    observed = np.zeros(8, np.int64)
    shortest = int(counts.min())
    for d in range(int(counts.max())):
        every = d < shortest  # every walk has a row at this depth: no selection
        has = slice(None) if every else np.flatnonzero(counts > d)
        e = starts[has] + d
        r = rows[has]
        o_level = level.take(e)
        slot = o_level.astype(np.intp)
        slot += 2
        observed += np.bincount(slot, minlength=8)[:8]
        m_level = model_levels[d].take(r) if d < len(model_levels) else np.full(len(r), _NO_LEVEL, np.int8)
        m_pte = model_ptes[d].take(r) if d < len(model_ptes) else np.zeros(len(r), np.uint64)
        differ = pte.take(e)
        differ ^= m_pte
        differ &= ~_AD
        wrong = differ != 0
        wrong |= o_level != m_level
        if not wrong.any():
            continue
        where = np.flatnonzero(wrong) if every else has[wrong]
        newly = where[(first_bad[where] < 0) | (first_bad[where] > d)]
        first_bad[newly] = d
        bad[where] = True
    return bad, first_bad, observed


def per_level_table(observed_counts: np.ndarray, model_levels: np.ndarray, model_rows: np.ndarray | None = None,
                    *, row_counts: np.ndarray | None = None) -> pd.DataFrame:
    """The :class:`CrossCheck` ``per_level`` frame: ``observed_counts`` (PTE reads per level + 2, 8
    slots) next to the model's reads per level for the walks whose model rows are ``model_rows``
    (``model_levels`` as :attr:`ModelCache.levels` holds them), or whose number per model row is
    ``row_counts``; levels from the highest down."""
    if row_counts is None:
        row_counts = np.bincount(np.asarray(model_rows, np.int64), minlength=len(model_levels))
    row_counts = np.asarray(row_counts, np.int64)[:len(model_levels)]
    model_counts = np.zeros(8, np.int64)
    for d in range(model_levels.shape[1]):
        lv = model_levels[:len(row_counts), d].astype(np.int64)
        has = lv != _NO_LEVEL
        model_counts += np.bincount(lv[has] + 2, weights=row_counts[has], minlength=8)[:8].astype(np.int64)
    levels_seen = [lv for lv in range(7, -1, -1) if observed_counts[lv] or model_counts[lv]]
    return pd.DataFrame({"level": [lv - 2 for lv in levels_seen],
                         "observed": [int(observed_counts[lv]) for lv in levels_seen],
                         "model": [int(model_counts[lv]) for lv in levels_seen]})
