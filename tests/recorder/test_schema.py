"""The numpy mirrors in tracekit/schema.py match every C header in probes/."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

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


def test_every_header_is_generated():
    """Every header of probes/ is read by the generator, and every struct it declares has a dtype here."""
    gen = _generator()
    headers = gen.headers(ROOT / "probes")
    assert sorted(headers) == sorted(p.name for p in (ROOT / "probes").glob("*.h"))
    declared = set()
    for header in headers:
        declared |= set(re.findall(r"^struct\s+(\w+)\s*\{", (ROOT / "probes" / header).read_text(), re.M))
    assert declared == set(schema.STRUCT_DTYPES)


def test_array_sizes_may_name_constants():
    """``__u32 counts[TK_N]`` takes TK_N from the constants; an unknown name is refused."""
    gen = _generator()
    [(_, layout)] = gen.parse_structs("struct t { __u32 a[TK_N]; };", {}, {"TK_N": 3})
    assert layout["formats"] == [("<u4", 3)] and layout["itemsize"] == 12
    with pytest.raises(ValueError, match="array size 'TK_M'"):
        gen.parse_structs("struct t { __u32 a[TK_M]; };", {}, {"TK_N": 3})


def test_python_sizes_come_from_the_headers():
    """Python sizes that the BPF programs also use are the headers' constants, not copies."""
    from tracekit.analysis.walks import MAX_WALK_ELEMENTS
    from tracekit.funcprobes import bcc_programs
    from tracekit.recorder import ring_batch
    from tracekit.recorder.tracepoint_families import WalkFamily

    assert WalkFamily.MAX_ELEMENTS == MAX_WALK_ELEMENTS == schema.TK_WALK_MAX_ELEMENTS
    assert ring_batch.BATCH_EVENTS == schema.TK_BATCH_EVENTS
    assert bcc_programs.TDP_LEVELS == schema.TK_TDP_LEVELS
    assert schema.STAGE2_WALK_EVENT_DTYPE.fields["counts"][0].shape == (schema.TK_S2_COUNTS,)
    assert len(bcc_programs.STAGE2_FUNC_NAMES) == schema.TK_S2_FUNCS
    assert len(bcc_programs.TDP_FUNC_NAMES) == schema.TK_TDP_FUNCS


@pytest.mark.live
def test_every_struct_matches_bcc_layout():
    """bcc's own ctypes mirror (laid out by clang from the headers) has the size and field offsets of
    every generated dtype."""
    from tests.livecheck import need_bcc

    need_bcc()
    from tracekit.recorder.backend_bcc import struct_layouts

    layouts = struct_layouts()
    assert set(layouts) == set(schema.STRUCT_DTYPES)
    for name, dtype in schema.STRUCT_DTYPES.items():
        size, offsets = layouts[name]
        assert size == dtype.itemsize, name
        assert offsets == {n: dtype.fields[n][1] for n in dtype.names}, name


def test_bpf_programs_take_kvm_command_numbers_from_the_ioctl_table():
    """No KVM ioctl number is written in a BPF source; every TK_KVM_* a program names is a cflag its
    loader passes from tracekit.recorder.kvm_ioctls."""
    from tracekit.host import Host
    from tracekit.recorder.tracepoint_families import IoctlFamily
    from tracekit.top.sources import BccTopSource

    passed = {"ioctl": IoctlFamily().cflags([], 0), "top": BccTopSource(Host(None)).cflags()}
    for program, flags in passed.items():
        source = (ROOT / "probes" / f"{program}.bpf.c").read_text()
        assert not re.findall(r"0x[0-9A-Fa-f]*AE[0-9A-Fa-f]{2}\b", source, re.I), program
        defined = {f[2:].split("=")[0] for f in flags if f.startswith("-DTK_KVM")}
        assert set(re.findall(r"\bTK_KVM(?:IO|_[A-Z][A-Z0-9_]*)", source)) <= defined, program
