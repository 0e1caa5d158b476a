"""Fetch arguments by register and BTF offset, and each probe resolved on the recorded Debian kernels.

The kernels' facts (tests/funcprobes/data/kernels/*.json) were recorded by scripts/record_kernel_facts.py
from Debian's cloud images (arm64 Image with kallsyms, amd64 bzImage with the KVM modules' .ko).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from tests import livecheck
from tracekit.funcprobes.btf_offsets import BtfTypes, CType
from tracekit.funcprobes.fetchargs import FetchStyle, RecordedTypes, Unfetchable, fetch_arg, fetch_args
from tracekit.funcprobes.kallsyms import resolve_all
from tracekit.host import parse_kallsyms
from tracekit.funcprobes.spec import kprobe_event_lines
from tracekit.funcprobes.stage2_probes import STAGE2_PROBES
from tracekit.funcprobes.tdp_probes import TDP_PROBES

KERNELS = Path(__file__).parent / "data" / "kernels"

TYPES = RecordedTypes({
    "functions": {
        "visit": [["ctx", "*struct ctx:64"], ["flag", "u32"]],
        "old_visit": [["addr", "u64"], ["end", "u64"], ["level", "u32"], ["ptep", "*u64"], ["flag", "u32"]],
        "walk": [["pgt", "*struct pgt:48"], ["walker", "*struct walker:24"], ["shared", "u8"]],
        "many": [["a", "u64"], ["pair", "struct pair:16"], ["big", "struct big:40"], ["b", "u64"], ["c", "u64"],
                 ["d", "s16"], ["e", "u64"], ["f", "u64"], ["g", "u64"]],
    },
    "structs": {
        "ctx": {"old": [8, "u64"], "level": [56, "s8"], "walker": [16, "*struct walker:24"]},
        "walker": {"flags": [16, "u32"], "cb": [0, "*void"], "depth": [20, "s16"], "inner": [4, "struct inner:8"]},
        "pgt": {"mmu": [24, "*struct s2_mmu:120"]},
    },
})  # fmt: skip
ARM64, X86 = FetchStyle("arm64"), FetchStyle("x86_64")


@pytest.mark.parametrize("style, expected", [
    (ARM64, ["+56(%x0):s8", "+8(%x0):u64", "%x1:u32", "+16(+16(%x0)):u32", "+20(+16(%x0)):s16", "+0(+16(%x0)):u64"]),
    (X86, ["+56(%di):s8", "+8(%di):u64", "%si:u32", "+16(+16(%di)):u32", "+20(+16(%di)):s16", "+0(+16(%di)):u64"]),
])  # fmt: skip
def test_register_and_offset_on_both_arches(style, expected):
    """One dereference per '->' at the member's offset; the type from the member's size and signedness."""
    exprs = ["ctx->level", "ctx->old", "flag", "ctx->walker->flags", "ctx->walker->depth", "ctx->walker->cb"]
    assert [fetch_arg("visit", e, TYPES, style) for e in exprs] == expected


def test_pre_6_2_visitor_by_alternatives():
    """6.1's visitor has (addr, end, level, ptep, flag): each field takes the form this prototype has."""
    args = (("level", "ctx->level|level"), ("addr", "ctx->addr|addr"), ("old", "ctx->old|*ptep"), ("visit", "visit|flag"))
    fetched, dropped = fetch_args("old_visit", args, TYPES, ARM64)
    assert fetched == (("level", "%x2:u32"), ("addr", "%x0:u64"), ("old", "+0(%x3):u64"), ("visit", "%x4:u32"))
    assert dropped == {}
    fetched, dropped = fetch_args("visit", args, TYPES, FetchStyle("arm64", btf_args=True))
    assert fetched == (("level", "ctx->level"), ("old", "ctx->old"), ("visit", "flag")) and set(dropped) == {"addr"}
    assert dropped["addr"] == "struct ctx has no member addr in this kernel's BTF; visit(ctx, flag) has no parameter addr"


