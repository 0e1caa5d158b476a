"""Phases of a run on CLOCK_MONOTONIC, and cutting any event frame by phase.

Contract
--------
A *phase table* is a DataFrame with one row per phase, sorted by ``start_ns``:

============  ======  ==========================================================================
column        type    meaning
============  ======  ==========================================================================
phase         str     label: ``name`` or ``name#iteration`` (``dirty-memory#2``)
name          str     lowercase, dash-separated (``populate``, ``enable-dirty-logging``,
                      ``dirty-memory``, ``get-dirty-log``, ``clear-dirty-log``,
                      ``disable-dirty-logging``, ``create-mappings``, ...)
iteration     int64   1-based iteration, 0 for phases without one
start_ns      int64   CLOCK_MONOTONIC start
end_ns        int64   CLOCK_MONOTONIC end (exclusive)
duration_ns   int64   ``end_ns - start_ns``
source        str     ``workload`` (the built-in workload's record) or ``selftest`` (parsed output)
============  ======  ==========================================================================

- :func:`workload_phases` reads the ``workload.phases`` list of a manifest (``name``,
  ``iteration``, ``start_ns``, ``end_ns``).
- :func:`parse_selftest_output` parses dirty_log_perf_test and kvm_page_table_test output
  (optionally prefixed ``# `` by the kselftest runner) into phases with durations only;
  :func:`align_selftest_phases` puts them on the capture's clock using the dirty-log ioctls the
  capture recorded (see the function for the exact rule). Raises AnalysisError when the text has no
  phase line or nothing in the capture anchors it.
- :func:`label_phases` gives every timestamp the label of the phase containing it, as a pandas
  Categorical (``""`` outside every phase); :func:`select_phase` keeps the rows inside the phases a ``--phase`` argument names.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from tracekit.errors import AnalysisError, UsageError

__all__ = [
    "PHASE_COLUMNS",
    "normalise_name",
    "make_phase_table",
    "workload_phases",
    "parse_selftest_output",
    "align_selftest_phases",
    "capture_phases",
    "label_phases",
    "select_phase",
    "phase_mask",
]

PHASE_COLUMNS = ["phase", "name", "iteration", "start_ns", "end_ns", "duration_ns", "source"]

_VALUE = r"(\d+)\.(\d{9})s"
_PREFIX = r"^(?:# )?"
_SIMPLE = {
    "Populate memory time": "populate",
    "Enabling dirty logging time": "enable-dirty-logging",
    "Disabling dirty logging time": "disable-dirty-logging",
}
_SIMPLE_RE = re.compile(_PREFIX + r"(Populate memory time|Enabling dirty logging time|Disabling dirty logging time): "
                        + _VALUE + r"$")
_ITER_RE = re.compile(_PREFIX + r"Iteration (\d+) (dirty memory|get dirty log|clear dirty log) time: " + _VALUE + r"$")
_PTT_RE = re.compile(_PREFIX + r"(KVM_CREATE_MAPPINGS|KVM_UPDATE_MAPPINGS|KVM_ADJUST_MAPPINGS): "
                     r"total execution time: " + _VALUE + r"$")

#: Phase name -> the dirty-log ioctl event that ends it (see align_selftest_phases).
_ANCHORS = {
    "enable-dirty-logging": ("enable", "end"),
    "get-dirty-log": ("get", "end"),
    "clear-dirty-log": ("clear", "end"),
    "disable-dirty-logging": ("disable", "end"),
    "update-mappings": ("enable", "after"),
    "adjust-mappings": ("disable", "after"),
}


def normalise_name(name: str) -> str:
    """``"Dirty memory"`` -> ``"dirty-memory"``; ``KVM_CREATE_MAPPINGS`` -> ``create-mappings``."""
    name = str(name).strip()
    if name.startswith("KVM_"):
        name = name[4:]
    return re.sub(r"[\s_]+", "-", name).lower()


def make_phase_table(rows: list[dict], source: str) -> pd.DataFrame:
    """A phase table from dicts with name, iteration, start_ns, end_ns."""
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype="object" if c in ("phase", "name", "source") else "int64")
                             for c in PHASE_COLUMNS})
    frame = pd.DataFrame(rows)
    frame["name"] = frame["name"].map(normalise_name)
    frame["iteration"] = frame.get("iteration", 0)
    frame["iteration"] = frame["iteration"].fillna(0).astype(np.int64)
    frame["start_ns"] = frame["start_ns"].astype(np.int64)
    frame["end_ns"] = frame["end_ns"].astype(np.int64)
    frame["duration_ns"] = frame["end_ns"] - frame["start_ns"]
    frame["phase"] = [n if i == 0 else f"{n}#{i}" for n, i in zip(frame["name"], frame["iteration"])]
    frame["source"] = source
    return frame[PHASE_COLUMNS].sort_values("start_ns", kind="stable").reset_index(drop=True)


def workload_phases(manifest: dict) -> pd.DataFrame:
    """The built-in workload's phases from ``manifest["workload"]["phases"]`` (empty if none)."""
    phases = (manifest.get("workload") or {}).get("phases") or []
    rows = []
    for p in phases:
        if p.get("start_ns") is None or p.get("end_ns") is None:
            continue
        rows.append({"name": p.get("name", "?"), "iteration": p.get("iteration") or 0,
                     "start_ns": int(p["start_ns"]), "end_ns": int(p["end_ns"])})
    return make_phase_table(rows, "workload")


