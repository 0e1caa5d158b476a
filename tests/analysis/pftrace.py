"""A Perfetto protobuf trace parsed back with the ``perfetto`` package's proto definitions, summarised.

:func:`summary` reads a ``.pftrace`` as trace processor would (packets sorted by timestamp, ties in file
order; a slice end closes the innermost open slice of its track) and returns a stable summary: per track
(its path of names, ``process / thread / layer``) its kind, slices and instants counted per name, counter
values (count, sum, max); and ``problems``: events on undeclared tracks, ends without a begin, slices left
open, slices that trace processor would nest differently than they were written (partial overlaps).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent

__all__ = ["read", "summary", "track_paths", "json_summary", "event_tracks"]


def read(path: Path) -> Trace:
    return Trace.FromString(Path(path).read_bytes())


def track_paths(trace: Trace) -> dict[int, tuple[str, str]]:
    """uuid -> (kind, path of names from the process down)."""
    descriptors = {p.track_descriptor.uuid: p.track_descriptor for p in trace.packet if p.HasField("track_descriptor")}

    def name(d) -> str:
        if d.HasField("process"):
            return f"{d.process.process_name} (pid {d.process.pid})"
        if d.HasField("thread"):
            return d.thread.thread_name
        return d.name

    def kind(d) -> str:
        return "process" if d.HasField("process") else "thread" if d.HasField("thread") else \
            "counter" if d.HasField("counter") else "track"

    out = {}
    for uuid, d in descriptors.items():
        parts, seen, node = [], set(), d
        while node is not None and node.uuid not in seen:
            seen.add(node.uuid)
            parts.append(name(node))
            node = descriptors.get(node.parent_uuid) if node.parent_uuid else None
        out[uuid] = (kind(d), " / ".join(reversed(parts)))
    return out


def summary(path: Path) -> dict:
    trace = read(path)
    paths = track_paths(trace)
    tracks: dict[str, dict] = {p: {"kind": k} for k, p in paths.values()}
    problems: list[str] = []
    events = []  # (ts, file order, packet)
    written: dict[int, Counter] = defaultdict(Counter)  # per track: (name, ts, end) as written (begin + next end)
    open_begin: dict[int, tuple] = {}
    for order, packet in enumerate(trace.packet):
        if not packet.HasField("track_event"):
            continue
        e = packet.track_event
        if e.track_uuid not in paths:
            problems.append(f"event on undeclared track {e.track_uuid}")
            continue
        events.append((packet.timestamp, order, e))
        if e.type == TrackEvent.TYPE_SLICE_BEGIN:
            open_begin[e.track_uuid] = (e.name, packet.timestamp)
        elif e.type == TrackEvent.TYPE_SLICE_END and e.track_uuid in open_begin:
            name, ts = open_begin.pop(e.track_uuid)
            written[e.track_uuid][(name, ts, packet.timestamp)] += 1
    events.sort(key=lambda item: (item[0], item[1]))
    stacks: dict[int, list] = defaultdict(list)
    rebuilt: dict[int, Counter] = defaultdict(Counter)
    slices: dict[int, Counter] = defaultdict(Counter)
    instants: dict[int, Counter] = defaultdict(Counter)
    counters: dict[int, list] = defaultdict(list)
    for ts, _, e in events:
        track = e.track_uuid
        if e.type == TrackEvent.TYPE_SLICE_BEGIN:
            stacks[track].append((e.name, ts))
            slices[track][e.name] += 1
        elif e.type == TrackEvent.TYPE_SLICE_END:
            if not stacks[track]:
                problems.append(f"{paths[track][1]}: slice end at {ts} without a begin")
                continue
            name, start = stacks[track].pop()
            rebuilt[track][(name, start, ts)] += 1
        elif e.type == TrackEvent.TYPE_INSTANT:
            instants[track][e.name] += 1
        elif e.type == TrackEvent.TYPE_COUNTER:
            counters[track].append(e.counter_value)
    for track, stack in stacks.items():
        if stack:
            problems.append(f"{paths[track][1]}: {len(stack)} slices left open")
    for track in set(written) | set(rebuilt):
        if written[track] != rebuilt[track]:
            wrong = sum((written[track] - rebuilt[track]).values())
            problems.append(f"{paths[track][1]}: {wrong} slices would be nested otherwise than written")
    for track, (_, name) in paths.items():
        entry = tracks[name]
        if slices[track]:
            entry["slices"] = dict(sorted(slices[track].items()))
        if instants[track]:
            entry["instants"] = dict(sorted(instants[track].items()))
        if counters[track]:
            values = counters[track]
            entry["counter"] = {"values": len(values), "sum": sum(values), "max": max(values)}
    return {"tracks": dict(sorted(tracks.items())), "problems": problems}


def event_tracks(summary_: dict) -> dict:
    """The tracks of a :func:`summary` that hold events, without their kinds: what a JSON trace can hold."""
    return {path: {k: v for k, v in track.items() if k != "kind"} for path, track in summary_["tracks"].items()
            if set(track) - {"kind"}}


def json_summary(path: Path) -> dict:
    """A Trace Event Format export summarised as :func:`event_tracks` of the protobuf's summary: each layer
    or phase pseudo-thread (``vCPU 0 (tid 5): guest walks``, tid from ``JSON_TRACK_TID``) back under its
    thread or group (``... / vCPU 0 (tid 5) / guest walks``), counters under their process."""
    from tracekit.analysis.perfetto import JSON_TRACK_TID

    events = json.loads(Path(path).read_text())["traceEvents"]
    processes = {e["pid"]: f"{e['args']['name']} (pid {e['pid']})" for e in events
                 if e["ph"] == "M" and e["name"] == "process_name"}
    threads = {}
    for e in events:
        if e["ph"] == "M" and e["name"] == "thread_name":
            name = e["args"]["name"]
            parts = name.split(": ", 1) if e["tid"] >= JSON_TRACK_TID else [name]
            threads[(e["pid"], e["tid"])] = " / ".join([processes[e["pid"]], *parts])
    out: dict[str, dict] = defaultdict(dict)
    for e in events:
        if e["ph"] in ("X", "i"):
            kind = out[threads[(e["pid"], e["tid"])]].setdefault("slices" if e["ph"] == "X" else "instants", Counter())
            kind[e["name"]] += 1
        elif e["ph"] == "C":
            counter = out[f"{processes[e['pid']]} / {e['name']}"].setdefault("counter", {"values": 0, "sum": 0, "max": None})
            rate = e["args"]["rate"]
            counter["values"] += 1
            counter["sum"] += rate
            counter["max"] = rate if counter["max"] is None else max(counter["max"], rate)
    return {path: {k: (dict(sorted(v.items())) if isinstance(v, Counter) else v) for k, v in track.items()}
            for path, track in sorted(out.items())}
