"""Capability detection of function probes from recorded tracefs/kallsyms states (no attaching)."""

from __future__ import annotations

from tracekit.funcprobes.availability import choose_backend, family_report, kprobe_support
from tracekit.host import parse_kallsyms
from tracekit.funcprobes.stage2_probes import STAGE2_PROBES
from tracekit.funcprobes.tdp_probes import TDP_PROBES

# This development machine: KVM symbols present, CONFIG_KPROBES off (no register_kprobe, no kprobe_events).
HOST_KALLSYMS = "ffffffff81000000 T kvm_mmu_page_fault\nffffffff81000100 T kvm_tdp_mmu_map\nffffffff81000200 t fast_page_fault.part.0\n"
# The x86 lab guest: kprobes built in.
LAB_KALLSYMS = HOST_KALLSYMS + "ffffffff81100000 T register_kprobe\n"


def test_no_kprobes_is_reported_with_the_config_option(tmp_path):
    support = kprobe_support(parse_kallsyms(HOST_KALLSYMS), tracefs=tmp_path)
    assert not support.kprobes and "CONFIG_KPROBES is off" in support.reason
    rows = {r["probe"]: r for r in family_report("tdp", TDP_PROBES, parse_kallsyms(HOST_KALLSYMS), support, "x86_64")}
    assert rows["tdp_map"]["status"] == "no-kprobes" and rows["tdp_map"]["symbol"] == "kvm_tdp_mmu_map"
    assert rows["fast_page_fault"]["symbol"] == "fast_page_fault.part.0"
    assert rows["split_root"]["status"] == "absent"
    assert choose_backend(support, bcc_ok=True, btf_ok=True)[0] == "none"


def test_kprobe_events_with_btf_names_choose_tracefs_without_bcc(tmp_path):
    (tmp_path / "kprobe_events").write_text("")
    (tmp_path / "README").write_text("\t           <argname>[->field[->field|.field...]],\n")
    support = kprobe_support(parse_kallsyms(LAB_KALLSYMS), tracefs=tmp_path)
    assert support.kprobes and support.kprobe_events and support.btf_args
    assert choose_backend(support, bcc_ok=False, btf_ok=True)[0] == "tracefs"
    assert choose_backend(support, bcc_ok=True, btf_ok=True)[0] == "bcc"
    rows = family_report("tdp", TDP_PROBES, parse_kallsyms(LAB_KALLSYMS), support, "x86_64")
    assert {r["probe"]: r["status"] for r in rows}["page_fault"] == "attachable"


def test_family_on_the_wrong_architecture(tmp_path):
    support = kprobe_support(parse_kallsyms(LAB_KALLSYMS), tracefs=tmp_path)
    rows = family_report("stage2", STAGE2_PROBES, parse_kallsyms(LAB_KALLSYMS), support, "x86_64")
    assert {r["status"] for r in rows} == {"wrong-arch"}
    assert not support.kprobe_events and "CONFIG_KPROBE_EVENTS is off" in support.reason
