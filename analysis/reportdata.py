"""The data behind the HTML report's figures: a timeline per thread, where the time goes, latency samples.

:func:`report_data` reads the capture's timed events twice (extent and series, then bins), so memory
follows the bins and series, not the events; :func:`report_data_json` is the same as plain values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tracekit.analysis.common import format_ns, load
from tracekit.analysis.phases import matching_phases
from tracekit.analysis.events import phase_spans, vcpu_threads
from tracekit.analysis.reportevents import KINDS, TIMED_GROUPS, EventBatch, event_batches

__all__ = ["MIN_SAMPLES", "TIMELINE_BINS", "LATENCY_EDGES_NS", "Series", "ReportData", "report_data",
           "report_data_json", "timeline_phases"]

#: Fewer timed calls than this: the values are listed instead of a distribution drawn.
MIN_SAMPLES = 20
TIMELINE_BINS = 800
MAX_ROWS = 12
#: Histogram edges of the latency distributions: 10 ns to 1000 s, 40 per decade.
LATENCY_EDGES_NS = np.logspace(1, 12, 11 * 40 + 1)


@dataclass
class Series:
    """One activity's timed calls: ``kind`` (lane), ``label``, ``count``, ``total_ns``, ``max_ns``,
    ``untimed`` (calls whose return was not seen), ``hist`` over :data:`LATENCY_EDGES_NS`, the first
    :data:`MIN_SAMPLES` ``values``; ``aggregated`` when only the kernel's totals exist (KVM_RUN)."""

    kind: str
    label: str
    count: int = 0
    total_ns: int = 0
    max_ns: int = 0
    untimed: int = 0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(len(LATENCY_EDGES_NS) + 1, np.int64))
    values: list = field(default_factory=list)
    aggregated: bool = False


@dataclass
class ReportData:
    """What the figures draw (see the module docstring). ``lanes[(row, kind)]`` holds the events per
    bin and the busy nanoseconds per bin (spans clipped to the bin); ``aggregated[row]`` says what the
    kernel counted of the row's KVM_RUN calls when they were not streamed (no per-call times)."""

    t0_ns: int
    end_ns: int
    t0_from: str
    view_start_ns: int
    view_end_ns: int
    phases: pd.DataFrame
    rows: list[str]
    kinds: list[str]
    lanes: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]
    series: list[Series]
    aggregated: dict[str, str] = field(default_factory=dict)
    outside: int = 0

    @property
    def bin_ns(self) -> float:
        return (self.view_end_ns - self.view_start_ns) / TIMELINE_BINS

    @property
    def origin(self) -> str:
        """What the times are counted from: ``capture start``, or ``start of phase P`` for a phase cut."""
        return self.t0_from.removeprefix("the ") if self.t0_from.startswith("the start of phase") else "capture start"

    def outside_view(self) -> int:
        """Events of the capture outside the timeline's view (before or after the phases)."""
        return self.outside

    def timeline_table(self) -> pd.DataFrame:
        """Per row and lane: ``events``, ``busy_ns`` (span time inside the window), ``active_bins``."""
        rows = [{"row": row, "kind": kind, "events": int(counts.sum()), "busy_ns": int(busy.sum()),
                 "active_bins": int(((counts > 0) | (busy > 0)).sum())}
                for (row, kind), (counts, busy) in self.lanes.items()]
        frame = pd.DataFrame(rows, columns=["row", "kind", "events", "busy_ns", "active_bins"])
        order = {row: i for i, row in enumerate(self.rows)}
        kinds = {kind: i for i, kind in enumerate(KINDS)}
        return frame.sort_values(["row", "kind"], key=lambda c: c.map(order if c.name == "row" else kinds),
                                 kind="stable").reset_index(drop=True)

    def time_table(self) -> pd.DataFrame:
        """Where the time goes: per timed series, ``calls``, ``total_ns``, ``max_ns``, ``share`` of the
        window (nested activities overlap: the shares do not add up), largest total first."""
        window = max(self.end_ns - self.t0_ns, 1)
        rows = [{"what": s.label, "kind": s.kind, "calls": s.count, "total_ns": s.total_ns, "max_ns": s.max_ns,
                 "share": s.total_ns / window, "untimed": s.untimed, "per_call": not s.aggregated}
                for s in self.series if s.count]
        frame = pd.DataFrame(rows, columns=["what", "kind", "calls", "total_ns", "max_ns", "share", "untimed",
                                            "per_call"])
        return frame.sort_values(["total_ns", "what"], ascending=[False, True], kind="stable").reset_index(drop=True)

    def distributions(self) -> list[Series]:
        """Series with per-call times and at least :data:`MIN_SAMPLES` calls, most calls first."""
        return sorted((s for s in self.series if not s.aggregated and s.count >= MIN_SAMPLES),
                      key=lambda s: (-s.count, s.label))

    def few_samples(self) -> list[Series]:
        """Series with per-call times but fewer than :data:`MIN_SAMPLES` calls (their values are listed)."""
        return sorted((s for s in self.series if not s.aggregated and 0 < s.count < MIN_SAMPLES),
                      key=lambda s: (s.kind, s.label))


