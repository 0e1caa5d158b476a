"""Host side of a lab run under the real recorder: the guest's capture as the lab's output.

:func:`capture_counts` counts a function-probe capture per probe name the way the raw path counts
events (:mod:`tracekit.lab.results`), optionally within ``[begin_ns, end_ns]``;
:func:`visits_by_level` gives visits per probe and level; :func:`phase_steps` turns the workload's
phases into the raw path's steps. :func:`adopt_capture` moves the guest's capture to ``output`` and
adds the lab's metadata to its manifest, keeping the recorder's own keys. LabError when the guest's
capture is missing or unreadable.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from tracekit.capture import open_capture
from tracekit.capture.format import MANIFEST_NAME
from tracekit.capture.writer import write_json_atomic
from tracekit.errors import LabError, TracekitError
from tracekit.funcprobes.spec import FuncProbe

__all__ = ["capture_counts", "visits_by_level", "phase_steps", "adopt_capture"]

_NAME_COLUMN = {"split": "probe", "fault": "probe", "func_call": "name", "mmu": "event"}


def _window(table, begin_ns: int | None, end_ns: int | None):
    if begin_ns is None or end_ns is None or table.num_rows == 0:
        return table
    ts = table.column("ts_ns")
    return table.filter(pc.and_(pc.greater_equal(ts, begin_ns), pc.less_equal(ts, end_ns)))


def _tables(cap, columns: dict[str, list[str]]) -> dict:
    return {family: cap.table(family, cols) for family, cols in columns.items() if cap.has(family)}


def _read(cap) -> dict:
    return _tables(cap, {"split": ["ts_ns", "probe"], "fault": ["ts_ns", "probe"], "func_call": ["ts_ns", "name"],
                         "mmu": ["ts_ns", "event"], "stage2_walk": ["ts_ns"],
                         "stage2_visit": ["ts_ns", "visitor", "level", "count"]})  # fmt: skip


def _visitor_names(probes: tuple[FuncProbe, ...]) -> dict[str, str]:
    """``stage2_visit.visitor`` holds the visitor's kernel symbol; the lab counts under the probe's name."""
    return {p.symbol: p.name for p in probes if p.role == "visit"}


def _counts(tables: dict, probes: tuple[FuncProbe, ...], begin_ns: int | None = None, end_ns: int | None = None
            ) -> dict[str, int]:
    counts: dict[str, int] = {}
    for family, column in _NAME_COLUMN.items():
        if family not in tables:
            continue
        names = _window(tables[family], begin_ns, end_ns).column(column).to_pylist()
        for name in map(str, names):
            counts[name] = counts.get(name, 0) + 1
    walk = next((p for p in probes if p.role == "walk"), None)
    if walk is not None and "stage2_walk" in tables:
        rows = _window(tables["stage2_walk"], begin_ns, end_ns).num_rows
        if rows:
            counts[walk.name] = rows
    if "stage2_visit" in tables:
        by_symbol = _visitor_names(probes)
        visits = _window(tables["stage2_visit"], begin_ns, end_ns)
        if visits.num_rows:
            names = np.array([str(v) for v in visits.column("visitor").to_pylist()], dtype=object)
            count = visits.column("count").to_numpy()
            for symbol in np.unique(names):
                name = by_symbol.get(symbol, symbol)
                counts[name] = counts.get(name, 0) + int(count[names == symbol].sum())
    return counts


def capture_counts(cap, probes: tuple[FuncProbe, ...], begin_ns: int | None = None, end_ns: int | None = None
                   ) -> dict[str, int]:
    """Per probe name, what the capture holds (optionally within ``[begin_ns, end_ns]``); see the contract."""
    return _counts(_read(cap), probes, begin_ns, end_ns)


def visits_by_level(cap, probes: tuple[FuncProbe, ...]) -> dict[str, dict[int, int]]:
    """``{visitor probe name: {level: visits}}`` from ``stage2_visit``."""
    if not cap.has("stage2_visit"):
        return {}
    by_symbol = _visitor_names(probes)
    table = cap.table("stage2_visit", ["visitor", "level", "count"])
    out: dict[str, dict[int, int]] = {}
    for visitor, level, count in zip(table.column("visitor").to_pylist(), table.column("level").to_pylist(),
                                     table.column("count").to_pylist()):  # fmt: skip
        levels = out.setdefault(by_symbol.get(str(visitor), str(visitor)), {})
        levels[int(level)] = levels.get(int(level), 0) + int(count)
    return {name: dict(sorted(levels.items())) for name, levels in sorted(out.items())}


def phase_steps(cap, probes: tuple[FuncProbe, ...], phases: list[dict]) -> list[dict]:
    """The workload's phases as the raw path's steps, each with its counts (see the contract)."""
    tables = _read(cap)
    steps = []
    for index, phase in enumerate(phases):
        name, iteration = phase.get("name", "?"), phase.get("iteration")
        begin, end = phase.get("start_ns"), phase.get("end_ns")
        steps.append({
            "index": index,
            "op": name if iteration is None else f"{name}_{iteration}",
            "begin_ns": begin,
            "end_ns": end,
            "counts": _counts(tables, probes, begin, end) if begin is not None and end is not None else {},
        })  # fmt: skip
    return steps


def adopt_capture(guest_capture: Path, output: Path, lab: dict) -> dict:
    """Move ``guest_capture`` to ``output`` and merge ``lab`` (top-level manifest keys) into its manifest;
    returns the merged manifest."""
    try:
        manifest = open_capture(guest_capture).manifest
    except TracekitError as error:
        raise LabError(f"the guest's tracekit record capture is missing or unreadable: {error}") from None
    if output.exists():
        output.rmdir()  # run_lab checked it is empty
    shutil.move(str(guest_capture), str(output))
    guest = {key: manifest.get(key) for key in ("host", "source") if key in manifest}
    merged = {**manifest, **lab, "guest_recorder": guest}
    write_json_atomic(output / MANIFEST_NAME, merged)
    return merged
