"""The probe-family interface of the recorder.

A probe family is a :class:`ProbeFamily` subclass, made fresh for each recording (it may keep
decoding state between batches). It names the capture tables it writes and the tracepoints or kernel
functions it uses, checks each probe on a :class:`tracekit.host.Host` (with the reason when absent),
and implements the bcc backend (BPF source, rings, decode, counters) and optionally the tracefs
backend (dynamic events, decode of raw events). docs/recorder.md has a table of every member; the
families ``tracekit record`` knows are listed in :mod:`tracekit.recorder.registry`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tracekit.host import Host
from tracekit.probes import PROBES_DIR
from tracekit.schema import TK_BATCH_EVENTS

__all__ = [
    "ProbeStatus",
    "RingSpec",
    "RecordOptions",
    "ProbeFamily",
    "common_arrays",
]

@dataclass(frozen=True)
class ProbeStatus:
    """One probe (a tracepoint ``system:event`` or a function) and whether it can attach here."""

    probe: str
    available: bool
    reason: str = ""


@dataclass(frozen=True)
class RingSpec:
    """A BPF ring buffer a family streams through: map name, record dtype, size in pages."""

    map_name: str
    dtype: np.dtype
    pages: int


@dataclass
class RecordOptions:
    """What the user asked that changes what families record."""

    stream_ioctls: tuple[int, ...] = ()      # commands to stream even if aggregated by default
    aggregate_ioctls: tuple[int, ...] = (0xAE80,)  # KVM_RUN by default
    ring_pages: dict[str, int] = field(default_factory=dict)  # per ring-map override
    tracefs_buffer_kb: int = 32768  # the tracefs instance's ring buffer, per CPU
    batch_events: int = TK_BATCH_EVENTS  # events per in-kernel batch (walk, mmu), a power of 2


def common_arrays(header: np.ndarray) -> dict[str, np.ndarray]:
    """The common columns from a ``tk_header`` array (``ts_ns``, ``cpu``, ``pid``, ``tid``)."""
    return {
        "ts_ns": header["ts_ns"].astype(np.int64),
        "cpu": header["cpu"].astype(np.int32),
        "pid": header["pid"].astype(np.int32),
        "tid": header["tid"].astype(np.int32),
    }


class ProbeFamily(abc.ABC):
    """One probe family (see the module docstring for the contract of each member)."""

    name: str = ""
    description: str = ""
    tracepoints: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    #: Tracepoints without which the family cannot record at all (others are used where present).
    required: tuple[str, ...] = ()
    #: Fields each tracepoint must have for the family to read it (``system:event`` -> names).
    tracepoint_fields: dict[str, tuple[str, ...]] = {}
    #: Tracepoints whose BPF program reads no clock: its events carry the time of an earlier event
    #: of the same thread (bcc backend; every other program reads ``bpf_ktime_get_ns()`` once per hit).
    untimed: tuple[str, ...] = ()
    #: Tracepoints that continue an operation an earlier event of the thread opened, with no event of
    #: their own to end it (a walk's elements): recorded after the window closes until the thread's
    #: operation is over, so the window never cuts one short (the bcc programs do it in the kernel).
    continuations: tuple[str, ...] = ()
    #: tracefs: when the window closed (CLOCK_MONOTONIC ns), set by the backend for families with
    #: ``continuations``, whose decoders then drop the operations that start after it.
    window_stop_ns: int | None = None

    def __init__(self, options: RecordOptions | None = None):
        self.options = options or RecordOptions()

    # -- what it writes and needs --------------------------------------------------------------------
    @abc.abstractmethod
    def tables(self) -> dict[str, pa.Schema]:
        """Capture families (tables) this probe family writes, with their schemas."""

    def check(self, host: Host) -> list[ProbeStatus]:
        """Availability of each tracepoint: present with every field ``fields_used`` names."""
        out = []
        for tp in self.tracepoints:
            fields = host.tracepoint_fields(tp)
            if fields is None:
                out.append(ProbeStatus(tp, False, f"tracepoint {tp} is not in this kernel"))
                continue
            missing = sorted(set(self.fields_used(tp)) - fields)
            if missing:
                out.append(ProbeStatus(tp, False, f"tracepoint {tp} lacks field(s) {', '.join(missing)}"))
            else:
                out.append(ProbeStatus(tp, True))
        return out

    def fields_used(self, tracepoint: str) -> tuple[str, ...]:
        """Tracepoint fields the family reads (checked against the format file)."""
        return self.tracepoint_fields.get(tracepoint, ())

    # -- bcc backend ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def bpf_source(self) -> str:
        """BPF C text (bcc dialect); may ``#include`` files of :meth:`include_dirs`."""

    def include_dirs(self) -> list[Path]:
        return [PROBES_DIR]

    def cflags(self, available: list[ProbeStatus], target_tgid: int) -> list[str]:
        """Compiler defines for this family (the target tgid is added by the recorder)."""
        return []

    @abc.abstractmethod
    def rings(self) -> list[RingSpec]:
        """Ring buffers to drain."""

    @abc.abstractmethod
    def decode(self, map_name: str, records: np.ndarray) -> dict[str, pa.Table]:
        """Arrow tables (keyed by capture family) for one batch of ring records."""

    def lost_maps(self) -> dict[str, tuple[str, ...]]:
        """Per-CPU array maps of reserve failures: map name -> probe name of each index."""
        return {}

    def staging_maps(self) -> dict[str, str]:
        """Per-CPU array maps of batches staged in the kernel: map name -> the ring map whose records
        (dtype) they hold. Read after the probes are detached; partial batches are decoded too."""
        return {}

    def failure_maps(self) -> dict[str, tuple[str, str, tuple[str, ...]]]:
        """Diagnostics of failed ring outputs: failures map -> (its counter map, ring map, probe name of
        each index)."""
        return {}

    def finish(self, bpf: Any, stop_ns: int) -> dict[str, pa.Table]:
        """Tables built from BPF maps when the recording ends."""
        return {}

    def attach_bcc(self, bpf: Any, available: list[ProbeStatus]) -> list[str]:
        """Attach what does not attach on load (kprobes) after the program is loaded; return the
        probes attached. Tracepoint programs attach on load: the default attaches nothing."""
        return []

    def detach_bcc(self, bpf: Any) -> None:
        """Detach what :meth:`attach_bcc` attached (the recorder keeps draining meanwhile)."""

    def manifest_notes(self) -> dict[str, Any]:
        """Extra facts for the manifest (counters kept outside the rings, options)."""
        return {}

    def open_in_flight(self, calls: list, start_ns: int) -> None:
        """The targets' threads /proc showed blocked in a KVM ioctl as the window opened at ``start_ns``
        (:class:`tracekit.recorder.inflight.BlockedCall`); a family that pairs calls completes them."""

    def partial_counts(self) -> dict[str, int]:
        """Operations cut by the recording window, known once the recording ended (after ``finish``):
        name -> count (manifest ``partial``; see docs/recorder.md for each name)."""
        return {}

    # -- tracefs backend -----------------------------------------------------------------------------
    def supports_tracefs(self) -> bool:
        return type(self).decode_tracefs is not ProbeFamily.decode_tracefs

    def decode_tracefs(self, events: dict[str, np.ndarray]) -> dict[str, pa.Table]:
        """Arrow tables from raw tracefs events: ``system:event`` -> array with the format's fields
        plus ``ts_ns``, ``cpu`` and ``common_pid``; events of one batch, any order."""
        raise NotImplementedError

    def finish_tracefs(self, stop_ns: int) -> dict[str, pa.Table]:
        return {}

    def tracefs_prepare(self, tracefs: Path, available: list[ProbeStatus]) -> list[str]:
        """Create dynamic events this family needs (e.g. ``kprobe_events`` lines) before the recorder
        enables events in its instance; return their ``system:event`` names. Tracepoint families
        create nothing: their available tracepoints are enabled as they are."""
        return [s.probe for s in available if s.available and ":" in s.probe]

    def tracefs_cleanup(self, tracefs: Path) -> None:
        """Remove what :meth:`tracefs_prepare` created (called on every exit path)."""