def timeline_phases(result: Any, manifest: dict) -> pd.DataFrame:
    """The spans of the phase lane (``phase``, ``start_ns``, ``end_ns``, ``source``): the analysis' phases,
    else a lab run's steps (:func:`.events.phase_spans`, as the Perfetto timeline draws them)."""
    phases, _ = phase_spans(result.tables.get("phases"), manifest)
    return phases.reindex(columns=["phase", "start_ns", "end_ns", "source"])


def _run_label(tid: int, vcpus: dict[int, int]) -> str:
    """A thread's KVM_RUN series: by vCPU and thread (two threads can claim one vCPU)."""
    return f"KVM_RUN vCPU {vcpus[tid]} (tid {tid})" if tid in vcpus else f"KVM_RUN tid {tid}"


def _series_label(batch: EventBatch, names: np.ndarray, tids: np.ndarray, vcpus: dict[int, int]) -> np.ndarray:
    if batch.kind == "KVM_RUN":
        return np.array([_run_label(t, vcpus) for t in tids.tolist()], dtype=object)
    prefix = {"fault": "fault: ", "split": "split: ", "stage-2 walk": "walk: ", "KVM function": "call: ",
              "mmu_lock wait": "wait: ", "lock wait": "wait: "}.get(batch.kind, "")
    return np.array([f"{prefix}{n}" for n in names.tolist()], dtype=object)


class _Collector:
    """First pass: extent, per-thread event counts and the timed series."""

    def __init__(self, vcpus: dict[int, int]):
        self.vcpus = vcpus
        self.first = self.last = None
        self.thread_events: dict[int, int] = {}
        self.series: dict[tuple[str, str], Series] = {}
        self.kinds: set[str] = set()
        self.aggregated: dict[int, Series] = {}

    def add(self, batch: EventBatch) -> None:
        self.kinds.add(batch.kind)
        ends = batch.ts_ns + np.maximum(batch.duration_ns, 0)
        first, last = int(batch.ts_ns.min()), int(ends.max())
        self.first = first if self.first is None else min(self.first, first)
        self.last = last if self.last is None else max(self.last, last)
        tids, codes = _threads(batch.tid)
        counts = np.bincount(codes, minlength=len(tids))
        for tid, count in zip(tids.tolist(), counts.tolist()):
            self.thread_events[tid] = self.thread_events.get(tid, 0) + count
        if batch.kind not in TIMED_GROUPS:
            return
        names = (np.full(len(batch), batch.series, dtype=object) if isinstance(batch.series, str)
                 else batch.series)
        codes, uniques = pd.factorize(pd.Series(names, dtype=object).astype(str) + "\0" + pd.Series(batch.tid).astype(str)
                                      if batch.kind == "KVM_RUN" else pd.Series(names, dtype=object).astype(str))
        for code in range(len(uniques)):
            rows = codes == code
            tid = batch.tid[rows]
            label = _series_label(batch, names[rows][:1], tid[:1], self.vcpus)[0]
            self._add_series(batch.kind, label, batch.duration_ns[rows])

    def _add_series(self, kind: str, label: str, durations: np.ndarray) -> None:
        series = self.series.setdefault((kind, label), Series(kind, label))
        timed = durations[durations >= 0]
        series.untimed += len(durations) - len(timed)
        if not len(timed):
            return
        series.count += len(timed)
        series.total_ns += int(timed.sum())
        series.max_ns = max(series.max_ns, int(timed.max()))
        series.hist += np.bincount(np.searchsorted(LATENCY_EDGES_NS, timed, side="right"),
                                   minlength=len(series.hist))
        if len(series.values) < MIN_SAMPLES:
            series.values.extend(timed[:MIN_SAMPLES - len(series.values)].tolist())

    def add_aggregated_runs(self, summary: pd.DataFrame) -> None:
        """KVM_RUN calls aggregated in the kernel (``ioctl_summary``): totals only, per thread."""
        runs = summary[summary["cmd_name"] == "KVM_RUN"]
        for tid, rows in runs.groupby("tid"):
            tid = int(tid)
            label = _run_label(tid, self.vcpus)
            series = self.series.setdefault(("KVM_RUN", label), Series("KVM_RUN", label, aggregated=True))
            series.aggregated = True
            series.count += int(rows["count"].sum())
            series.total_ns += int(rows["total_ns"].sum())
            series.max_ns = max(series.max_ns, int(rows["max_ns"].max()))
            self.kinds.add("KVM_RUN")
            self.aggregated[tid] = series