def parse_selftest_output(text: str) -> pd.DataFrame:
    """Phases (name, iteration, duration_ns) in output order from a selftest's output text.

    Recognises dirty_log_perf_test's populate / enable / per-iteration dirty, get, clear / disable
    lines and kvm_page_table_test's three stage lines. Other lines are ignored.
    """
    rows = []
    for line in text.splitlines():
        line = line.rstrip()
        if m := _SIMPLE_RE.match(line):
            rows.append((_SIMPLE[m.group(1)], 0, int(m.group(2)) * 10**9 + int(m.group(3))))
        elif m := _ITER_RE.match(line):
            rows.append((m.group(2).replace(" ", "-"), int(m.group(1)), int(m.group(3)) * 10**9 + int(m.group(4))))
        elif m := _PTT_RE.match(line):
            rows.append((normalise_name(m.group(1)), 0, int(m.group(2)) * 10**9 + int(m.group(3))))
    if not rows:
        raise AnalysisError("no dirty_log_perf_test or kvm_page_table_test phase line found in the output")
    return pd.DataFrame(rows, columns=["name", "iteration", "duration_ns"])


def dirty_log_events(ioctl: pd.DataFrame) -> pd.DataFrame:
    """The dirty-log ioctls of an ioctl frame as ``kind`` (enable/get/clear/disable), ts_ns, end_ns.

    enable/disable are KVM_SET_USER_MEMORY_REGION(2) calls that turn KVM_MEM_LOG_DIRTY_PAGES (bit 0
    of ``flags``) on/off for a slot seen before; get/clear are KVM_GET/CLEAR_DIRTY_LOG.
    """
    from tracekit.analysis.ioctls import memslot_flag_changes

    frames = []
    changes = memslot_flag_changes(ioctl)
    if len(changes):
        ch = changes[changes["change"].isin(["log-dirty-on", "log-dirty-off"])]
        frames.append(pd.DataFrame({
            "kind": np.where(ch["change"] == "log-dirty-on", "enable", "disable"),
            "ts_ns": ch["ts_ns"].to_numpy(np.int64),
            "end_ns": (ch["ts_ns"] + ch["duration_ns"]).to_numpy(np.int64)}))
    for name, kind in (("KVM_GET_DIRTY_LOG", "get"), ("KVM_CLEAR_DIRTY_LOG", "clear")):
        sel = ioctl[(ioctl["cmd_name"] == name) & ioctl["duration_ns"].notna()]
        frames.append(pd.DataFrame({"kind": kind, "ts_ns": sel["ts_ns"].to_numpy(np.int64),
                                    "end_ns": (sel["ts_ns"] + sel["duration_ns"]).to_numpy(np.int64)}))
    events = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["kind", "ts_ns", "end_ns"])
    return events.sort_values("ts_ns", kind="stable").reset_index(drop=True)


def _bursts(events: pd.DataFrame) -> dict[str, list[tuple[int, int]]]:
    """Runs of consecutive same-kind dirty-log ioctls: kind -> [(first start, last end)] in order."""
    out: dict[str, list[tuple[int, int]]] = {}
    previous = None
    for kind, start, end in zip(events["kind"], events["ts_ns"], events["end_ns"]):
        if kind != previous:
            out.setdefault(kind, []).append((int(start), int(end)))
        else:
            first, _ = out[kind][-1]
            out[kind][-1] = (first, int(end))
        previous = kind
    return out


