"""Page-table geometry: arm64 stage-2 (granule, IPA size, levels, concatenated root) and x86.

:func:`arm64_stage2` derives an :class:`Arm64Geometry` as KVM does (levels from the IPA size, start
level, concatenated root pages, entry shift and block levels per level; ``hyp_stage1=True`` for a
stage-1/hyp table, where LPA2's level -1 appears). :func:`x86_geometry` covers 4- and 5-level guest
paging and TDP (1 = 4K leaf .. 5). :func:`depth_from_root` is the project-wide normalised depth (0 at
the root). Sizes are bytes; impossible geometries raise :class:`tracekit.errors.ModelError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracekit.errors import ModelError
from tracekit.model import x86 as x86_paging

__all__ = [
    "GRANULES",
    "LAST_LEVEL",
    "Arm64Geometry",
    "X86Geometry",
    "arm64_stage2",
    "x86_geometry",
    "depth_from_root",
    "parse_size",
    "format_size",
]

#: Stage-2 granule size -> PAGE_SHIFT.
GRANULES = {4096: 12, 16384: 14, 65536: 16}
#: ``KVM_PGTABLE_LAST_LEVEL``: the arm64 page level.
LAST_LEVEL = 3
FIRST_LEVEL = -1  # KVM_PGTABLE_FIRST_LEVEL (LPA2)
IPA_MIN, IPA_MAX = 32, 52

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(text: str | int) -> int:
    """Parse ``4K``, ``2M``, ``1.5T``, ``64GiB``, ``0x40000000`` or a byte count into bytes (binary units)."""
    if isinstance(text, int):
        return text
    if text.strip().lower().startswith("0x"):
        try:
            return int(text.strip(), 16)
        except ValueError:
            raise ModelError(f"cannot read address {text!r}") from None
    s = text.strip().upper().replace("IB", "").replace(" ", "")
    if s.endswith("B") and len(s) > 1 and s[-2] in _UNITS:
        s = s[:-1]
    unit = s[-1] if s and s[-1] in _UNITS and not s[-1].isdigit() else ""
    number = s[: len(s) - len(unit)] if unit else s
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise ModelError(f"cannot read size {text!r} (use e.g. 4K, 2M, 64G, 1.5T)") from None
    if value != int(value) or value < 0:
        raise ModelError(f"size {text!r} is not a whole number of bytes")
    return int(value)


def format_size(n: int) -> str:
    """Bytes as the largest exact binary unit: 2097152 -> '2M'."""
    for unit in ("P", "T", "G", "M", "K"):
        if n and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


@dataclass(frozen=True)
class Arm64Geometry:
    """arm64 stage-2 geometry for one granule and IPA size (see the module docstring)."""

    granule: int
    ipa_bits: int
    levels: int
    start_level: int
    pgd_pages: int
    hyp_stage1: bool = False

    @property
    def page_shift(self) -> int:
        return GRANULES[self.granule]

    @property
    def bits_per_level(self) -> int:
        return self.page_shift - 3

    @property
    def entries_per_table(self) -> int:
        """``PTRS_PER_PTE``: 512, 2048 or 8192."""
        return 1 << self.bits_per_level

    @property
    def min_block_level(self) -> int:
        """``KVM_PGTABLE_MIN_BLOCK_LEVEL``: 1 for 4K, 2 for 16K and 64K."""
        return 1 if self.granule == 4096 else 2

    @property
    def block_levels(self) -> tuple[int, ...]:
        """Levels that may hold a block (``kvm_level_supports_block_mapping``), never the root-most
        level above MIN_BLOCK_LEVEL, never level 3."""
        return tuple(level for level in range(max(self.min_block_level, self.start_level), LAST_LEVEL))

    @property
    def ipa_size(self) -> int:
        return 1 << self.ipa_bits

    def level_shift(self, level: int) -> int:
        """``kvm_granule_shift(level)``."""
        return self.bits_per_level * (4 - level) + 3

    def level_size(self, level: int) -> int:
        """``kvm_granule_size(level)``: bytes one entry at ``level`` maps."""
        return 1 << self.level_shift(level)

    def level_of_size(self, size: int) -> int:
        """The level whose entries map ``size`` bytes (a page or a block); ModelError if none."""
        for level in range(self.start_level, LAST_LEVEL + 1):
            if self.level_size(level) == size:
                if level == LAST_LEVEL or level in self.block_levels:
                    return level
        sizes = ", ".join(format_size(s) for s in self.supported_block_sizes())
        raise ModelError(
            f"the {format_size(self.granule)} granule has no {format_size(size)} mapping "
            f"(stage-2 sizes: {sizes})"
        )

    def supported_block_sizes(self) -> tuple[int, ...]:
        """``kvm_supported_block_sizes()``: the page and every block size (arch/arm64/kvm/mmu.c)."""
        return tuple(self.level_size(level) for level in (*self.block_levels, LAST_LEVEL))[::-1]

    def index(self, addr: int, level: int) -> int:
        """``kvm_pgtable_idx``: the entry index of ``addr`` in its table at ``level``."""
        return (addr >> self.level_shift(level)) & (self.entries_per_table - 1)

    def pgd_page_index(self, addr: int) -> int:
        """``kvm_pgd_page_idx``: which concatenated root page holds ``addr``."""
        return (addr & (self.ipa_size - 1)) >> (self.level_shift(self.start_level) + self.bits_per_level)

    def depth(self, level: int) -> int:
        """Normalised depth from the root (0 = start level)."""
        return level - self.start_level

    def as_dict(self) -> dict:
        return {
            "arch": "arm64",
            "granule": self.granule,
            "ipa_bits": self.ipa_bits,
            "levels": self.levels,
            "start_level": self.start_level,
            "pgd_pages": self.pgd_pages,
            "entries_per_table": self.entries_per_table,
            "min_block_level": self.min_block_level,
            "hyp_stage1": self.hyp_stage1,
            "per_level": [
                {
                    "level": level,
                    "depth": self.depth(level),
                    "shift": self.level_shift(level),
                    "entry_size": self.level_size(level),
                    "leaf": "page" if level == LAST_LEVEL else ("block" if level in self.block_levels else None),
                }
                for level in range(self.start_level, LAST_LEVEL + 1)
            ],
        }


def arm64_stage2(granule: int = 4096, ipa_bits: int = 40, *, hyp_stage1: bool = False) -> Arm64Geometry:
    """The stage-2 geometry KVM builds for ``granule`` and ``ipa_bits`` (``kvm_get_vtcr``).

    >>> g = arm64_stage2(4096, 40)
    >>> (g.levels, g.start_level, g.pgd_pages)
    (3, 1, 2)
    >>> g = arm64_stage2(16384, 40)
    >>> (g.levels, g.start_level, g.pgd_pages)
    (2, 2, 16)
    >>> arm64_stage2(4096, 52, hyp_stage1=True).start_level
    -1
    """
    if granule not in GRANULES:
        raise ModelError(f"arm64 granule must be 4K, 16K or 64K, not {format_size(granule)}")
    if not IPA_MIN <= ipa_bits <= IPA_MAX:
        raise ModelError(f"IPA size must be {IPA_MIN} to {IPA_MAX} bits, not {ipa_bits}")
    bits = GRANULES[granule] - 3
    if hyp_stage1:
        # ARM64_HW_PGTABLE_LEVELS(va_bits) = (va_bits - 4) / (PAGE_SHIFT - 3); no concatenation.
        levels = (ipa_bits - 4) // bits
    else:
        # stage2_pgtable_levels(ipa) = ARM64_HW_PGTABLE_LEVELS(ipa - 4), min 2 (kvm_get_vtcr).
        levels = max(2, (ipa_bits - 8) // bits)
    start_level = 4 - levels
    if start_level < FIRST_LEVEL:
        raise ModelError(f"{ipa_bits} bits need {levels} levels, more than arm64 has")
    # kvm_pgd_pages(): index of the last IPA in units of one root table's span, plus one.
    root_span_shift = bits * (4 - start_level) + 3 + bits
    pgd_pages = ((1 << ipa_bits) - 1 >> root_span_shift) + 1 if ipa_bits > root_span_shift else 1
    return Arm64Geometry(granule, ipa_bits, levels, start_level, pgd_pages, hyp_stage1)


@dataclass(frozen=True)
class X86Geometry:
    """x86-64 paging / TDP geometry: KVM levels ``root_level`` (4 or 5) down to 1."""

    root_level: int

    @property
    def va_bits(self) -> int:
        return 12 + 9 * self.root_level

    def level_shift(self, level: int) -> int:
        """``KVM_HPAGE_SHIFT(level)`` = 12 + 9 * (level - 1)."""
        return x86_paging.level_shift(level)

    def level_size(self, level: int) -> int:
        return 1 << self.level_shift(level)

    def level_of_size(self, size: int) -> int:
        for level, page_size in x86_paging.PAGE_SIZES.items():  # PG_LEVEL_4K .. KVM_MAX_HUGEPAGE_LEVEL
            if page_size == size:
                return level
        raise ModelError(f"x86 has no {format_size(size)} page (4K, 2M or 1G)")

    def index(self, addr: int, level: int) -> int:
        return x86_paging.level_index(addr, level)

    def depth(self, level: int) -> int:
        return self.root_level - level

    def as_dict(self) -> dict:
        return {
            "arch": "x86",
            "levels": self.root_level,
            "va_bits": self.va_bits,
            "entries_per_table": 512,
            "per_level": [
                {
                    "level": level,
                    "depth": self.depth(level),
                    "shift": self.level_shift(level),
                    "entry_size": self.level_size(level),
                    "leaf": "page" if level == 1 else ("huge" if level in (2, 3) else None),
                }
                for level in range(self.root_level, 0, -1)
            ],
        }


def x86_geometry(levels: int = 4) -> X86Geometry:
    """4-level (48-bit) or 5-level (LA57, 57-bit) paging; also the TDP root level (4 or 5)."""
    if levels not in (4, 5):
        raise ModelError(f"x86-64 paging has 4 or 5 levels, not {levels}")
    return X86Geometry(levels)


def depth_from_root(arch: str, level: int, root_level: int) -> int:
    """Normalised depth: arm64 ``level - start_level``; x86 ``root_level - level``."""
    if arch == "arm64":
        return level - root_level
    if arch == "x86":
        return root_level - level
    raise ModelError(f"unknown architecture {arch!r} (arm64 or x86)")