def _thread_rows(thread_events: dict[int, int], vcpus: dict[int, int], manifest: dict) -> dict[int, str]:
    """``{tid: row label}``: vCPU threads first, then the busiest other threads, the rest in one row."""
    names = {t.get("tid"): t.get("comm") for t in (manifest.get("target") or {}).get("threads") or []}
    main = (manifest.get("workload") or {}).get("main_tid")
    ordered = sorted(thread_events, key=lambda t: (t not in vcpus, vcpus.get(t, 0), -thread_events[t], t))
    rows = {}
    for tid in ordered:
        if len(set(rows.values())) >= MAX_ROWS - 1 and tid not in rows:
            rows[tid] = "other threads"
            continue
        if tid in vcpus:
            rows[tid] = f"vCPU {vcpus[tid]} (tid {tid})"
        elif tid == main:
            rows[tid] = f"VMM main (tid {tid})"
        else:
            rows[tid] = f"{names[tid]} (tid {tid})" if names.get(tid) else f"tid {tid}"
    return rows


def _threads(tids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct threads of ``tids`` and each row's index into them (np.unique's, by counting when
    the thread ids lie close together, as they do: no sort of the batch)."""
    if not len(tids):
        return tids, np.zeros(0, np.int64)
    low, high = int(tids.min()), int(tids.max())
    if high - low >= 1 << 22:
        return np.unique(tids, return_inverse=True)
    present = np.flatnonzero(np.bincount(tids - low, minlength=high - low + 1))
    index = np.full(high - low + 1, -1, np.int64)
    index[present] = np.arange(len(present))
    return present + low, index[tids - low]


def _busy_at(edges: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per bin (between consecutive ``edges``), the time the spans ``[starts, ends)`` cover (int64 ns,
    times relative to the window start)."""
    starts, ends = np.sort(starts), np.sort(ends)
    cs, ce = np.concatenate(([0], np.cumsum(starts))), np.concatenate(([0], np.cumsum(ends)))
    ns, ne = np.searchsorted(starts, edges), np.searchsorted(ends, edges)
    covered = (ns * edges - cs[ns]) - (ne * edges - ce[ne])
    return np.diff(covered)


def _bin(data: ReportData, batch: EventBatch, rows: dict[int, str]) -> None:
    width = max(data.view_end_ns - data.view_start_ns, 1)
    rel = batch.ts_ns - data.view_start_ns
    ends = rel + np.maximum(batch.duration_ns, 0)
    inside = (ends >= 0) & (rel <= width)
    data.outside += int(len(rel) - np.count_nonzero(inside))
    if not inside.all():
        rel, ends, tid = rel[inside], ends[inside], batch.tid[inside]
    else:
        tid = batch.tid
    if not len(rel):
        return
    tids, codes = _threads(tid)  # a few threads per batch: their rows looked up once
    per_thread = np.array([data.rows.index(rows[t]) if rows.get(t) in data.rows else len(data.rows)
                           for t in tids.tolist()], np.int64)
    row_codes = per_thread[codes]
    bins = np.clip(rel, 0, width) * TIMELINE_BINS // width
    np.minimum(bins, TIMELINE_BINS - 1, out=bins)
    # one count over (row, bin) for the whole batch; the spans' busy time per row (spans are few)
    counts = np.bincount(row_codes * TIMELINE_BINS + bins, minlength=(len(data.rows) + 1) * TIMELINE_BINS)
    spans = ends > rel
    edges = np.linspace(0, width, TIMELINE_BINS + 1).round().astype(np.int64)
    for code in np.unique(per_thread).tolist():
        if code >= len(data.rows):
            continue
        lane_counts, busy = data.lanes.setdefault((data.rows[code], batch.kind), (np.zeros(TIMELINE_BINS, np.int64),
                                                                                  np.zeros(TIMELINE_BINS, np.int64)))
        lane_counts += counts[code * TIMELINE_BINS:(code + 1) * TIMELINE_BINS]
        mine = spans & (row_codes == code) if spans.any() else None
        if mine is not None and mine.any():
            busy += _busy_at(edges, np.clip(rel[mine], 0, width), np.clip(ends[mine], 0, width))