def test_btf_names_where_the_kernel_takes_them_but_dereferences_by_register():
    btf = FetchStyle("arm64", btf_args=True)
    assert fetch_arg("walk", "walker->flags", TYPES, btf) == "walker->flags"
    assert fetch_arg("old_visit", "*ptep", TYPES, btf) == "+0(%x3):u64"  # no BTF-argument syntax for '*'


def test_sizes_signedness_and_what_cannot_be_fetched():
    assert fetch_arg("walk", "shared", TYPES, X86) == "%dx:u8"
    assert fetch_arg("walk", "pgt->mmu", TYPES, X86) == "+24(%di):u64"  # a pointer is fetched as its address
    with pytest.raises(Unfetchable, match="walker->inner is a struct inner:8, not a scalar"):
        fetch_arg("walk", "walker->inner", TYPES, X86)
    with pytest.raises(Unfetchable, match="u8 is not a pointer to a struct"):
        fetch_arg("walk", "shared->x", TYPES, X86)
    with pytest.raises(Unfetchable, match="no BTF prototype of absent"):
        fetch_arg("absent", "x", TYPES, X86)
    with pytest.raises(ValueError, match="not a probe argument expression"):
        fetch_arg("walk", "pgt.mmu", TYPES, X86)


def test_calling_convention_slots_and_the_stack():
    """A 16-byte aggregate takes two registers; a larger one goes by reference on arm64 (one register)
    and on the stack on x86-64 (five words); past the registers, $argN (N counts argument words) where
    the kernel has it, else unfetchable."""
    assert [fetch_arg("many", p, TYPES, ARM64) for p in ("a", "b", "c", "d", "e")] == [
        "%x0:u64", "%x4:u64", "%x5:u64", "%x6:s16", "%x7:u64"]
    with pytest.raises(Unfetchable, match="f is passed on the stack and this kernel has no \\$argN"):
        fetch_arg("many", "f", TYPES, ARM64)
    assert fetch_arg("many", "g", TYPES, FetchStyle("arm64", arg_n=True)) == "$arg10:u64"
    assert [fetch_arg("many", p, TYPES, X86) for p in ("a", "b", "c", "d")] == ["%di:u64", "%cx:u64", "%r8:u64", "%r9:s16"]
    assert fetch_arg("many", "e", TYPES, FetchStyle("x86_64", arg_n=True)) == "$arg12:u64"  # 6 registers + big's 5 words


def _fixture(release: str) -> dict:
    return json.loads((KERNELS / f"{release}.json").read_text())


def _resolve(release: str):
    facts = _fixture(release)
    style = FetchStyle(facts["arch"], facts["config"]["PROBE_EVENTS_BTF_ARGS"] == "y",
                       facts["config"]["HAVE_FUNCTION_ARG_ACCESS_API"] == "y")  # fmt: skip
    probes = STAGE2_PROBES if facts["arch"] == "arm64" else TDP_PROBES
    return {r.probe.name: r for r in resolve_all(probes, parse_kallsyms("\n".join(facts["kallsyms"])), RecordedTypes(facts), style)}


B, R, N, A = "btf-args", "register", "no-args", "absent"
#: Per kernel, the mode of each probe in family order (stage2: pgtable_walk split_walker map_walker stage2_split
#: stage2_map relax_perms wrprotect guest_abort user_mem_abort enable_log_dirty split_huge_pages; tdp: page_fault
#: npf ept_violation tdp_map fast_page_fault slot_try_split mmu_try_split tdp_try_split split_root wrprot_slot
#: split_huge_page enable_log_dirty clear_dirty_masked zap_collapsible recover_huge_pages iter_next).
MODES = {
    "5.10.0-32-cloud-arm64": (R, A, N, A, R, R, R, R, A, R, A),
    "6.1.0-50-cloud-arm64": (R, A, R, A, R, R, R, R, A, R, A),
    "6.12.117+deb13-cloud-arm64": (B, B, B, B, B, B, B, B, A, B, N),
    "7.2.13+deb14-cloud-arm64": (B, B, B, B, B, B, B, B, B, B, N),
    "7.3.4+deb13-cloud-arm64": (B, B, B, B, B, B, B, B, B, B, N),
    "5.10.0-32-cloud-amd64": (N, N, N, N, A, A, A, A, A, N, A, N, N, N, A, N),
    "6.1.0-50-cloud-amd64": (R, R, R, R, A, R, R, R, R, R, A, R, R, N, A, R),
    "6.12.117+deb13-cloud-amd64": (B, B, B, B, N, B, B, B, B, B, B, B, B, N, A, B),
    "7.2.13+deb14-cloud-amd64": (B, B, B, B, N, B, B, B, B, B, B, B, B, A, N, B),
    "7.3.4+deb13-cloud-amd64": (B, B, B, B, N, B, B, B, B, B, B, B, B, A, N, B),
}


