"""BTF member offsets (synthetic blob and live kernel) and the bcc sources: compiled and verified, never attached."""

from __future__ import annotations

import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests import livecheck
from tracekit.errors import MissingCapability, ProbeLoadError
from tracekit.funcprobes import bcc_programs
from tracekit.funcprobes.btf_offsets import STAGE2_FIELDS, BtfTypes, offset_cflags
from tracekit.funcprobes.fetchargs import RecordedTypes, fetch_cflags
from tracekit.funcprobes.stage2_probes import VISITOR_ARGS
from tracekit.funcprobes.funcprobe_families import Stage2Family, TdpFamily


KERNELS = Path(__file__).parent / "data" / "kernels"


def _btf(types: list[bytes], strings: bytes) -> bytes:
    body = b"".join(types)
    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body), len(strings)) + body + strings


def _synthetic(filler: int = 0) -> bytes:
    """s8 (id 1), typedef level_t -> s8 (2), u64 (3), struct ctx {u64 old; level_t level; int bits:3} (4),
    then ``filler`` more u64 types (a kernel-sized blob)."""
    strings = b"\0s8\0level_t\0u64\0ctx\0old\0level\0bits\0"
    off = {name: strings.index(name.encode() + b"\0") for name in ("s8", "level_t", "u64", "ctx", "old", "level", "bits")}
    s8 = struct.pack("<III", off["s8"], 1 << 24, 1) + struct.pack("<I", (1 << 24) | 8)
    typedef = struct.pack("<III", off["level_t"], 8 << 24, 1)
    u64 = struct.pack("<III", off["u64"], 1 << 24, 8) + struct.pack("<I", 64)
    members = struct.pack("<III", off["old"], 3, 0) + struct.pack("<III", off["level"], 2, 64)
    members += struct.pack("<III", off["bits"], 1, (3 << 24) | 72)
    ctx = struct.pack("<III", off["ctx"], (1 << 31) | (4 << 24) | 3, 16) + members
    return _btf([s8, typedef, u64, ctx] + [u64] * filler, strings)


def test_synthetic_members_through_typedefs():
    btf = BtfTypes(_synthetic())
    assert (btf.member("ctx", "old").offset, btf.member("ctx", "old").size) == (0, 8)
    level = btf.member("ctx", "level")
    assert (level.offset, level.size, level.signed) == (8, 1, True)
    assert offset_cflags(btf, (("L", "ctx", "level"),)) == ["-DTK_OFF_L=8", "-DTK_SIZE_L=1", "-DTK_SIGNED_L=1"]


def test_missing_struct_member_and_bitfield_are_named():
    btf = BtfTypes(_synthetic())
    with pytest.raises(MissingCapability, match="struct kvm_pgtable_visit_ctx"):
        btf.member("kvm_pgtable_visit_ctx", "level")
    with pytest.raises(MissingCapability, match="no member addr"):
        btf.member("ctx", "addr")
    with pytest.raises(MissingCapability, match="bitfield"):
        btf.member("ctx", "bits")


def test_btf_inside_a_kernel_image(tmp_path):
    """The embedded blob is found past a false magic; a too-small blob is not taken for a kernel's."""
    image = tmp_path / "Image"
    image.write_bytes(b"\x9f\xeb\x01\x00garbage" + b"\0" * 100 + _synthetic(filler=400) + b"\0" * 64)
    assert BtfTypes.from_kernel_image(image).member("ctx", "level").offset == 8
    small = tmp_path / "small"
    small.write_bytes(b"\0" * 10 + _synthetic())
    with pytest.raises(MissingCapability, match="holds no BTF"):
        BtfTypes.from_kernel_image(small)


def _arm64_cflags(release: str) -> list[str]:
    """The stage2 program's struct offsets and visitor fields on a recorded arm64 kernel (6.12: ``ctx->level``,
    6.1: the level parameter and ``*ptep``)."""
    types = RecordedTypes.load(KERNELS / f"{release}.json")
    return offset_cflags(types, STAGE2_FIELDS) + fetch_cflags("stage2_map_walker", VISITOR_ARGS, types, "arm64", "S2V")


