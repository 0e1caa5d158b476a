"""Per-VM cut of a capture recording several processes (``--all-vms``, repeated ``--pid``)."""

from __future__ import annotations

import html

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from tracekit.analysis.analyze import TABLE_TITLES, analysis_json, analyze_capture, render_text
from tests.synthetic import SCHEMAS, guest_tables, walk_tables
from tracekit.analysis.vms import VmCapture, capture_vms, select_vm, vm_rows
from tracekit.capture import CaptureWriter, open_capture
from tracekit.cli import app
from tracekit.errors import UsageError

VMS = [{"pid": 4001, "comm": "qemu-system-x86", "name": "db", "vcpus": 2, "memory": 1 << 30},
       {"pid": 4002, "comm": "qemu-kvm", "name": "web", "vcpus": 1, "memory": 512 << 20}]
WALKS = {4001: 300, 4002: 120}


def _as_vm(tables: dict[str, pa.Table], pid: int, tid_base: int, id_base: int) -> dict[str, pa.Table]:
    out = {}
    for name, table in tables.items():
        n = table.num_rows
        table = table.set_column(table.schema.get_field_index("pid"), "pid", pa.array(np.full(n, pid, np.int32)))
        tid = pc.add(table.column("tid"), tid_base).cast(pa.int32())
        table = table.set_column(table.schema.get_field_index("tid"), "tid", tid)
        walk_id = pc.add(table.column("walk_id"), pa.scalar(id_base, pa.uint64()))
        out[name] = table.set_column(table.schema.get_field_index("walk_id"), "walk_id", walk_id)
    return out


@pytest.fixture
def two_vms(tmp_path):
    """Walks of two VMs (db: 2 vCPUs, 300 walks; web: 1 vCPU, 120 walks) in one capture, rows interleaved."""
    _, paging = guest_tables()
    threads = [{"tid": 1000, "comm": "CPU 0/KVM", "vcpu": 0}, {"tid": 1001, "comm": "CPU 1/KVM", "vcpu": 1},
               {"tid": 2000, "comm": "CPU 0/KVM", "vcpu": 0}]
    manifest = {"target": {"pids": [4001, 4002], "comm": "qemu-system-x86", "name": "db", "vms": VMS,
                           "threads": threads},
                "workload": {"arch": "x86_64", "guest_paging": paging, "vcpus": []}}
    path = tmp_path / "two.tkcap"
    db = _as_vm(walk_tables(WALKS[4001], vcpus=2), 4001, 0, 0)
    web = _as_vm(walk_tables(WALKS[4002], vcpus=1, t0_ns=10**9 + 500), 4002, 1000, 1 << 40)
    with CaptureWriter(path, manifest=manifest) as writer:
        for family in ("walk", "walk_element"):
            writer.declare(family, SCHEMAS[family])
            merged = pa.concat_tables([db[family], web[family]])
            writer.append(family, merged.take(pc.sort_indices(merged, [("ts_ns", "ascending")])))
    return path


def test_each_vm_is_cut_out_with_its_own_rows(two_vms):
    cap = open_capture(two_vms)
    for vm in VMS:
        cut = VmCapture(cap, vm)
        assert cut.rows("walk") == WALKS[vm["pid"]] and cut.rows("walk_element") == 3 * WALKS[vm["pid"]]
        assert set(cut.table("walk", ["pid"]).column("pid").to_pylist()) == {vm["pid"]}
        assert cut.table("walk", ["addr"]).column_names == ["addr"]
        assert sum(b.num_rows for b in cut.iter_batches("walk", ["tid"], batch_rows=50)) == WALKS[vm["pid"]]
        assert cut.manifest["target"]["pids"] == [vm["pid"]]
        result = analyze_capture(cut)
        depth = result.tables["walk_depth"]
        assert depth["walks"].sum() == WALKS[vm["pid"]] and set(depth["depth"]) == {3}
        assert result.verdicts["crosscheck"]["matched"] == WALKS[vm["pid"]]
        assert result.info["vm"] == vm and "vms" not in result.tables


def test_the_whole_capture_lists_rows_per_vm(two_vms):
    cap = open_capture(two_vms)
    table = vm_rows(cap)
    assert table[["pid", "name", "walks", "walk_elements"]].values.tolist() == [
        [4001, "db", 300, 900], [4002, "web", 120, 360]]
    result = analyze_capture(cap)
    text = render_text(result)
    assert "Recorded VMs (cut one out with --vm PID|NAME)" in text
    # the per-vCPU rows of an uncut capture add up the VMs' vCPUs of one number: said, in text and JSON
    assert "NOTE: the capture holds 2 VMs and the per-vCPU rows" in text
    assert "add up their vCPUs" in analysis_json(result)["info"]["vm_note"]
    assert "vm_note" not in analyze_capture(VmCapture(cap, VMS[0])).info


def test_select_vm_by_pid_name_and_prefix(two_vms):
    manifest = open_capture(two_vms).manifest
    assert select_vm(manifest, "4002")["name"] == "web"
    assert select_vm(manifest, "db")["pid"] == 4001
    assert select_vm(manifest, "qemu-k")["pid"] == 4002
    with pytest.raises(UsageError, match=r"--vm qemu: 2 recorded VMs match \(recorded: pid 4001 qemu-system-x86 "
                                         r"guest db; pid 4002 qemu-kvm guest web\); give the pid"):
        select_vm(manifest, "qemu")
    with pytest.raises(UsageError, match="--vm 17: no recorded VM matches"):
        select_vm(manifest, "17")


def test_an_older_single_target_capture_still_lists_its_vm():
    manifest = {"target": {"pids": [77], "comm": "qemu-system-x86", "name": "g1", "threads": []}}
    assert capture_vms(manifest) == [{"pid": 77, "comm": "qemu-system-x86", "name": "g1", "vcpus": None,
                                      "memory": None}]
    assert select_vm(manifest, "g1")["pid"] == 77


def test_analyze_vm_option(two_vms):
    result = CliRunner().invoke(app, ["analyze", str(two_vms), "--vm", "web"])
    assert result.exit_code == 0, result.output
    assert "cut to VM pid 4002 (qemu-kvm, guest web)" in result.output
    bad = CliRunner().invoke(app, ["analyze", str(two_vms), "--vm", "nope"])
    assert bad.exit_code == 2 and "no recorded VM matches" in bad.output and "Traceback" not in bad.output


def test_report_vm_option(two_vms, tmp_path):
    page = tmp_path / "db.html"
    result = CliRunner().invoke(app, ["report", str(two_vms), "--vm", "db", "-o", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    depth, vms = (f"<h3>{html.escape(TABLE_TITLES[key])}</h3>" for key in ("walk_depth", "vms"))
    assert depth in text and vms not in text  # cut to one VM: no per-VM table
    whole = tmp_path / "all.html"
    assert CliRunner().invoke(app, ["report", str(two_vms), "-o", str(whole)]).exit_code == 0
    assert vms in whole.read_text()
