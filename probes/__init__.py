"""BPF sources of tracekit's probe families (installed as ``tracekit.probes``).

:data:`PROBES_DIR` holds every ``<family>.bpf.c`` and the headers they include (the compiler's
``-I``); an unknown family is a :class:`tracekit.errors.ProbeLoadError`.
"""

from __future__ import annotations

from pathlib import Path

from tracekit.errors import ProbeLoadError

__all__ = ["PROBES_DIR", "FAMILIES", "source_path", "source_text"]

PROBES_DIR = Path(__file__).resolve().parent

#: Families with a BPF source here (top: the in-kernel counters of `tracekit top`).
FAMILIES = ("walk", "ioctl", "lock", "mmu", "top")


def source_path(family: str) -> Path:
    """Path of the BPF C source of ``family``."""
    path = PROBES_DIR / f"{family}.bpf.c"
    if family not in FAMILIES or not path.is_file():
        raise ProbeLoadError(f"no BPF source for probe family {family!r} (known: {', '.join(FAMILIES)})")
    return path


def source_text(family: str) -> str:
    """The BPF C source of ``family``."""
    return source_path(family).read_text()