def test_stage2_cflags_follow_the_visitor_prototype():
    assert _arm64_cflags("6.12.117+deb13-cloud-arm64") == [
        "-DTK_OFF_WALKER_CB=0", "-DTK_SIZE_WALKER_CB=8", "-DTK_SIGNED_WALKER_CB=0",
        "-DTK_OFF_WALKER_FLAGS=16", "-DTK_SIZE_WALKER_FLAGS=4", "-DTK_SIGNED_WALKER_FLAGS=0",
        "-DTK_OFF_PGT_MMU=24", "-DTK_SIZE_PGT_MMU=8", "-DTK_SIGNED_PGT_MMU=0",
        "-DTK_ARG_REG_S2V_LEVEL=1", "-DTK_ARG_DEREF_S2V_LEVEL=1", "-DTK_OFF_S2V_LEVEL=56", "-DTK_SIZE_S2V_LEVEL=1",
        "-DTK_SIGNED_S2V_LEVEL=1",
        "-DTK_ARG_REG_S2V_ADDR=1", "-DTK_ARG_DEREF_S2V_ADDR=1", "-DTK_OFF_S2V_ADDR=40", "-DTK_SIZE_S2V_ADDR=8",
        "-DTK_SIGNED_S2V_ADDR=0",
        "-DTK_ARG_REG_S2V_OLD=1", "-DTK_ARG_DEREF_S2V_OLD=1", "-DTK_OFF_S2V_OLD=8", "-DTK_SIZE_S2V_OLD=8",
        "-DTK_SIGNED_S2V_OLD=0",
        "-DTK_ARG_REG_S2V_VISIT=2", "-DTK_ARG_DEREF_S2V_VISIT=0", "-DTK_OFF_S2V_VISIT=0", "-DTK_SIZE_S2V_VISIT=4",
        "-DTK_SIGNED_S2V_VISIT=0"]  # fmt: skip
    old = _arm64_cflags("6.1.0-50-cloud-arm64")
    assert [f for f in old if "S2V_LEVEL" in f or "S2V_OLD" in f] == [
        "-DTK_ARG_REG_S2V_LEVEL=3", "-DTK_ARG_DEREF_S2V_LEVEL=0", "-DTK_OFF_S2V_LEVEL=0", "-DTK_SIZE_S2V_LEVEL=4",
        "-DTK_SIGNED_S2V_LEVEL=0",
        "-DTK_ARG_REG_S2V_OLD=4", "-DTK_ARG_DEREF_S2V_OLD=1", "-DTK_OFF_S2V_OLD=0", "-DTK_SIZE_S2V_OLD=8",
        "-DTK_SIGNED_S2V_OLD=0"]  # fmt: skip


class Arm64Stage2(Stage2Family):
    """The stage2 family with a recorded arm64 kernel's offsets (this host's BTF has no arm64 structs)."""

    release = "6.12.117+deb13-cloud-arm64"

    def cflags(self, available, target_tgid):
        return super().cflags(available, target_tgid) + _arm64_cflags(self.release)  # the ring defines without BTF


class Arm64Stage2Before62(Arm64Stage2):
    release = "6.1.0-50-cloud-arm64"


def need_loader():
    """The recorder's bcc loader, or a skip naming what is missing (bcc, kernel headers)."""
    livecheck.need_bcc()
    from tracekit.recorder import backend_bcc

    try:
        backend_bcc.import_bcc()
    except MissingCapability as error:
        livecheck.skip_or_fail(str(error))
    return backend_bcc


@contextmanager
def loaded(families: list) -> Iterator:
    """``families`` compiled and loaded in one program by the recorder's BccBackend, no probe status
    available (no kprobe attached); yields the backend, closed on exit."""
    backend_bcc = need_loader()
    backend = backend_bcc.BccBackend([(family, []) for family in families], 1)
    try:
        backend.start()
        yield backend
    finally:
        backend.close()


@pytest.mark.live
@pytest.mark.slow
@pytest.mark.parametrize("family", ["stage2", "stage2-6.1", "tdp"])
def test_programs_compile_and_pass_the_verifier(family):
    """Every entry/return function loads as a kprobe program (verified by this kernel; nothing is attached),
    compiled by the recorder's loader with the family's own cflags (tdp: this kernel's BTF)."""
    need_loader()
    if family == "tdp":
        try:
            BtfTypes.load().member("tdp_iter", "level")
        except MissingCapability as error:
            livecheck.skip_or_fail(str(error))
    import bcc

    chosen = {"stage2": Arm64Stage2, "stage2-6.1": Arm64Stage2Before62, "tdp": TdpFamily}[family]()
    with loaded([chosen]) as backend:
        names = {fn for pair in bcc_programs.ATTACH[chosen.name].values() for fn in pair if fn}
        for name in sorted(names):
            backend.bpf.load_func(name.encode(), bcc.BPF.KPROBE)
        assert not backend.bpf.kprobe_fds and not backend.attached


