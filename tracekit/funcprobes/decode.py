"""One decoded tracefs event as a Python record, for the labs' per-step counts and lock waits.

Contract
--------
:class:`ProbeEvent` holds one event of a lab guest's raw trace: ``ts`` (ns, the guest's
CLOCK_MONOTONIC), ``cpu``, ``tid`` (the thread, ``common_pid``), the tracefs event ``name`` (such as
``stage2_split`` or ``stage2_split_ret``) and its integer fields. :mod:`tracekit.lab.results` builds
them for the scenario step counts and the lock-contention rows only: the function-probe events become
capture tables through the one decoder of the recorder,
:meth:`tracekit.funcprobes.family.FunctionProbeFamily.decode_recording` (numpy over whole arrays).
Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ProbeEvent"]


@dataclass
class ProbeEvent:
    ts: int
    cpu: int
    tid: int
    name: str
    fields: dict