def test_every_recorded_kernel_has_its_expectations():
    assert {p.stem for p in KERNELS.glob("*.json")} == set(MODES)


@pytest.mark.parametrize("release", sorted(MODES))
def test_each_probe_resolved_or_reported_per_kernel(release):
    resolved = _resolve(release)
    assert tuple(r.mode for r in resolved.values()) == MODES[release]
    for res in resolved.values():
        assert res.reason and (res.symbol is None) == (res.mode == "absent")
        if res.mode == "absent":
            assert res.reason.startswith(f"{res.probe.symbol} absent: ")
        lines = kprobe_event_lines(res.probe, res.symbol or "-", res.fetch)
        assert lines[0].split()[2:] == [f"{name}={arg}" for name, arg in res.fetch]
        assert len(lines) == 1 or lines[1].endswith("ret=$retval") == res.probe.returns_value


def test_bookworm_arm64_fields_by_register():
    """6.1 arm64: no BTF argument names; the fields of 6.12's BTF names by register and 6.1's offsets."""
    r = _resolve("6.1.0-50-cloud-arm64")
    assert r["pgtable_walk"].fetch == (("addr", "%x1:u64"), ("size", "%x2:u64"), ("flags", "+16(%x3):u32"),
                                       ("cb", "+0(%x3):u64"), ("mmu", "+24(%x0):u64"), ("start_level", "+4(%x0):u32"))
    assert r["map_walker"].fetch == (("level", "%x2:u32"), ("addr", "%x0:u64"), ("old", "+0(%x3):u64"), ("visit", "%x4:u32"))
    assert r["guest_abort"].fetch == (("vcpu_id", "+36(%x0):s32"),)
    assert dict(r["stage2_map"].dropped) == {"flags": "kvm_pgtable_stage2_map(pgt, addr, size, phys, prot, mc) has no "
                                                      "parameter flags"}  # fmt: skip
    assert r["split_walker"].reason == ("stage2_split_walker absent: not in kallsyms nor BTF (a kernel before v6.5 "
                                        "(eager splitting), or inlined or renamed)")  # fmt: skip


def test_bookworm_x86_fields_by_register():
    r = _resolve("6.1.0-50-cloud-amd64")
    assert r["iter_next"].fetch == (("level", "+80(%di):s32"),)
    assert r["tdp_map"].fetch == (("gfn", "+24(%si):u64"), ("goal_level", "+23(%si):u8"))
    assert r["tdp_try_split"].fetch == (("start", "%dx:u64"), ("end", "%cx:u64"), ("target_level", "%r8:s32"),
                                        ("shared", "%r9:u8"))  # fmt: skip
    assert r["npf"].fetch == (("vcpu_id", "+36(%di):s32"),)  # kvm_amd's split BTF on vmlinux, beside kvm's


def test_sid_user_mem_abort_takes_its_descriptor():
    """7.2 passes user_mem_abort one struct kvm_s2_fault_desc: the address is read through it, the
    permission flag is gone (the kernel refused 'fault_is_perm': "This variable is not found at this probe point")."""
    r = _resolve("7.2.13+deb14-cloud-arm64")["user_mem_abort"]
    assert r.fetch == (("ipa", "s2fd->fault_ipa"),)
    assert dict(r.dropped) == {"perm": "user_mem_abort(s2fd) has no parameter fault_is_perm"}
    assert r.reason == "exact symbol; BTF argument names; without perm: user_mem_abort(s2fd) has no parameter fault_is_perm"


