"""The probe families ``tracekit record`` knows, by name.

:data:`FAMILIES` maps each ``--probes`` name to its class: the tracepoint families first, in their
documented order, then the function-probe families. :func:`make_family` builds a fresh instance for
one recording (families keep decoding state); an unknown name raises
:class:`tracekit.errors.UsageError`. A new family is one more entry here.
"""

from __future__ import annotations

from tracekit.errors import UsageError
from tracekit.funcprobes.funcprobe_families import Stage2Family, TdpFamily
from tracekit.recorder.probe_family import ProbeFamily, RecordOptions
from tracekit.recorder.tracepoint_families import IoctlFamily, LockFamily, MmuFamily, WalkFamily

__all__ = ["FAMILIES", "family_names", "make_family"]

FAMILIES: dict[str, type[ProbeFamily]] = {
    "walk": WalkFamily,
    "ioctl": IoctlFamily,
    "lock": LockFamily,
    "mmu": MmuFamily,
    "stage2": Stage2Family,
    "tdp": TdpFamily,
}


def family_names() -> list[str]:
    """The family names, in :data:`FAMILIES` order."""
    return list(FAMILIES)


def make_family(name: str, options: RecordOptions | None = None) -> ProbeFamily:
    """A fresh instance of family ``name``."""
    if name not in FAMILIES:
        raise UsageError(f"unknown probe family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name](options or RecordOptions())