@pytest.mark.live
@pytest.mark.slow
def test_compile_failure_carries_the_compiler_log():
    """Without the BTF member offsets the stage2 source cannot compile: the loader's ProbeLoadError names
    the failure and its detail holds clang's diagnostic about the missing TK_OFF_ macro."""
    need_loader()

    class NoOffsets(Stage2Family):
        def cflags(self, available, target_tgid):
            return ["-DTK_S2_PAGES=64"]

    with pytest.raises(ProbeLoadError, match="failed to compile or load") as caught:
        with loaded([NoOffsets()]):
            pass
    assert "TK_OFF_" in caught.value.detail and "error" in caught.value.detail


def test_decode_stage2_records():
    """A walk record with counts [split walker][level 2][block] = 1 and [level 3][page] = 512 -> two visit rows;
    a span record of func 0 (stage2_split) -> a split row; raw visits outside a walk are aggregated (walk -1)."""
    walk = np.zeros(1, bcc_programs.EVENT_DTYPES["stage2_walk_event"])
    walk["hdr"]["ts_ns"], walk["hdr"]["kind"], walk["walk_id"], walk["addr"], walk["size"] = 5, 0, 7, 0x4000_0000, 2 << 20
    walk["counts"][0][2 * 4 + 2] = 1
    walk["counts"][0][3 * 4 + 1] = 512
    tables = bcc_programs.decode_stage2("stage2_walks", walk)
    visits = tables["stage2_visit"].to_pylist()
    assert [(v["walk_id"], v["level"], v["kind"], v["count"]) for v in visits] == [(7, 2, "leaf:block", 1), (7, 3, "leaf:page", 512)]
    assert tables["stage2_walk"].to_pylist()[0]["size"] == 2 << 20
    span = np.zeros(1, bcc_programs.EVENT_DTYPES["stage2_span_event"])
    span["hdr"]["kind"], span["func"], span["arg0"], span["arg1"], span["duration_ns"] = 2, 0, 0x4000_0000, 2 << 20, 900
    split = bcc_programs.decode_stage2("stage2_span_events", span)["split"].to_pylist()[0]
    assert (split["probe"], split["addr"], split["duration_ns"]) == ("stage2_split", 0x4000_0000, 900)
    raw = np.zeros(3, bcc_programs.EVENT_DTYPES["stage2_visit_event"])
    raw["walk_id"] = [0, 0, 9]  # the third was sampled inside walk 9: already counted there
    raw["level"], raw["old"], raw["visit"], raw["visitor"] = [2, 2, 3], [1, 1, 3], [1, 1, 1], [1, 1, 0]
    visits = bcc_programs.decode_stage2("stage2_visits", raw)["stage2_visit"].to_pylist()
    assert [(v["walk_id"], v["visitor"], v["level"], v["kind"], v["count"]) for v in visits] == [
        (-1, "stage2_map_walker", 2, "leaf:block", 2)]


@pytest.mark.live
def test_live_kernel_members_of_the_tdp_structs():
    """This kernel's BTF has the TDP structs the tdp program reads, with the sizes it expects."""
    if not Path("/sys/kernel/btf/vmlinux").exists():
        livecheck.skip_or_fail("/sys/kernel/btf/vmlinux is absent (CONFIG_DEBUG_INFO_BTF off)")
    btf = BtfTypes.load()
    assert btf.member("kvm_page_fault", "gfn").size == 8
    assert btf.member("kvm_page_fault", "goal_level").size == 1
    assert btf.member("tdp_iter", "level").size == 4


def test_decode_tdp_records():
    """A split_root span with iterator steps 64/33/33 at levels 2/3/4 -> one walk and its visits; a
    split_huge_page span -> a split row of the 2 MiB page at gfn << 12."""
    spans = np.zeros(2, bcc_programs.EVENT_DTYPES["tdp_span_event"])
    spans["func"] = [bcc_programs.TDP_FUNC_NAMES.index("split_root"), bcc_programs.TDP_FUNC_NAMES.index("split_huge_page")]
    spans["arg0"], spans["arg1"] = [0x100000, 0x100200], [0x104000, 2]
    spans["iter_steps"][0][2:5] = [64, 33, 33]
    tables = bcc_programs.decode_tdp(spans, walk_base=10)
    walk = tables["stage2_walk"].to_pylist()[0]
    assert (walk["initiator"], walk["addr"], walk["size"]) == ("tdp_mmu_split_huge_pages_root", 1 << 32, 64 << 20)
    visits = [(v["walk_id"], v["level"], v["count"]) for v in tables["stage2_visit"].to_pylist()]
    assert visits == [(10, 2, 64), (10, 3, 33), (10, 4, 33)]
    split = tables["split"].to_pylist()[0]
    assert (split["addr"], split["size"], split["level"]) == (0x1_0020_0000, 2 << 20, 2)