def test_bullseye_x86_has_no_module_btf():
    r = _resolve("5.10.0-32-cloud-amd64")
    assert _fixture("5.10.0-32-cloud-amd64")["btf_modules"] == []
    assert r["tdp_map"].reason == "exact symbol; this kernel's BTF has no prototype of kvm_tdp_mmu_map: no arguments fetched"


def _btf(types: list[bytes], strings: bytes) -> bytes:
    body = b"".join(types)
    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body), len(strings)) + body + strings


def test_prototypes_and_members_from_a_btf_blob_and_a_module_split():
    """vmlinux: u64 (1), s8 (2), struct ctx {u64 old; s8 level} (3), ctx * (4), proto (ctx, v) (5), FUNC visit (6).
    A module's split BTF continues the ids (7: FUNC mod_fn -> 5) and the strings."""
    strings = b"\0u64\0s8\0ctx\0old\0level\0visit\0v\0"
    o = {n: strings.index(n.encode() + b"\0") for n in ("u64", "s8", "ctx", "old", "level", "visit", "v")}
    u64 = struct.pack("<III", o["u64"], 1 << 24, 8) + struct.pack("<I", 64)
    s8 = struct.pack("<III", o["s8"], 1 << 24, 1) + struct.pack("<I", (1 << 24) | 8)
    ctx = struct.pack("<III", o["ctx"], (4 << 24) | 2, 16) + struct.pack("<III", o["old"], 1, 0) + struct.pack(
        "<III", o["level"], 2, 64)
    ptr = struct.pack("<III", 0, 2 << 24, 3)
    proto = struct.pack("<III", 0, (13 << 24) | 2, 0) + struct.pack("<II", 0, 4) + struct.pack("<II", o["v"], 1)
    func = struct.pack("<III", o["visit"], 12 << 24, 5)
    base = BtfTypes(_btf([u64, s8, ctx, ptr, proto, func], strings))
    params = base.prototype("visit")
    assert [(n, t.spelling) for n, t in params] == [("arg1", "*struct ctx:16"), ("v", "u64")]
    assert base.field("ctx", "level") == (8, CType("int", 1, True))
    mod_strings = b"mod_fn\0"
    module = base.with_module(_btf([struct.pack("<III", len(strings), 12 << 24, 5)], mod_strings))
    assert module.prototype("mod_fn") == params and base.prototype("mod_fn") is None
    assert fetch_arg("mod_fn", "arg1->level", module, ARM64) == "+8(%x0):s8"


@pytest.mark.live
def test_this_kernels_btf_gives_the_tdp_fields():
    """The running kernel's BTF (x86 with KVM): every tdp field by register that its prototypes name."""
    from tracekit.funcprobes.availability import running_types

    types = running_types()
    if types is None or types.prototype("tdp_iter_next") is None:
        livecheck.skip_or_fail("no kernel BTF with KVM's tdp_iter_next here (/sys/kernel/btf)")
    fetched, dropped = fetch_args("tdp_iter_next", (("level", "iter->level"),), types, X86)
    offset = types.field("tdp_iter", "level")[0]
    assert fetched == (("level", f"+{offset}(%di):s32"),) and dropped == {}


def _tdp_btf() -> bytes:
    """s32 (1), struct tdp_iter {int level at 80} (2), tdp_iter * (3), proto (iter) (4), FUNC tdp_iter_next (5)."""
    strings = b"\0int\0tdp_iter\0level\0iter\0tdp_iter_next\0"
    o = {n: strings.index(n.encode() + b"\0") for n in ("int", "tdp_iter", "level", "iter", "tdp_iter_next")}
    s32 = struct.pack("<III", o["int"], 1 << 24, 4) + struct.pack("<I", (1 << 24) | 32)
    it = struct.pack("<III", o["tdp_iter"], (4 << 24) | 1, 104) + struct.pack("<III", o["level"], 1, 80 * 8)
    ptr = struct.pack("<III", 0, 2 << 24, 2)
    proto = struct.pack("<III", 0, (13 << 24) | 1, 0) + struct.pack("<II", o["iter"], 3)
    func = struct.pack("<III", o["tdp_iter_next"], 12 << 24, 4)
    return _btf([s32, it, ptr, proto, func], strings)


