"""`tracekit doctor`: the report's shape, and its verdicts against independent evidence on this host."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from typer.testing import CliRunner

from tracekit.errors import ProbeLoadError
from tracekit.funcprobes.btf_offsets import BtfTypes
from tracekit.recorder.registry import family_names
from tracekit.cli import app

runner = CliRunner()


@functools.cache
def report() -> dict:
    """The JSON report, run once for the tests that read it (they do not change it)."""
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_shape_and_fixes():
    data = report()
    names = [c["name"] for c in data["checks"]]
    assert names == ["privileges", "tracefs", "btf", "kallsyms", "kvm", "bcc", "kernel_headers", "kprobes", "fentry"]
    for check in data["checks"]:
        assert set(check) == {"name", "ok", "detail", "fix"}
        assert isinstance(check["ok"], bool) and check["detail"]
    for name, fam in data["families"].items():
        assert isinstance(fam["available"], bool) and fam["reason"], name
    # the same families `tracekit record --probes` knows, so doctor and record cannot disagree
    assert list(data["families"]) == family_names()
    assert {"walk", "ioctl", "lock", "mmu", "stage2", "tdp"} <= set(data["families"])
    for fam in data["families"].values():
        assert fam["available"] == bool(fam["probes"])
    for check in data["checks"]:
        if not check["ok"] and check["name"] not in ("fentry",):
            assert check["fix"], check


def test_verdicts_agree_with_the_host():
    """Each verdict is checked against evidence gathered here independently of tracekit.capabilities."""
    data = report()
    checks = {c["name"]: c for c in data["checks"]}
    tracing = Path("/sys/kernel/tracing")
    assert checks["tracefs"]["ok"] == (tracing / "events").is_dir() or Path("/sys/kernel/debug/tracing/events").is_dir()
    assert checks["btf"]["ok"] == Path("/sys/kernel/btf/vmlinux").is_file()
    assert checks["kprobes"]["ok"] == ((tracing / "kprobe_events").exists()
                                       or Path("/sys/bus/event_source/devices/kprobe").exists())
    kvm_usable = os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)
    assert checks["kvm"]["ok"] == kvm_usable
    if (tracing / "events").is_dir():
        walk_present = (tracing / "events/kvmmmu/kvm_mmu_pagetable_walk").is_dir()
        assert data["families"]["walk"]["available"] == walk_present
        assert data["families"]["lock"]["available"] == (tracing / "events/lock/contention_begin").is_dir()
    if not checks["kprobes"]["ok"]:
        assert not data["families"]["tdp"]["available"] and not data["families"]["stage2"]["available"]


def test_text_report_fits_80_columns():
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    assert "probe families:" in result.stdout


def test_btf_reader_finds_functions_and_rejects_garbage(tmp_path):
    vmlinux = Path("/sys/kernel/btf/vmlinux")
    import pytest
    with pytest.raises(ProbeLoadError):
        BtfTypes(b"\x00" * 64)
    if not vmlinux.is_file():
        pytest.skip("no kernel BTF on this host")
    types = BtfTypes.load(vmlinux)
    assert types.function_id("schedule")
    assert types.member("task_struct", "pid").size == 4
    assert types.function_id("no_such_function_tracekit") is None


def test_function_probe_resolution_rows_in_the_text_report():
    """A function-probe family that can record lists each probe: how it attaches, or why it is absent."""
    from tracekit.doctor import format_report

    data = {"checks": [], "families": {"tdp": {"available": True, "reason": "2 probes", "probes": [], "resolution": [
        {"function": "tdp_iter_next", "symbol": "tdp_iter_next", "attach": "attached by register",
         "fetch": ["level=+80(%di):s32"], "reason": "exact symbol"},
        {"function": "tdp_mmu_split_huge_page", "symbol": None, "attach": "absent", "fetch": [],
         "reason": "tdp_mmu_split_huge_page absent: not in kallsyms nor BTF (inlined or renamed)"}]}}}  # fmt: skip
    lines = format_report(data)
    rows = " ".join(line.strip() for line in lines[lines.index("probe families:") + 2 :])
    assert rows == ("tdp_iter_next: attached by register (level=+80(%di):s32) "
                    "tdp_mmu_split_huge_page absent: not in kallsyms nor BTF (inlined or renamed)")
    assert all(len(line) <= 80 for line in lines)
