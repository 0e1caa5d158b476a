"""Host facts read from recorded files: tracepoint formats, kallsyms, BTF paths."""

from __future__ import annotations

from tracekit.host import Host, format_fields, kvm_params, parse_kallsyms

PAGING_ELEMENT = """name: kvm_mmu_paging_element
ID: 132
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__u64 pte;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u32 level;\toffset:16;\tsize:4;\tsigned:0;
\tfield:char comm[16];\toffset:20;\tsize:16;\tsigned:0;

print fmt: "pte %llx level %u", REC->pte, REC->level
"""


def test_format_fields_and_tracepoint_fields(tmp_path):
    assert format_fields(PAGING_ELEMENT)[1] == ("common_pid", "int common_pid", 4, 4, True)
    assert format_fields(PAGING_ELEMENT)[-1] == ("comm", "char comm[16]", 20, 16, False)
    event = tmp_path / "events" / "kvmmmu" / "kvm_mmu_paging_element"
    event.mkdir(parents=True)
    (event / "format").write_text(PAGING_ELEMENT)
    host = Host(tmp_path)
    assert host.tracepoint_fields("kvmmmu:kvm_mmu_paging_element") == {"pte", "level", "comm"}
    assert host.tracepoint_fields("kvmmmu:kvm_mmu_walker_error") is None
    assert Host(None).tracepoint_fields("kvmmmu:kvm_mmu_paging_element") is None


def test_symbols_from_a_kallsyms_file_and_none_when_unreadable(tmp_path):
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("ffff0001 T kvm_pgtable_walk\nffff0100 t stage2_split_walker.isra.0 [kvm]\nffff0200 d data\n")
    host = Host(None, kallsyms=kallsyms)
    assert host.has_symbol("kvm_pgtable_walk") and not host.has_symbol("data")
    assert host.symbol_table().clones("stage2_split_walker") == ["stage2_split_walker.isra.0"]
    assert host.symbol_table().modules == {"stage2_split_walker.isra.0": "kvm"}
    assert Host(None, kallsyms=tmp_path / "absent").symbol_table().by_name == {}
    assert parse_kallsyms("zzzz T bad\n").by_name == {}


def test_has_symbol_scans_kallsyms_without_keeping_the_table_and_agrees_with_it(tmp_path):
    """A recorder of tracepoints asks about two helpers only: the answer comes from one pass that keeps
    nothing (the parsed table holds about 30 MB), the same answer the table gives."""
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("ffff0001 T kvm_pgtable_walk\nffff0100 t stage2_split_walker.isra.0\t[kvm]\n"
                        "ffff0200 d data\nffff0300 W bpf_task_pt_regs\nffff0400 t short [kvm]\n")
    names = ["kvm_pgtable_walk", "kvm_pgtable", "stage2_split_walker.isra.0", "stage2_split_walker", "data",
             "bpf_task_pt_regs", "short", "ffff0001", "T", "[kvm]"]
    scanned = Host(None, kallsyms=kallsyms)
    answers = [scanned.has_symbol(name) for name in names]
    assert scanned._symbols is None  # nothing parsed, nothing kept
    assert answers == [name in parse_kallsyms(kallsyms.read_text()).by_name for name in names]
    assert answers == [True, False, True, False, False, True, True, False, False, False]
    loaded = Host(None, kallsyms=kallsyms)
    loaded.symbol_table()
    assert [loaded.has_symbol(name) for name in names] == answers
    assert not Host(None, kallsyms=tmp_path / "absent").has_symbol("kvm_pgtable_walk")


def test_btf_paths(tmp_path):
    host = Host(None, btf=tmp_path)
    assert host.btf_paths("kvm") == (tmp_path / "vmlinux", tmp_path / "kvm")
    assert not host.has_btf()
    (tmp_path / "vmlinux").write_bytes(b"\x9f\xeb")
    assert host.has_btf()


def test_kvm_params_of_every_loaded_kvm_module(tmp_path):
    for module, params in {"kvm": {"tdp_mmu": "N\n", "eager_page_split": "Y\n"}, "kvm_amd": {"npt": "1\n"}}.items():
        (tmp_path / module / "parameters").mkdir(parents=True)
        for name, value in params.items():
            (tmp_path / module / "parameters" / name).write_text(value)
    (tmp_path / "kvm_intel").mkdir()  # loaded without parameters
    (tmp_path / "vfio").mkdir()
    assert kvm_params(tmp_path) == {"kvm": {"eager_page_split": "Y", "tdp_mmu": "N"}, "kvm_amd": {"npt": "1"}}
    assert kvm_params(tmp_path / "absent") == {}
