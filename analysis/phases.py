"""Phases of a run on CLOCK_MONOTONIC, and cutting any event frame by phase.

A phase table has one row per phase (``phase``, ``name``, ``iteration``, ``start_ns``, ``end_ns``,
``duration_ns``, ``source``), from the workload's record, a lab run's steps or a selftest's output
aligned on the capture's dirty-log ioctls; docs/analysis.md ("Phases") gives the rules.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from tracekit.analysis.common import load
from tracekit.analysis.ioctls import memslot_flag_changes
from tracekit.errors import AnalysisError, UsageError

__all__ = [
    "PHASE_COLUMNS",
    "normalise_name",
    "matching_phases",
    "PhaseCodes",
    "make_phase_table",
    "workload_phases",
    "lab_phases",
    "parse_selftest_output",
    "align_selftest_phases",
    "anchor_bursts",
    "dirty_log_events",
    "iteration_bursts",
    "capture_phases",
    "command_output_text",
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


def lab_phases(manifest: dict) -> pd.DataFrame:
    """The steps of a lab run as phases (source ``lab``; empty when the capture is not a lab run's)."""
    steps = (manifest.get("lab") or {}).get("steps") or []
    scenario_steps = ((manifest.get("workload") or {}).get("scenario") or {}).get("steps") or []
    rows = []
    for step in steps if isinstance(steps, list) else []:
        if not isinstance(step, dict) or not all(isinstance(step.get(k), int) and 0 <= step[k] < 1 << 63
                                                 for k in ("begin_ns", "end_ns")):
            continue
        name, iteration = str(step.get("op", "?")), 0
        index = step.get("index")
        if name == "log" and isinstance(index, int) and index < len(scenario_steps):
            arguments = scenario_steps[index][1:]
            name = "enable-dirty-logging" if arguments and arguments[0] else "disable-dirty-logging"
        numbered = re.fullmatch(r"(.*\D)_(\d+)", name)
        if numbered:
            name, iteration = numbered.group(1), int(numbered.group(2))
        rows.append({"name": name, "iteration": iteration, "start_ns": int(step["begin_ns"]),
                     "end_ns": int(step["end_ns"])})
    repeated = Counter(normalise_name(row["name"]) for row in rows if not row["iteration"])
    seen: Counter = Counter()
    for row in rows:
        name = normalise_name(row["name"])
        if not row["iteration"] and repeated[name] > 1:
            seen[name] += 1
            row["iteration"] = seen[name]
    return make_phase_table(rows, "lab")


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
    """The dirty-log ioctls of an ioctl frame as ``kind`` (enable/get/clear/disable), ts_ns, end_ns, slot.

    enable/disable are KVM_SET_USER_MEMORY_REGION(2) calls that turn KVM_MEM_LOG_DIRTY_PAGES (bit 0
    of ``flags``) on/off for a slot seen before; get/clear are KVM_GET/CLEAR_DIRTY_LOG. ``slot`` is -1
    where the capture does not know it (tracefs backend). Failed calls are left out.
    """
    frames = []
    for name, kind in (("KVM_GET_DIRTY_LOG", "get"), ("KVM_CLEAR_DIRTY_LOG", "clear")):
        sel = ioctl[(ioctl["cmd_name"] == name) & ioctl["duration_ns"].notna()]
        if "ret" in sel.columns:
            sel = sel[sel["ret"].fillna(0) >= 0]
        slots = (sel["slot"].fillna(-1).to_numpy(np.int64) if "slot" in sel.columns
                 else np.full(len(sel), -1, np.int64))
        frames.append(pd.DataFrame({"kind": kind, "ts_ns": sel["ts_ns"].to_numpy(np.int64),
                                    "end_ns": (sel["ts_ns"] + sel["duration_ns"]).to_numpy(np.int64),
                                    "slot": slots}))
    logged = pd.concat(frames, ignore_index=True)
    changes = memslot_flag_changes(ioctl)
    if len(changes):
        # A slot first seen (attached mid-run) without KVM_MEM_LOG_DIRTY_PAGES after dirty-log calls on it
        # was logging until then: that call turned logging off.
        first_log = logged[logged["slot"] >= 0].groupby("slot")["ts_ns"].min()
        seen_logging = changes["slot"].map(first_log).lt(changes["ts_ns"])
        off = (changes["change"] == "create") & ((changes["flags"] & 1) == 0) & seen_logging
        ch = changes[changes["change"].isin(["log-dirty-on", "log-dirty-off"]) | off]
        frames.append(pd.DataFrame({
            "kind": np.where(ch["change"] == "log-dirty-on", "enable", "disable"),
            "ts_ns": ch["ts_ns"].to_numpy(np.int64),
            "end_ns": (ch["ts_ns"] + ch["duration_ns"]).to_numpy(np.int64),
            "slot": ch["slot"].to_numpy(np.int64)}))
    events = pd.concat(frames, ignore_index=True)
    return events.sort_values("ts_ns", kind="stable").reset_index(drop=True)


def iteration_bursts(events: pd.DataFrame, expected: dict[str, int] | None = None) -> dict[str, list[tuple[int, int]]]:
    """The calls of each dirty-log kind grouped into one burst per iteration: kind -> [(first start, last end)].

    A selftest issues each kind once per memslot per iteration (``-x`` slots), so a burst ends where
    another kind's call comes between, or where a slot repeats (``-g``: the iterations' GETs are
    adjacent, one slot each). Where slots are unknown (-1) and a kind's calls are a multiple of the
    ``expected`` number of bursts, they are split into equal consecutive runs instead.
    """
    out: dict[str, list[tuple[int, int]]] = {}
    members: dict[str, list[list[int]]] = {}
    previous = None
    slots_known = bool(len(events)) and bool((events["slot"] >= 0).all())
    rows = zip(events["kind"], events["ts_ns"], events["end_ns"], events["slot"])
    for kind, start, end, slot in rows:
        runs = members.setdefault(kind, [])
        if kind != previous or (slots_known and slot in runs[-1][2:]):
            runs.append([int(start), int(end), int(slot)])
        else:
            runs[-1][1] = int(end)
            runs[-1].append(int(slot))
        previous = kind
    for kind, runs in members.items():
        calls = events[events["kind"] == kind]
        want = (expected or {}).get(kind, 0)
        if not slots_known and want and len(runs) < want and len(calls) % want == 0:
            per = len(calls) // want
            starts, ends = calls["ts_ns"].to_numpy(np.int64), calls["end_ns"].to_numpy(np.int64)
            out[kind] = [(int(starts[i]), int(ends[i + per - 1])) for i in range(0, len(calls), per)]
        else:
            out[kind] = [(run[0], run[1]) for run in runs]
    return out


#: What each anchored kind is called in a one-line misfit message.
_KIND_TEXT = {"enable": ("enable", "dirty-logging enables"), "get": ("get-dirty-log", "KVM_GET_DIRTY_LOG bursts"),
              "clear": ("clear-dirty-log", "KVM_CLEAR_DIRTY_LOG bursts"),
              "disable": ("disable", "dirty-logging disables")}
#: How far (ns) a printed time may pass the room the capture's calls leave it (the clocks are one: none needed).
_FIT_SLACK_NS = 1_000


def align_selftest_phases(parsed: pd.DataFrame, ioctl: pd.DataFrame) -> pd.DataFrame:
    """Put parsed selftest phases on the capture's CLOCK_MONOTONIC using its dirty-log ioctls.

    Rule: the dirty-log ioctls of each kind are grouped into one burst per iteration
    (:func:`iteration_bursts`); the k-th burst of a kind anchors the k-th phase of the matching
    name. get/clear/enable/disable phases *end* where their burst ends; kvm_page_table_test's
    update/adjust stages *start* where the enable / disable burst ends; a phase without an anchor
    (populate, dirty-memory, create-mappings) ends where the phase printed after it starts. The start
    is then ``end - duration`` from the printed time, but never before the end of the phase printed
    before it (the printed time also holds the moments between the selftest's clock read and the
    call, which a loaded host can stretch).

    The output must fit the capture: as many bursts as printed phases of each kind. A capture that
    holds fewer iterations than the output is aligned from the end when it lacks the enable but has
    the disable (attached mid-run: it holds the last iterations) and from the start when it has the
    enable but not the disable (stopped early); the table's ``attrs["note"]`` then says which
    iterations it holds. Anything else (more bursts than printed phases, a whole run with fewer
    iterations, a printed time longer than the room between the calls around its phase or shorter than its
    own calls) raises AnalysisError with one line: the output is not this capture's.
    """
    names, iterations = parsed["name"].tolist(), parsed["iteration"].tolist()
    spans, note = anchor_bursts(parsed, ioctl)
    _check_fit(names, iterations, parsed["duration_ns"].tolist(), spans)
    placed: list[dict | None] = []
    for name, iteration, duration, span in zip(names, iterations, parsed["duration_ns"].tolist(), spans):
        if name not in _ANCHORS:
            placed.append({"name": name, "iteration": iteration, "duration": int(duration)})
        elif span is None:
            placed.append(None)  # its burst is not in the capture
        else:
            start = span[1] - int(duration) if _ANCHORS[name][1] == "end" else span[1]
            placed.append({"name": name, "iteration": iteration, "start_ns": start, "end_ns": start + int(duration)})
    # Unanchored phases end where the phase printed after them starts (walk backwards).
    next_start = None
    for row in reversed(placed):
        if row is None:
            next_start = None
        elif "start_ns" in row:
            next_start = row["start_ns"]
        elif next_start is not None:
            row["end_ns"] = next_start
            row["start_ns"] = next_start - row.pop("duration")
            next_start = row["start_ns"]
    rows = [r for r in placed if r is not None and "start_ns" in r]
    previous_end = None
    for row in rows:  # the selftest reads its clock after a call returns: a phase starts after the one before ends
        if previous_end is not None and row["start_ns"] < previous_end:
            row["start_ns"] = min(previous_end, row["end_ns"])
        previous_end = row["end_ns"]
    table = make_phase_table(rows, "selftest")
    table.attrs["note"] = note
    return table


def anchor_bursts(parsed: pd.DataFrame, ioctl: pd.DataFrame) -> tuple[list[tuple[int, int] | None], str | None]:
    """Each printed phase's anchoring burst in the capture as (first call's start, last call's end), None
    for a phase without one (populate, dirty memory) or whose burst the capture lacks; and the fit note.
    Errors as :func:`align_selftest_phases`."""
    names, iterations = parsed["name"].tolist(), parsed["iteration"].tolist()
    printed: dict[str, int] = {}
    for name in names:
        if name in _ANCHORS:
            printed[_ANCHORS[name][0]] = printed.get(_ANCHORS[name][0], 0) + 1
    bursts = iteration_bursts(dirty_log_events(ioctl), printed)
    if not any(bursts.get(kind) for kind in printed):
        raise AnalysisError("cannot align the selftest output: the capture has no dirty-log ioctls "
                            "(KVM_SET_USER_MEMORY_REGION flag changes, KVM_GET/CLEAR_DIRTY_LOG) to anchor it")
    skip, note = _fit(printed, {kind: len(bursts.get(kind, [])) for kind in printed}, max(iterations, default=0))
    used: dict[str, int] = {}
    spans: list[tuple[int, int] | None] = []
    for name in names:
        kind = _ANCHORS[name][0] if name in _ANCHORS else None
        if kind is None:
            spans.append(None)
            continue
        k = used.get(kind, 0)
        used[kind] = k + 1
        k -= skip.get(kind, 0)
        spans.append(bursts[kind][k] if 0 <= k < len(bursts.get(kind, [])) else None)
    return spans, note


def _fit(printed: dict[str, int], found: dict[str, int], iterations: int) -> tuple[dict[str, int], str | None]:
    """How many printed phases of each kind to skip before the first burst, and the note to show;
    AnalysisError when the output cannot be this capture's (see :func:`align_selftest_phases`).

    An enable/disable the capture lacks altogether only leaves its phase unplaced (recorded after it,
    or by the tracefs backend, which cannot read memslot flags)."""
    misfit = {kind: (n, found[kind]) for kind, n in printed.items()
              if found[kind] != n and not (kind in ("enable", "disable") and found[kind] == 0)}
    if not misfit:
        return {}, None
    counts = ", ".join(f"it prints {n} {_KIND_TEXT[kind][0]} phases, the capture holds {got} {_KIND_TEXT[kind][1]}"
                       for kind, (n, got) in misfit.items())
    has_enable, has_disable = found.get("enable", 0) > 0, found.get("disable", 0) > 0
    fewer = all(kind in ("get", "clear") and got < n for kind, (n, got) in misfit.items())
    if not fewer or has_enable == has_disable:
        why = ("" if not fewer else "the capture holds the whole run" if has_enable
               else "the capture holds neither the start nor the end of the run")
        raise AnalysisError(f"the selftest output does not fit this capture: {counts}"
                            + (f" ({why})" if why else "") + "; is it the output of another run?")
    held = min(got for _, got in misfit.values())
    if has_disable:  # attached mid-run: the capture holds the last iterations
        skip = {kind: n - found[kind] for kind, n in printed.items() if kind in ("get", "clear")}
        return skip, (f"the capture holds iterations {iterations - held + 1}-{iterations} of the {iterations} the "
                      "selftest printed (recording attached mid-run): phases aligned from the end")
    return {}, (f"the capture holds iterations 1-{held} of the {iterations} the selftest printed "
                "(recording stopped early): phases aligned from the start")


def _check_fit(names: list[str], iterations: list[int], durations: list[int],
               spans: list[tuple[int, int] | None]) -> None:
    """AnalysisError when a printed time cannot be this capture's: longer than the room between the dirty-log
    calls around its phase, or shorter than its own calls (the selftest reads its clock on the thread that
    makes them, before and after: a printed time holds its calls and lies between its neighbours' calls)."""
    later: list[int | None] = [None] * len(names)
    first = None
    for i in range(len(names) - 1, -1, -1):
        later[i] = first
        if spans[i] is not None:
            first = spans[i][0] if first is None else min(first, spans[i][0])
    earlier = None
    for i, (name, duration, span) in enumerate(zip(names, durations, spans)):
        label = name + (f"#{iterations[i]}" if iterations[i] else "")
        low = earlier
        if span is not None:
            if _ANCHORS[name][1] == "after":  # the stage starts once its call has returned
                low = span[1] if low is None else max(low, span[1])
            elif duration + _FIT_SLACK_NS < span[1] - span[0]:
                raise AnalysisError(f"the selftest output does not fit this capture: {label} ({duration / 1e6:.3f} ms "
                                    f"printed) is shorter than its calls ({(span[1] - span[0]) / 1e6:.3f} ms); "
                                    "is it the output of another run?")
            earlier = span[1] if earlier is None else max(earlier, span[1])
        if low is not None and later[i] is not None and duration > later[i] - low + _FIT_SLACK_NS:
            raise AnalysisError(f"the selftest output does not fit this capture: {label} ({duration / 1e6:.3f} ms "
                                f"printed) is longer than the {(later[i] - low) / 1e6:.3f} ms between the capture's "
                                "calls around it; is it the output of another run?")


def capture_phases(cap: Any, selftest_output: str | None = None) -> pd.DataFrame:
    """The phases of a capture: from a selftest output text if given, else the workload record, else the
    recorded command's own output (``command_output``) when it prints selftest phase lines."""
    workload = workload_phases(cap.manifest)
    if selftest_output is None and not workload.empty:
        return workload
    text = selftest_output if selftest_output is not None else command_output_text(cap.manifest)
    if selftest_output is None and not any(_line_has_phase(line) for line in text.splitlines()):
        return workload
    ioctl = load(cap, "ioctl", ["ts_ns", "duration_ns", "cmd_name"], required=True,
                 optional_columns=["slot", "flags", "ret", "memory_size"])
    table = align_selftest_phases(parse_selftest_output(text), ioctl)
    table.attrs["origin"] = "--selftest-output" if selftest_output is not None else "command output"
    return table


def command_output_text(manifest: dict) -> str:
    """The recorded command's stdout kept in the manifest (``command_output.stdout``), else ``""``."""
    record = manifest.get("command_output")
    text = record.get("stdout") if isinstance(record, dict) else None
    return text if isinstance(text, str) else ""


def _line_has_phase(line: str) -> bool:
    line = line.rstrip()
    return bool(_SIMPLE_RE.match(line) or _ITER_RE.match(line) or _PTT_RE.match(line))


class PhaseCodes:
    """Each timestamp's phase as a code into :attr:`names` (``""``, code 0, outside every phase; where
    phases overlap, the latest-starting one wins): :func:`label_phases` without the categorical, made
    once for a table and called per batch of walks."""

    def __init__(self, phases: pd.DataFrame):
        self.names = list(dict.fromkeys(["", *phases["phase"].tolist()])) if len(phases) else [""]
        index = {name: code for code, name in enumerate(self.names)}
        self._starts = phases["start_ns"].to_numpy(np.int64) if len(phases) else np.zeros(0, np.int64)
        self._ends = phases["end_ns"].to_numpy(np.int64) if len(phases) else np.zeros(0, np.int64)
        self._codes = np.array([index[p] for p in phases["phase"]] if len(phases) else [], np.int32)

    def __call__(self, ts_ns: Any) -> np.ndarray:
        """The phase code of each timestamp (int32)."""
        ts = np.asarray(ts_ns, dtype=np.int64)
        if len(self._starts) and len(ts):  # times within one phase (or between two), as mostly: one code
            first, last = int(ts.min()), int(ts.max())
            low, high = (np.searchsorted(self._starts, (first, last), side="right") - 1).tolist()
            if low == high and (low < 0 or last < self._ends[low] or first >= self._ends[low]):
                return np.full(len(ts), self._codes[low] if low >= 0 and last < self._ends[low] else 0, np.int32)
        codes = np.zeros(len(ts), np.int32)
        if len(self._starts) and len(ts):
            pos = np.searchsorted(self._starts, ts, side="right") - 1
            inside = pos >= 0
            inside[inside] = ts[inside] < self._ends[pos[inside]]
            codes[inside] = self._codes[pos[inside]]
        return codes


def label_phases(ts_ns: Any, phases: pd.DataFrame) -> pd.Categorical:
    """The phase label of each timestamp as a categorical (``""`` outside every phase; where phases
    overlap, the latest-starting one wins)."""
    codes = PhaseCodes(phases)
    return pd.Categorical.from_codes(codes(ts_ns), categories=codes.names)


def matching_phases(phases: pd.DataFrame, selector: str) -> pd.DataFrame:
    """The rows of ``phases`` that ``selector`` names (NAME: every iteration, NAME#I: one)."""
    sel = selector.strip()
    name, _, iteration = sel.partition("#")
    name = normalise_name(name)
    if iteration:
        return phases[(phases["name"] == name) & (phases["iteration"] == int(iteration))]
    return phases[phases["name"] == name]


def select_phase(frame: pd.DataFrame, phases: pd.DataFrame, selector: str | None,
                 ts_column: str = "ts_ns", duration_column: str | None = None) -> pd.DataFrame:
    """Rows of ``frame`` whose ``ts_column`` falls inside a phase named by ``selector``; with
    ``duration_column`` (an ioctl's ``duration_ns``, a lock's ``wait_ns``), rows whose interval
    ``[ts, ts + duration)`` overlaps such a phase, so a call that began before the phase (a vCPU's
    ``KVM_RUN`` for a whole dirty pass) belongs to it.

    ``selector`` is a phase name (every iteration: ``dirty-memory``) or ``name#iteration``. None
    keeps every row. A name no phase has raises UsageError listing the phases there are.
    """
    if selector is None:
        return frame
    durations = frame[duration_column] if duration_column is not None and duration_column in frame.columns else None
    return frame[phase_mask(frame[ts_column], phases, selector, durations)]


def phase_mask(ts_ns: Any, phases: pd.DataFrame, selector: str, duration_ns: Any = None) -> np.ndarray:
    """True for each timestamp (interval, with ``duration_ns``; null durations count as instants) inside
    (overlapping) a phase named by ``selector`` (errors as :func:`select_phase`)."""
    if phases.empty:
        raise UsageError("--phase needs phases: this capture has no workload phases and its command printed no "
                         "selftest phase lines; pass --selftest-output FILE")
    if not re.fullmatch(r"[^#]+(#\d+)?", selector.strip()):
        raise UsageError(f"--phase {selector!r}: use NAME or NAME#ITERATION")
    chosen = matching_phases(phases, selector)
    if chosen.empty:
        raise UsageError(f"no phase {selector!r}; phases: {', '.join(dict.fromkeys(phases['phase']))}")
    ts = np.asarray(ts_ns, dtype=np.int64)
    ends = ts + 1
    if duration_ns is not None:
        ends = ts + np.maximum(np.nan_to_num(np.asarray(duration_ns, dtype=np.float64), nan=0.0), 1).astype(np.int64)
    keep = np.zeros(len(ts), bool)
    for start, end in zip(chosen["start_ns"], chosen["end_ns"]):
        keep |= (ts < end) & (ends > start)
    return keep
