"""Export a capture as a native Perfetto trace (protobuf), or as a Chrome JSON trace.

:func:`write_perfetto` writes the :mod:`.timeline` of a capture as it is read, a batch at a time, and
returns a :class:`Written` summary; the trace's layout is in docs/perfetto.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from tracekit.analysis.timeline import COUNTER, INSTANT, SLICE, Address, Track, timeline
from tracekit.errors import CaptureFormatError, UsageError

__all__ = ["write_perfetto", "Written", "FORMATS", "PACKETS_PER_CHUNK", "JSON_TRACK_TID", "SEQUENCE_ID", "EMULATED_LABEL"]

FORMATS = ("proto", "json")
PACKETS_PER_CHUNK = 4096
#: Pseudo thread ids of the JSON format's layer tracks start here (Linux thread ids stay below 2**22).
JSON_TRACK_TID = 1 << 22
#: The label of a lab capture's processes (their durations are an emulator's); the note itself is the
#: protobuf process track's description.
EMULATED_LABEL = "emulated timings"
#: The trusted packet sequence every packet is written on.
SEQUENCE_ID = 0x746B
_INT64 = (-(1 << 63), (1 << 63) - 1)
_JSON_PHASE_ORDER = -(1 << 16)  # the phase pseudo-threads sort above every thread


class Written(NamedTuple):
    """What :func:`write_perfetto` wrote: ``tracks``, ``events`` (slices, instants, counter values) and
    ``skipped`` (events before the clock's zero, left out)."""

    tracks: int
    events: int
    skipped: int


class _ProtoWriter:
    """Tracks and events as ``TracePacket`` messages, flushed in chunks."""

    def __init__(self, out: BinaryIO):
        try:  # late: the protobuf classes cost ~0.1-0.4 s, and only this format needs them
            from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackDescriptor, TrackEvent
        except ModuleNotFoundError as error:
            raise UsageError(f"Perfetto export is not available in this installation ({error.name} is missing: "
                             "run scripts/install.sh)") from error

        self._out, self._trace_type, self._event = out, Trace, TrackEvent
        self._explicit = TrackDescriptor.ChildTracksOrdering.Value("EXPLICIT")
        self._trace = Trace()

    def _packet(self) -> Any:
        if len(self._trace.packet) >= PACKETS_PER_CHUNK:
            self.flush()
        return self._trace.packet.add()

    def flush(self) -> None:
        if len(self._trace.packet):
            self._out.write(self._trace.SerializeToString())
            self._trace = self._trace_type()

    def track(self, track: Track) -> None:
        d = self._packet().track_descriptor
        d.uuid = track.uuid
        if track.parent:
            d.parent_uuid = track.parent
        if track.kind == "process":
            d.process.pid = track.pid
            d.process.process_name = track.name
            if track.note:  # the UI shows the label beside the process's name
                d.process.process_labels.append(EMULATED_LABEL)
                d.description = track.note
        elif track.kind == "thread":
            d.thread.pid, d.thread.tid, d.thread.thread_name = track.pid, track.tid, track.name
        else:
            d.name = track.name
            if track.kind == "counter":
                d.counter.unit_name = track.unit or ""
        if track.kind in ("process", "thread", "phases"):
            d.child_ordering = self._explicit
        d.sibling_order_rank = track.order

    def event(self, event: tuple) -> None:
        kind, track, ts, dur, name, category, args = event
        packet = self._packet()
        packet.timestamp = ts
        packet.trusted_packet_sequence_id = SEQUENCE_ID
        e = packet.track_event
        e.track_uuid = track
        if kind == COUNTER:
            e.type = self._event.TYPE_COUNTER
            e.counter_value = args
            return
        e.type = self._event.TYPE_SLICE_BEGIN if kind == SLICE else self._event.TYPE_INSTANT
        e.name = name
        e.categories.append(category)
        for key, value in args.items():
            _annotate(e.debug_annotations.add(), key, value)
        if kind == SLICE:
            end = self._packet()
            end.timestamp = ts + dur
            end.trusted_packet_sequence_id = SEQUENCE_ID
            end.track_event.track_uuid = track
            end.track_event.type = self._event.TYPE_SLICE_END


def _annotate(annotation: Any, key: str, value: Any) -> None:
    annotation.name = key
    if isinstance(value, Address) and 0 <= value < 1 << 64:
        annotation.pointer_value = value
    elif isinstance(value, bool):
        annotation.bool_value = value
    elif isinstance(value, int) and _INT64[0] <= value <= _INT64[1]:
        annotation.int_value = value
    elif isinstance(value, int) and 0 <= value < 1 << 64:
        annotation.uint_value = value
    elif isinstance(value, float):
        annotation.double_value = value
    else:
        annotation.string_value = str(value)


class _JsonWriter:
    """Tracks and events as Trace Event Format lines."""

    def __init__(self, out: BinaryIO):
        self._out = out
        self._where: dict[int, tuple[int, int | None]] = {}  # uuid -> (pid, tid)
        self._names: dict[int, str] = {}
        self._orders: dict[int, int] = {}  # uuid -> thread_sort_index
        self._count = 0
        out.write(b'{"displayTimeUnit": "ns", "traceEvents": [\n')

    def _emit(self, event: dict) -> None:
        self._out.write(((",\n" if self._count else "") + json.dumps(event, separators=(",", ":"))).encode())
        self._count += 1

    def track(self, track: Track) -> None:
        self._names[track.uuid] = track.name
        if track.kind == "process":
            self._where[track.uuid] = (track.pid, None)
            self._emit({"ph": "M", "name": "process_name", "pid": track.pid, "args": {"name": track.name}})
            self._emit({"ph": "M", "name": "process_sort_index", "pid": track.pid, "args": {"sort_index": track.order}})
            if track.note:
                self._emit({"ph": "M", "name": "process_labels", "pid": track.pid, "args": {"labels": EMULATED_LABEL}})
            return
        if track.kind in ("counter", "phases"):  # a counter has no thread; the phases group holds no event
            self._where[track.uuid] = (track.pid, None)
            return
        if track.kind == "thread":
            tid, name, order = track.tid, track.name, track.order * 16
        else:
            parent = self._names.get(track.parent, "")
            tid = JSON_TRACK_TID + track.uuid
            name = f"{parent}: {track.name}"
            order = (self._orders.get(track.parent, 0) + 1 + track.order) if track.kind == "layer" else \
                _JSON_PHASE_ORDER + track.order
        self._where[track.uuid] = (track.pid, tid)
        self._orders[track.uuid] = order
        self._emit({"ph": "M", "name": "thread_name", "pid": track.pid, "tid": tid, "args": {"name": name}})
        self._emit({"ph": "M", "name": "thread_sort_index", "pid": track.pid, "tid": tid, "args": {"sort_index": order}})

    def event(self, event: tuple) -> None:
        kind, track, ts, dur, name, category, args = event
        pid, tid = self._where[track]
        if kind == COUNTER:
            self._emit({"ph": "C", "name": self._names[track], "pid": pid, "ts": _us(ts), "args": {"rate": args}})
            return
        out = {"ph": "X" if kind == SLICE else "i", "cat": category, "name": name, "pid": pid, "tid": tid,
               "ts": _us(ts)}
        if kind == SLICE:
            out["dur"] = _us(dur)
        else:
            out["s"] = "t"
        out["args"] = {k: (f"{v:#x}" if isinstance(v, Address) else v) for k, v in args.items()}
        self._emit(out)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._out.write(b"\n]}\n")


def _us(ns: int) -> float:
    return round(ns / 1000.0, 3)


def _write(cap: Any, out: BinaryIO, fmt: str) -> Written:
    writer = _ProtoWriter(out) if fmt == "proto" else _JsonWriter(out)
    line, parts = timeline(cap)
    tracks = events = 0
    for part in parts:
        if isinstance(part, Track):
            writer.track(part)
            tracks += 1
            continue
        for event in part:
            writer.event(event)
        events += len(part)
    writer.flush()
    if isinstance(writer, _JsonWriter):
        writer.close()
    return Written(tracks, events, line.skipped)


def write_perfetto(cap: Any, path: str | os.PathLike, fmt: str = "proto") -> Written:
    """Write the trace of ``cap`` to ``path`` in ``fmt`` (:data:`FORMATS`); see the module docstring."""
    if fmt not in FORMATS:
        raise UsageError(f"--format for --perfetto must be one of {', '.join(FORMATS)}, not {fmt!r}")
    target = Path(path)
    if target.is_symlink():
        raise CaptureFormatError(f"refusing to write through a symlink: {target}")
    try:
        with open(target, "wb") as out:
            return _write(cap, out, fmt)
    except OSError as error:
        raise CaptureFormatError(f"cannot write {target}: {error.strerror or error}") from error
