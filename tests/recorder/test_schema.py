"""The numpy mirrors in tracekit/schema.py match the C headers in probes/ (no root needed)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from tracekit import schema

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_schema", ROOT / "scripts" / "gen_schema.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_block_is_current():
    """Rerunning the generator on the headers reproduces tracekit/schema.py exactly."""
    gen = _generator()
    current = (ROOT / "tracekit" / "schema.py").read_text()
    assert gen.splice(current, gen.render(ROOT / "probes")) == current


def test_layout_follows_c_alignment():
    """A u8 followed by a u64 is padded to offset 8; the struct size rounds up to its alignment."""
    gen = _generator()
    known: dict = {}
    [(name, layout)] = gen.parse_structs("struct t { __u8 a; __u64 b; __u16 c[3]; };", known)
    assert name == "t"
    assert layout["offsets"] == [0, 8, 16]
    assert layout["itemsize"] == 24  # 16 + 6 = 22, rounded up to 8


def test_unknown_field_type_is_rejected():
    gen = _generator()
    with pytest.raises(ValueError, match="unsupported type 'long'"):
        gen.parse_structs("struct t { long a; };", {})


@pytest.mark.parametrize("family", sorted(schema.EVENT_DTYPES))
def test_every_event_starts_with_the_common_header(family):
    dtype = schema.EVENT_DTYPES[family]
    assert dtype.names[0] == "hdr"
    assert dtype.fields["hdr"][0] == schema.TK_HEADER_DTYPE
    assert dtype.itemsize % 8 == 0


def test_mmu_kinds_are_dense():
    """TK_MMU_* event numbers are 0..TK_MMU_NEVENTS-1, each used once (they index mmu_lost)."""
    kinds = sorted(v for k, v in vars(schema).items() if re.match(r"TK_MMU_[A-Z_]+$", k)
                   and not k.startswith("TK_MMU_F_") and k != "TK_MMU_NEVENTS")
    assert kinds == list(range(schema.TK_MMU_NEVENTS))


@pytest.mark.live
def test_mirror_matches_bcc_layout():
    """bcc's own ctypes mirror (derived from the C text by clang) has the same size and offsets."""
    from tests.livecheck import need_bcc

    need_bcc()
    from tracekit.recorder.backend_bcc import struct_layouts

    layouts = struct_layouts()
    for name, dtype in (("walk_event", schema.WALK_EVENT_DTYPE), ("ioctl_event", schema.IOCTL_EVENT_DTYPE),
                        ("lock_event", schema.LOCK_EVENT_DTYPE), ("mmu_event", schema.MMU_EVENT_DTYPE)):
        size, offsets = layouts[name]
        assert size == dtype.itemsize, name
        assert offsets == {n: dtype.fields[n][1] for n in dtype.names}, name
    assert np.dtype(schema.TK_HEADER_DTYPE).itemsize == 24


@pytest.mark.live
def test_batch_and_failure_mirrors_match_bcc_layout():
    """struct tk_batch_header and struct tk_ring_failure (probes/tk_bpf.h) as clang lays them out."""
    from tests.livecheck import need_bcc

    need_bcc()
    from tracekit.recorder.ring_batch import BATCH_HEADER_DTYPE, RING_FAILURE_DTYPE
    from tracekit.recorder.backend_bcc import struct_layouts

    layouts = struct_layouts()
    for name, dtype in (("tk_batch_header", BATCH_HEADER_DTYPE), ("tk_ring_failure", RING_FAILURE_DTYPE)):
        size, offsets = layouts[name]
        assert size == dtype.itemsize, name
        assert {n: o for n, o in offsets.items() if n != "pad"} == {n: dtype.fields[n][1] for n in dtype.names}, name