def align_selftest_phases(parsed: pd.DataFrame, ioctl: pd.DataFrame) -> pd.DataFrame:
    """Put parsed selftest phases on the capture's CLOCK_MONOTONIC using its dirty-log ioctls.

    Rule: the k-th burst (run of consecutive calls, one per memslot with ``-x``) of each dirty-log
    ioctl kind anchors the k-th phase of the matching name. get/clear/enable/disable phases *end*
    where their burst ends; kvm_page_table_test's update/adjust stages *start* where the enable /
    disable burst ends; a phase without an anchor (populate, dirty-memory, create-mappings) ends
    where the next phase starts. The start is then ``end - duration`` from the printed time. Phases
    that can be placed neither way are dropped; if none can be placed, AnalysisError.
    """
    bursts = _bursts(dirty_log_events(ioctl))
    used: dict[str, int] = {}
    placed: list[dict | None] = []
    for name, iteration, duration in zip(parsed["name"], parsed["iteration"], parsed["duration_ns"]):
        anchor = _ANCHORS.get(name)
        row = None
        if anchor:
            kind, where = anchor
            k = used.get(kind, 0)
            if k < len(bursts.get(kind, [])):
                used[kind] = k + 1
                burst_end = bursts[kind][k][1]
                if where == "end":
                    row = {"name": name, "iteration": iteration, "start_ns": burst_end - duration, "end_ns": burst_end}
                else:
                    row = {"name": name, "iteration": iteration, "start_ns": burst_end,
                           "end_ns": burst_end + duration}
        placed.append(row if row else {"name": name, "iteration": iteration, "duration": int(duration)})
    # Unanchored phases end where the next placed phase starts (walk backwards).
    next_start = None
    for row in reversed(placed):
        if "start_ns" in row:
            next_start = row["start_ns"]
        elif next_start is not None:
            row["end_ns"] = next_start
            row["start_ns"] = next_start - row.pop("duration")
            next_start = row["start_ns"]
    rows = [r for r in placed if "start_ns" in r]
    if not rows:
        raise AnalysisError("cannot align the selftest output: the capture has no dirty-log ioctls "
                            "(KVM_SET_USER_MEMORY_REGION flag changes, KVM_GET/CLEAR_DIRTY_LOG) to anchor it")
    return make_phase_table(rows, "selftest")


def capture_phases(cap: Any, selftest_output: str | None = None) -> pd.DataFrame:
    """The phases of a capture: from a selftest output text if given, else the workload record."""
    if selftest_output is not None:
        from tracekit.analysis.common import load

        ioctl = load(cap, "ioctl", ["ts_ns", "duration_ns", "cmd_name"], required=True,
                     optional_columns=["slot", "flags"])
        return align_selftest_phases(parse_selftest_output(selftest_output), ioctl)
    return workload_phases(cap.manifest)


def label_phases(ts_ns: Any, phases: pd.DataFrame) -> pd.Categorical:
    """The phase label of each timestamp as a categorical (``""`` outside every phase; where phases
    overlap, the latest-starting one wins)."""
    ts = np.asarray(ts_ns, dtype=np.int64)
    names = list(dict.fromkeys(["", *phases["phase"].tolist()])) if len(phases) else [""]
    codes = np.zeros(len(ts), np.int32)
    if len(phases) and len(ts):
        starts = phases["start_ns"].to_numpy(np.int64)
        ends = phases["end_ns"].to_numpy(np.int64)
        label_code = np.array([names.index(p) for p in phases["phase"]], np.int32)
        pos = np.searchsorted(starts, ts, side="right") - 1
        inside = pos >= 0
        inside[inside] = ts[inside] < ends[pos[inside]]
        codes[inside] = label_code[pos[inside]]
    return pd.Categorical.from_codes(codes, categories=names)


def _matching(phases: pd.DataFrame, selector: str) -> pd.DataFrame:
    sel = selector.strip()
    name, _, iteration = sel.partition("#")
    name = normalise_name(name)
    if iteration:
        return phases[(phases["name"] == name) & (phases["iteration"] == int(iteration))]
    return phases[phases["name"] == name]


def select_phase(frame: pd.DataFrame, phases: pd.DataFrame, selector: str | None,
                 ts_column: str = "ts_ns") -> pd.DataFrame:
    """Rows of ``frame`` whose ``ts_column`` falls inside a phase named by ``selector``.

    ``selector`` is a phase name (every iteration: ``dirty-memory``) or ``name#iteration``. None
    keeps every row. A name no phase has raises UsageError listing the phases there are.
    """
    if selector is None:
        return frame
    return frame[phase_mask(frame[ts_column], phases, selector)]


def phase_mask(ts_ns: Any, phases: pd.DataFrame, selector: str) -> np.ndarray:
    """True for each timestamp inside a phase named by ``selector`` (errors as :func:`select_phase`)."""
    if phases.empty:
        raise UsageError("--phase needs phases: this capture has no workload phases; pass --selftest-output FILE")
    if not re.fullmatch(r"[^#]+(#\d+)?", selector.strip()):
        raise UsageError(f"--phase {selector!r}: use NAME or NAME#ITERATION")
    chosen = _matching(phases, selector)
    if chosen.empty:
        raise UsageError(f"no phase {selector!r}; phases: {', '.join(dict.fromkeys(phases['phase']))}")
    ts = np.asarray(ts_ns, dtype=np.int64)
    keep = np.zeros(len(ts), bool)
    for start, end in zip(chosen["start_ns"], chosen["end_ns"]):
        keep |= (ts >= start) & (ts < end)
    return keep
