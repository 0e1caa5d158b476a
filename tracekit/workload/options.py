"""Options of ``tracekit workload dirty-log`` and their validation.

:class:`DirtyLogOptions` holds one run's settings, with the defaults of the embedded workload (1 vCPU,
64 MiB per vCPU, 4 iterations, 2 MiB guest pages, manual clear with initially-set where offered);
:meth:`DirtyLogOptions.validate` raises a one-line :class:`tracekit.errors.WorkloadError` naming the
option (host checks happen when the run starts). :func:`parse_size` reads ``dirty_log_perf_test``-style
sizes (powers of 1024) and :func:`parse_page_size` guest page sizes. Sizes are bytes. Standard library
only.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from tracekit.errors import WorkloadError
from tracekit.workload.backing import BACKING_SOURCES

__all__ = [
    "DirtyLogOptions",
    "LOG_MODES",
    "parse_size",
    "parse_page_size",
    "format_size",
    "PAGE_SIZE_NAMES",
]

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

#: ``clear``: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 + GET + CLEAR; ``get``: legacy GET that also
#: re-protects (selftest ``-g``); ``ring``: per-vCPU dirty rings + KVM_RESET_DIRTY_RINGS.
LOG_MODES = ("clear", "get", "ring")
PAGE_SIZE_NAMES = {"4k": 4 * KIB, "2m": 2 * MIB, "1g": 1 * GIB}
_SIZE = re.compile(r"^([0-9]+)([kmgt]?)b?$", re.IGNORECASE)
_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}
#: Each memslot must hold a multiple of 64 pages (KVM_CLEAR_DIRTY_LOG works in 64-page words).
SLOT_GRANULE = 64 * 4 * KIB
MAX_VCPUS = 512
#: A dirty ring is at least one 4 KiB page of 16-byte entries.
MIN_RING_ENTRIES = 256
MAX_ITERATIONS = 100_000


def parse_size(text: str) -> int:
    """``'64M'`` -> 67108864; WorkloadError for anything else than ``[0-9]+[kmgt]?b?``."""
    match = _SIZE.match(text.strip())
    if not match:
        raise WorkloadError(f"bad size {text!r}: use a number with an optional k, m, g or t suffix (e.g. 64M)")
    return int(match.group(1)) << _SHIFT[match.group(2).lower()]


def parse_page_size(text: str) -> int:
    """``'2m'`` -> 2097152; WorkloadError unless 4k, 2m or 1g."""
    try:
        return PAGE_SIZE_NAMES[text.strip().lower().removesuffix("b")]
    except KeyError:
        raise WorkloadError(f"bad guest page size {text!r}: use 4k, 2m or 1g") from None


def format_size(size: int) -> str:
    """Bytes -> the largest exact unit (``'64M'``, ``'1G'``, ``'12288'``)."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if size and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


@dataclass
class DirtyLogOptions:
    """One run of the dirty-log workload (see the module contract for the defaults)."""

    vcpus: int = 1
    bytes_per_vcpu: int = 64 * MIB
    iterations: int = 4
    backing: str = "anonymous"
    write_percent: int = 100
    random_order: bool = False
    seed: int = 1
    log_mode: str | None = None
    initially_set: bool = True
    memslots: int = 1
    guest_page_size: int = 2 * MIB
    ring_entries: int | None = None
    eager_split_chunk: int | None = None
    #: wall-time limit of one pass, s (None: 120 s + 60 s per GiB); an emulated guest on a loaded host needs more
    pass_timeout_s: float | None = None

    @property
    def total_bytes(self) -> int:
        return self.vcpus * self.bytes_per_vcpu

    def validate(self) -> None:
        """Raise WorkloadError for the first impossible setting."""
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise WorkloadError(f"-v/--vcpus must be between 1 and {MAX_VCPUS}, got {self.vcpus}")
        if self.bytes_per_vcpu <= 0 or self.bytes_per_vcpu % (4 * KIB):
            raise WorkloadError(f"-b/--bytes-per-vcpu must be a positive multiple of 4K, got {self.bytes_per_vcpu}")
        if not 1 <= self.iterations <= MAX_ITERATIONS:
            raise WorkloadError(f"-i/--iterations must be between 1 and {MAX_ITERATIONS}, got {self.iterations}")
        if self.backing not in BACKING_SOURCES:
            raise WorkloadError(f"-s/--backing {self.backing!r} is unknown (choose from {', '.join(BACKING_SOURCES)})")
        if not 0 <= self.write_percent <= 100:
            raise WorkloadError(f"-w/--write-percent must be between 0 and 100, got {self.write_percent}")
        if self.seed < 0:
            raise WorkloadError(f"-r/--seed must not be negative, got {self.seed}")
        if self.log_mode is not None and self.log_mode not in LOG_MODES:
            raise WorkloadError(f"--log-mode {self.log_mode!r} is unknown (choose from {', '.join(LOG_MODES)})")
        if self.guest_page_size not in PAGE_SIZE_NAMES.values():
            raise WorkloadError(f"--guest-page-size must be 4k, 2m or 1g, got {self.guest_page_size}")
        if self.pass_timeout_s is not None and not self.pass_timeout_s > 0:
            raise WorkloadError(f"the pass time limit must be positive, got {self.pass_timeout_s}")
        if self.ring_entries is not None:
            if self.log_mode != "ring":
                raise WorkloadError("--ring-entries applies to --log-mode ring")
            if self.ring_entries < MIN_RING_ENTRIES or self.ring_entries & (self.ring_entries - 1):
                raise WorkloadError(
                    f"--ring-entries must be a power of two of at least {MIN_RING_ENTRIES}, got {self.ring_entries}"
                )
        chunk = self.eager_split_chunk
        if chunk is not None and (chunk < 0 or (chunk and (chunk < 4 * KIB or chunk & (chunk - 1)))):
            raise WorkloadError(
                f"--eager-split-chunk must be 0 (off) or a power of two of at least 4K, got {format_size(chunk)}"
            )
        if self.memslots < 1:
            raise WorkloadError(f"-x/--memslots must be at least 1, got {self.memslots}")
        total = self.total_bytes
        if total % self.guest_page_size:
            raise WorkloadError(
                f"the test region ({format_size(total)} = vCPUs x -b) is not a multiple of the "
                f"{format_size(self.guest_page_size)} guest page size: raise -b or choose a smaller --guest-page-size"
            )
        granule = max(SLOT_GRANULE, BACKING_SOURCES[self.backing])
        if total % self.memslots or (total // self.memslots) % granule:
            raise WorkloadError(
                f"-x {self.memslots} does not split the {format_size(total)} test region into memslots that are "
                f"multiples of {format_size(granule)}"
            )

    def as_dict(self) -> dict:
        return asdict(self)
