"""arm64 stage-2 and x86 geometry: golden values computed from KVM's formulas."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from tests.model.hypothesis_profile import MODEL
from hypothesis import strategies as st

import tracekit.model.geometry as geometry
from tracekit.errors import ModelError
from tracekit.model.geometry import arm64_stage2, depth_from_root, format_size, parse_size, x86_geometry

K, M, G = 1 << 10, 1 << 20, 1 << 30


def test_doctests():
    assert doctest.testmod(geometry).failed == 0


@pytest.mark.parametrize(
    "granule, ipa, levels, start, pgd_pages",
    [
        # levels = max(2, (ipa - 8) // (PAGE_SHIFT - 3)); start = 4 - levels;
        # pgd pages = 2 ** (ipa - root span shift), span shift = shift(start) + bits.
        (4 * K, 40, 3, 1, 2),  # 32 // 9 = 3; L1 span 2**39 -> 2**40 / 2**39 = 2
        (4 * K, 42, 3, 1, 8),  # 34 // 9 = 3; 2**42 / 2**39 = 8
        (4 * K, 44, 4, 0, 1),  # 36 // 9 = 4; L0 span 2**48 > 2**44
        (4 * K, 48, 4, 0, 1),
        (4 * K, 52, 4, 0, 16),  # 44 // 9 = 4: concatenation, never level -1 at stage 2
        (4 * K, 32, 2, 2, 4),  # 24 // 9 = 2; L2 span 2**30 -> 4 pages
        (16 * K, 40, 2, 2, 16),  # 32 // 11 = 2; L2 span 2**36 -> 16
        (16 * K, 48, 3, 1, 2),  # 40 // 11 = 3; L1 span 2**47 -> 2
        (64 * K, 40, 2, 2, 1),  # 32 // 13 = 2; L2 span 2**42
        (64 * K, 48, 3, 1, 1),  # 40 // 13 = 3; L1 span 2**55
        (64 * K, 32, 2, 2, 1),  # 24 // 13 = 1, clamped to 2
    ],
)
def test_kvm_get_vtcr_geometry(granule, ipa, levels, start, pgd_pages):
    g = arm64_stage2(granule, ipa)
    assert (g.levels, g.start_level, g.pgd_pages) == (levels, start, pgd_pages)


def test_block_sizes_per_granule():
    """4K: 1G at L1, 2M at L2; 16K: 32M at L2; 64K: 512M at L2 (MIN_BLOCK_LEVEL 1 vs 2)."""
    assert arm64_stage2(4 * K, 40).supported_block_sizes() == (4 * K, 2 * M, G)
    assert arm64_stage2(16 * K, 48).supported_block_sizes() == (16 * K, 32 * M)
    assert arm64_stage2(64 * K, 48).supported_block_sizes() == (64 * K, 512 * M)
    assert arm64_stage2(4 * K, 40).level_of_size(G) == 1
    with pytest.raises(ModelError, match="no 1G mapping"):
        arm64_stage2(16 * K, 48).level_of_size(G)
    # 4K with a 32-bit IPA starts at L2: no level-1 blocks exist.
    assert arm64_stage2(4 * K, 32).block_levels == (2,)


def test_lpa2_level_minus_one_only_without_concatenation():
    assert arm64_stage2(4 * K, 52, hyp_stage1=True).start_level == -1  # (52 - 4) // 9 = 5 levels
    assert arm64_stage2(4 * K, 52).start_level == 0


@pytest.mark.parametrize("granule, ipa", [(8 * K, 40), (4 * K, 31), (4 * K, 53)])
def test_impossible_geometry(granule, ipa):
    with pytest.raises(ModelError):
        arm64_stage2(granule, ipa)


def test_x86_levels_and_depth():
    g = x86_geometry(5)
    assert g.va_bits == 57 and g.level_size(3) == G and g.depth(1) == 4
    assert depth_from_root("arm64", 3, 1) == 2 and depth_from_root("x86", 2, 4) == 2
    with pytest.raises(ModelError):
        x86_geometry(3)


def test_parse_and_format_size():
    assert parse_size("1.5T") == 3 << 39 and parse_size("64GiB") == 64 * G and parse_size("0x1000") == 4096
    assert format_size(2 * M) == "2M" and format_size(1536 * G) == "1536G"
    with pytest.raises(ModelError):
        parse_size("lots")


@MODEL
@given(st.sampled_from([4 * K, 16 * K, 64 * K]), st.integers(32, 52), st.integers(0, (1 << 52) - 1))
def test_index_split_reassembles_the_address(granule, ipa, addr):
    """Root-page index, per-level indices and page offset reassemble the IPA."""
    g = arm64_stage2(granule, ipa)
    addr &= g.ipa_size - 1
    rebuilt = g.pgd_page_index(addr) << (g.level_shift(g.start_level) + g.bits_per_level)
    for level in range(g.start_level, 4):
        rebuilt |= g.index(addr, level) << g.level_shift(level)
    assert rebuilt | (addr % granule) == addr
    assert g.pgd_page_index(addr) < g.pgd_pages