def _window(cap: Any, result: Any, phases: pd.DataFrame, collector: _Collector) -> tuple[int, int, str]:
    phase = result.info.get("phase")
    if phase is not None and len(phases):
        chosen = matching_phases(result.tables["phases"], phase)
        return int(chosen["start_ns"].min()), int(chosen["end_ns"].max()), f"the start of phase {phase}"
    window = cap.manifest.get("window") or {}
    if isinstance(window.get("start_ns"), int) and isinstance(window.get("stop_ns"), int):
        return window["start_ns"], max(window["stop_ns"], collector.last or 0), "the recording window's start"
    starts = [v for v in (collector.first, phases["start_ns"].min() if len(phases) else None) if v is not None]
    ends = [v for v in (collector.last, phases["end_ns"].max() if len(phases) else None) if v is not None]
    if not starts:
        return 0, 1, "no timed event"
    return int(min(starts)), int(max(ends)), "the first recorded event or phase"


def _view(phases: pd.DataFrame, t0: int, end: int, cut: bool) -> tuple[int, int]:
    """The timeline's time range: the phases (with a 2% margin) when they cover less than 80% of the
    capture (a workload started well after the recorder, or left it running after), else all of it."""
    if cut or not len(phases):
        return t0, end
    first, last = int(phases["start_ns"].min()), int(phases["end_ns"].max())
    if last - first >= 0.8 * (end - t0):
        return t0, end
    margin = int((last - first) * 0.02)
    return max(t0, first - margin), min(end, last + margin)


def report_data(cap: Any, result: Any) -> ReportData:
    """The report's figure data for ``result``, the analysis of ``cap`` (see the module docstring)."""
    vcpus = vcpu_threads(cap)
    phases = timeline_phases(result, cap.manifest)
    collector = _Collector(vcpus)
    for batch in event_batches(cap, result, result.tables.get("phases", phases)):
        collector.add(batch)
    if "ioctl_summary" in cap.families() and result.info.get("phase") is None:
        collector.add_aggregated_runs(load(cap, "ioctl_summary", ["tid", "cmd_name", "count", "total_ns", "max_ns"]))
    t0, end, t0_from = _window(cap, result, phases, collector)
    rows = _thread_rows(collector.thread_events, vcpus, cap.manifest)
    view_start, view_end = _view(phases, t0, max(end, t0 + 1), result.info.get("phase") is not None)
    data = ReportData(t0_ns=t0, end_ns=max(end, t0 + 1), t0_from=t0_from, view_start_ns=view_start,
                      view_end_ns=view_end, phases=phases,
                      rows=_row_order(rows, vcpus, collector.thread_events),
                      kinds=[k for k in KINDS if k in collector.kinds], lanes={}, series=list(collector.series.values()))
    for tid, series in collector.aggregated.items():
        if tid in rows and rows[tid] != "other threads":
            data.aggregated[rows[tid]] = (
                f"KVM_RUN: {series.count:,} calls, {format_ns(series.total_ns)} in all (counted in the kernel: "
                "no per-call times; record --stream-ioctl KVM_RUN draws them)")
    for batch in event_batches(cap, result, result.tables.get("phases", phases)):
        _bin(data, batch, rows)
    return data


def _row_order(rows: dict[int, str], vcpus: dict[int, int], events: dict[int, int]) -> list[str]:
    ordered = sorted(rows, key=lambda t: (rows[t] == "other threads", t not in vcpus, vcpus.get(t, 0), -events[t], t))
    return list(dict.fromkeys(rows[t] for t in ordered))


def report_data_json(data: ReportData) -> dict:
    """The figure data as plain values: what the golden copies pin (never pixels)."""
    def series(s: Series) -> dict:
        return {"kind": s.kind, "label": s.label, "count": s.count, "total_ns": s.total_ns, "max_ns": s.max_ns,
                "untimed": s.untimed, "aggregated": s.aggregated}

    return {
        "t0_ns": data.t0_ns, "end_ns": data.end_ns, "t0_from": data.t0_from,
        "view_ns": [data.view_start_ns - data.t0_ns, data.view_end_ns - data.t0_ns], "outside_view": data.outside,
        "phases": data.phases.assign(start_ns=data.phases["start_ns"] - data.t0_ns,
                                     end_ns=data.phases["end_ns"] - data.t0_ns).to_dict("records"),
        "rows": data.rows, "kinds": data.kinds,
        "timeline": data.timeline_table().to_dict("records"),
        "time": [{**row, "share": round(row["share"], 6)} for row in data.time_table().to_dict("records")],
        "distributions": [series(s) for s in data.distributions()],
        "few_samples": [{**series(s), "values": sorted(s.values)} for s in data.few_samples()],
    }