def test_lab_probes_resolves_another_kernel_from_its_btf_and_kallsyms(tmp_path):
    """`tracekit lab probes --btf --kallsyms --no-btf-args`: rows by register, absent with why, as JSON and text."""
    from typer.testing import CliRunner

    from tracekit.cli import app

    (tmp_path / "btf").write_bytes(_tdp_btf())
    (tmp_path / "kallsyms").write_text("ffffffff00001000 t tdp_iter_next\nffffffff00002000 T kvm_mmu_page_fault\n")
    argv = ["lab", "probes", "--family", "tdp", "--machine", "x86_64", "--kallsyms", str(tmp_path / "kallsyms"),
            "--btf", str(tmp_path / "btf"), "--no-btf-args"]  # fmt: skip
    result = CliRunner().invoke(app, argv + ["--json"])
    assert result.exit_code == 0, result.output
    rows = {row["probe"]: row for row in json.loads(result.output)["families"]["tdp"]}
    assert (rows["iter_next"]["mode"], rows["iter_next"]["fetch"]) == ("register", ["level=+80(%di):s32"])
    assert rows["iter_next"]["attach"] == "attached by register"
    assert rows["page_fault"]["mode"] == "no-args" and "no prototype of kvm_mmu_page_fault" in rows["page_fault"]["reason"]
    assert rows["split_root"]["mode"] == "absent" and rows["split_root"]["reason"].startswith(
        "tdp_mmu_split_huge_pages_root absent: not in kallsyms nor BTF (a kernel before v5.17")
    text = CliRunner().invoke(app, argv).output
    assert re.search(r"iter_next +\S+ +by register +tdp_iter_next +level=\+80\(%di\):s32", text), text
    bad = CliRunner().invoke(app, argv[:-3] + ["--btf", str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "cannot read" in bad.output


def test_the_bcc_programs_fixed_argument_positions_hold_on_every_recorded_kernel():
    """probes/*.bpf.c read some arguments by position (PT_REGS_PARMn); the visitors follow their prototype
    (fetch_cflags). Each position read must name the same parameter on every recorded kernel with BTF."""
    from tracekit.funcprobes.bcc_programs import ATTACH
    from tracekit.probes import PROBES_DIR

    for family, probes in (("stage2", STAGE2_PROBES), ("tdp", TDP_PROBES)):
        source = (PROBES_DIR / f"{family}.bpf.c").read_text()
        bodies = dict(re.findall(r"\nint (tk_\w+)\(struct pt_regs \*ctx\)(.*?)(?=\nint |\Z)", source, re.S))
        facts = [RecordedTypes(_fixture(p.stem)) for p in KERNELS.glob("*.json") if _fixture(p.stem)["arch"] ==
                 ("arm64" if family == "stage2" else "x86_64")]  # fmt: skip
        checked = 0
        for probe in probes:
            positions = {int(n) for n in re.findall(r"PT_REGS_PARM(\d)", bodies[ATTACH[family][probe.name][0]])}
            for n in positions:
                names = {p[n - 1][0] for t in facts if (p := t.prototype(probe.symbol)) is not None and len(p) >= n}
                assert len(names) == 1, (probe.symbol, n, names)
                checked += 1
        assert checked >= (12 if family == "stage2" else 15), checked


def test_truncated_or_corrupt_btf_is_refused_with_one_line():
    from tracekit.errors import ProbeLoadError

    blob = _tdp_btf()
    with pytest.raises(ProbeLoadError, match="a truncated BTF blob"):
        BtfTypes(blob[:-10])
    corrupt = bytearray(blob)
    corrupt[24 + 7] = 0x1F  # the first type's kind (the top byte of its info): no such kind
    with pytest.raises(ProbeLoadError, match=r"a corrupt BTF blob: type 1 has no known kind \(31\)"):
        BtfTypes(bytes(corrupt))
    overrun = bytearray(blob)
    overrun[24 + 16 + 4 : 24 + 16 + 8] = struct.pack("<I", (4 << 24) | 9)  # tdp_iter claims 9 members
    with pytest.raises(ProbeLoadError, match="overrun their section"):
        BtfTypes(bytes(overrun))
