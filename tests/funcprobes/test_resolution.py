"""Symbol resolution against kallsyms text and the tracefs kprobe_events definitions of both families."""

from __future__ import annotations

import re

import pytest

from tracekit.funcprobes.kallsyms import resolve, resolve_all
from tracekit.host import parse_kallsyms
from tracekit.funcprobes.spec import FuncProbe, kprobe_event_lines
from tracekit.funcprobes.stage2_probes import STAGE2_PROBES
from tracekit.funcprobes.tdp_probes import TDP_PROBES

# Excerpt of the arm64 lab kernel's /proc/kallsyms (Debian 6.12.107 cloud-arm64), addresses shortened.
ARM64_KALLSYMS = """\
ffff8000800609b8 t kvm_mmu_split_huge_pages.isra.0
ffff8000800622e8 T kvm_arch_mmu_enable_log_dirty_pt_masked
ffff8000800623b0 T kvm_handle_guest_abort
ffff80008009d530 t __kvm_pgtable_walk
ffff80008009df18 T kvm_pgtable_walk
ffff80008009ec50 T kvm_pgtable_stage2_map
ffff80008009ef48 T kvm_pgtable_stage2_wrprotect
ffff80008009f128 T kvm_pgtable_stage2_relax_perms
ffff80008009f328 T kvm_pgtable_stage2_split
ffff80008009f828 t stage2_split_walker
ffff80008009f000 t stage2_map_walker
ffff80008009f900 t stage2_split_walker.cold
ffff800080a00000 d kvm_pgtable_walk_data_not_text
"""


def test_exact_clone_and_absent():
    table = parse_kallsyms(ARM64_KALLSYMS)
    by_name = {r.probe.name: r for r in resolve_all(STAGE2_PROBES, table)}
    assert by_name["split_walker"].symbol == "stage2_split_walker" and by_name["split_walker"].mode == "btf-args"
    clone = by_name["split_huge_pages"]
    assert clone.symbol == "kvm_mmu_split_huge_pages.isra.0" and clone.mode == "no-args" and clone.fetch == ()
    assert "only the compiler clone" in clone.reason
    absent = by_name["user_mem_abort"]
    assert absent.symbol is None and "inlined into kvm_handle_guest_abort" in absent.reason


def test_cold_fragments_and_data_symbols_are_never_chosen():
    table = parse_kallsyms("ffff0001 t foo.cold\nffff0002 d bar\n")
    assert resolve(FuncProbe("f", "foo", "call"), table).symbol is None
    assert "bar" not in table.by_name


def test_symbolize_inside_and_at_functions():
    table = parse_kallsyms(ARM64_KALLSYMS)
    assert table.symbolize(0xFFFF80008009F828) == "stage2_split_walker"
    assert table.symbolize(0xFFFF80008009F830) == "stage2_split_walker+0x8"
    assert table.symbolize(0) == "0x0"


@pytest.mark.parametrize("probe", STAGE2_PROBES + TDP_PROBES, ids=lambda p: p.name)
def test_definitions_unchecked_use_the_newest_btf_names(probe):
    """Without BTF to check them, a kernel with BTF argument names gets each field's first form:
    'p:tk/NAME SYMBOL name=expr...' and 'r:tk/NAME_ret SYMBOL [ret=$retval]'."""
    res = resolve(probe, parse_kallsyms(f"ffff0001 t {probe.symbol}\n"))
    assert [name for name, _ in res.fetch] == [name for name, _ in probe.args]
    lines = kprobe_event_lines(probe, res.symbol, res.fetch)
    assert lines[0].startswith(f"p:tk/{probe.name} {probe.symbol}")
    for line in lines:
        for arg in line.split()[2:]:
            name, expr = arg.split("=", 1)
            assert re.fullmatch(r"[a-z_][a-z0-9_]*", name)
            assert expr == "$retval" or re.fullmatch(r"[a-z_][a-z0-9_]*(->[a-z_][a-z0-9_]*)*", expr), expr
            assert "+" not in expr and "%" not in expr and "@" not in expr
    assert len(lines) == (2 if probe.timed else 1)


def test_probe_names_are_unique_per_family():
    for family in (STAGE2_PROBES, TDP_PROBES):
        names = [p.name for p in family]
        assert len(names) == len(set(names))
