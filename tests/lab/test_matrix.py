"""``tracekit lab matrix`` without booting: the plan, resume, and the compare table from real lab captures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from tracekit.cli import app
from tracekit.errors import LabError, NotApplicable, UsageError
from tracekit.lab import matrix, scenarios

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


class FakeLab:
    """Stands for ``run_lab``: copies a real lab capture per scenario and remembers what it was asked."""

    def __init__(self, by_scenario: dict[str, str], fail: dict[str, Exception] | None = None):
        self.by_scenario, self.fail, self.calls = by_scenario, fail or {}, []

    def __call__(self, arch, scenario, output, *, kernel=None, timeout=None, command_line=""):
        self.calls.append((scenario, kernel))
        if scenario in self.fail:
            raise self.fail[scenario]
        shutil.copytree(SAMPLES / self.by_scenario[scenario], output)
        return SimpleNamespace(checks=[{"count": "x", "expected": 1, "measured": 1, "ok": True}],
                               kernel_release="6.12", boot_seconds=1.0)  # fmt: skip


X86 = {"tdp-eager": "lab-x86-tdp-eager.tkcap", "tdp-eager@eager_page_split=N": "lab-x86-tdp-lazy.tkcap"}


def _row(table: matrix.Table, label: str) -> list[str]:
    return next(row["cells"] for row in table.rows if row["label"] == label)


def test_scenario_variants_are_canonical_and_checked():
    chosen = scenarios.get("contention@vcpus=4", "arm64")
    assert (chosen.name, chosen.vcpus, chosen.memory_mib) == ("contention@vcpus=4", 4, 256)
    lazy = scenarios.get("tdp-eager@vcpus=1,eager_page_split=n", "x86")
    assert lazy.name == "tdp-eager@eager_page_split=N,vcpus=1" and lazy.eager_page_split is False
    assert scenarios.get(lazy.name, "x86") == lazy  # the guest resolves the same name to the same scenario
    # an eager split switched off no longer needs its kernel capability; one switched on does
    assert scenarios.get("contention@eager_split_chunk=0", "arm64").needs == ()  # 5.10: the qspinlock stand-in
    assert lazy.needs == () and scenarios.get("tdp-lazy@eager_page_split=Y", "x86").needs == ("eager-page-split",)
    assert "eager-split" in scenarios.get("lazy@eager_split_chunk=2M", "arm64").needs
    assert scenarios.get("contention@eager_split_chunk=0", "arm64").evidence == ("guest_abort",)  # no split to see
    # ... and its exact counts follow the switched semantics, or are dropped where none is stated
    assert scenarios.get("tdp-clear@eager_page_split=N", "x86").expected == {"kvm_mmu_split_huge_page": 0}
    assert lazy.expected_without == scenarios.get("tdp-lazy", "x86").expected_without
    one_chunk = scenarios.get("eager-enable@eager_split_chunk=1G", "arm64")
    assert (one_chunk.expected, one_chunk.model_counts) == ({}, ()) and "changed" in one_chunk.expected_note
    assert scenarios.get("eager-enable@vcpus=2", "arm64").expected == scenarios.get("eager-enable", "arm64").expected
    for bad, arch in (("contention@vcpus=3", "arm64"), ("contention@tdp=1", "arm64"), ("tdp-eager@eager_page_split=x", "x86"),
                      ("contention@eager_page_split=N", "arm64"), ("contention@vcpus", "arm64")):  # fmt: skip
        with pytest.raises(UsageError):
            scenarios.get(bad, arch)


def test_plan_lays_out_kernel_scenario_run(tmp_path):
    cells = matrix.plan("arm64", ["debian:trixie", "/k/Image"], ["contention"], tmp_path, vcpus=[1, 2], repeat=2)
    assert len(cells) == 2 * 2 * 2
    assert cells[0].capture == tmp_path / "debian-trixie" / "contention@vcpus=1" / "1.tkcap"
    assert cells[-1].capture == tmp_path / "k_Image" / "contention@vcpus=2" / "2.tkcap"
    x86 = matrix.plan("x86", ["debian:trixie,eager_page_split=N"], ["tdp-eager"], tmp_path)
    assert (x86[0].scenario, x86[0].label) == ("tdp-eager@eager_page_split=N", "tdp-eager")
    for args in (("arm64", ["a", "a"], ["lazy"]), ("arm64", ["a"], ["nope"]), ("mips", ["a"], ["lazy"]),
                 ("arm64", ["a,eager_page_split=N"], ["lazy"]), ("arm64", [",x=1"], ["lazy"])):  # fmt: skip
        with pytest.raises(UsageError):
            matrix.plan(*args, tmp_path)
    for bad in ({"repeat": 0}, {"vcpus": [0]}, {"vcpus": [3]}):
        with pytest.raises(UsageError):
            matrix.plan("arm64", ["a"], ["contention"], tmp_path, **bad)
    for hostile in ("..", ".", "../../etc", "/"):
        (cell,) = matrix.plan("arm64", [hostile], ["lazy"], tmp_path)
        assert tmp_path in cell.capture.parents and ".." not in cell.capture.relative_to(tmp_path).parts


def test_table_counts_exact_from_real_captures(tmp_path):
    cells = matrix.plan("x86", ["debian:trixie", "debian:trixie,eager_page_split=N"], ["tdp-eager"], tmp_path)
    outcomes = matrix.run_matrix("x86", cells, run_lab=FakeLab(X86))
    (table,) = matrix.build_tables("x86", cells, outcomes)
    assert _row(table, "runs") == ["1 of 1", "1 of 1"]
    assert _row(table, "check: kvm_mmu_split_huge_page (exact)") == ["32 (ok: expected 32)"] * 2
    assert _row(table, "kvm.eager_page_split") == ["Y", "N"]
    # where the 32 splits happen: at enable with eager splitting, on the first write of each huge page without
    assert _row(table, "enabling_dirty_logging_time: `kvmmmu:kvm_mmu_split_huge_page`") == ["32", "0"]
    assert _row(table, "iteration_1_dirty_memory: `kvmmmu:kvm_mmu_split_huge_page`") == ["0", "32"]
    assert _row(table, "iteration_1_dirty_memory: tdp_map (`kvm_tdp_mmu_map`)") == ["0", "32"]
    assert _row(table, "iteration_1_dirty_memory: fast_page_fault (`fast_page_fault`)") == ["16,384", "16,384"]
    assert _row(table, "visits: tdp_iter_next level 1 step") == ["49,152", "32,736"]
    assert _row(table, "probes not attached") == ["ept_violation, recover_huge_pages"] * 2
    # a probe that is not attached is never shown as a count of 0; rows with nothing anywhere are left out
    assert not any("ept_violation" in row["label"] for row in table.rows)
    assert not any(row["kind"] == "count" and set(row["cells"]) == {"0"} for row in table.rows)


def test_emulated_times_are_marked_and_not_compared(tmp_path):
    cells = matrix.plan("x86", ["debian:trixie"], ["tdp-eager"], tmp_path, repeat=2)
    outcomes = matrix.run_matrix("x86", cells, run_lab=FakeLab(X86))
    (table,) = matrix.build_tables("x86", cells, outcomes)
    times = [row for row in table.rows if row["kind"] == "emulated"]
    assert times and all(f"({matrix.EMULATED})" in row["label"] for row in times)
    enable = next(row for row in times if row["label"].startswith("enabling_dirty_logging_time"))
    assert enable["values"][0]["runs"] == [pytest.approx(48.707, abs=1e-3)] * 2 and enable["cells"][0] == "48.7 ± 0.0"
    text = matrix.render_markdown([table])
    assert "durations are those of the emulator" in text
    assert all(row["kind"] != "emulated" for row in table.rows if row["key"].startswith("check:"))


def test_not_applicable_and_failed_cells_say_why(tmp_path):
    lab = FakeLab({"contention": "lab-arm64-contention.tkcap"},
                  fail={"contention@vcpus=2": LabError("the guest scenario failed: probe refused")})  # fmt: skip
    old = NotApplicable("scenario contention is not applicable on 6.1.0-41-cloud-arm64: arm64 eager page splitting "
                        "arrived in 6.4")  # fmt: skip
    cells = matrix.plan("arm64", ["debian:trixie", "debian:bookworm"], ["contention"], tmp_path)

    def by_kernel(arch, scenario, output, *, kernel=None, **options):
        if kernel == "debian:bookworm":
            raise old
        return lab(arch, scenario, output, kernel=kernel, **options)

    outcomes = matrix.run_matrix("arm64", cells, run_lab=by_kernel)
    assert [o["status"] for o in outcomes] == ["ok", "n/a"] and len(lab.calls) == 1
    assert not cells[1].capture.exists()  # never booted, nothing written but the outcome
    (table,) = matrix.build_tables("arm64", cells, outcomes)
    na = f"n/a: {old}"
    assert _row(table, "runs") == ["1 of 1", na]  # the reason once; the other rows say n/a
    assert _row(table, "mmu_lock waits, read, by vCPU") == ["109", "n/a"]
    assert _row(table, "mmu_lock waits, write, by VMM in clear_while_touching") == ["105", "n/a"]
    assert _row(table, "mmu_lock waits") == ["214", "n/a"]
    failing = matrix.plan("arm64", ["debian:trixie"], ["contention"], tmp_path / "f", vcpus=[2])
    outcomes = matrix.run_matrix("arm64", failing, run_lab=lab)
    (table,) = matrix.build_tables("arm64", failing, outcomes)
    assert outcomes[0]["status"] == "failed" and len(table.rows) == 1
    assert "| runs | failed: the guest scenario failed: probe refused |" in matrix.render_markdown([table])


def test_check_rows_say_why_a_count_is_missing():
    exact = {"count": "stage2_split", "kind": "exact", "expected": 128, "measured": 128, "ok": True, "applicable": True}
    assert matrix._check_row(exact) == ("check: stage2_split (exact)", "check", "128 (ok: expected 128)")
    assert matrix._check_row({**exact, "measured": 0, "ok": False})[2] == "0 (not met: expected 128)"
    absent = {**exact, "applicable": False, "measured": None, "reason": "not applicable on 6.1: eager split arrived in 6.4"}
    assert matrix._check_row(absent)[2] == "n/a: not applicable on 6.1: eager split arrived in 6.4"
    refused = {**exact, "ok": False, "measured": None, "reason": "stage2_split not attached: Invalid fetch argument"}
    assert matrix._check_row(refused)[2] == "stage2_split not attached: Invalid fetch argument"
    fired = {"count": "guest_abort", "kind": "fired", "expected": 1, "measured": 70, "ok": True}
    assert matrix._check_row(fired) == ("check: guest_abort fired (evidence)", "check", 70)


def test_second_invocation_resumes(tmp_path):
    lab = FakeLab(X86, fail={"tdp-eager@eager_page_split=N": LabError("timed out")})
    cells = matrix.plan("x86", ["debian:trixie", "debian:trixie,eager_page_split=N"], ["tdp-eager"], tmp_path, repeat=2)
    first = matrix.run_matrix("x86", cells, run_lab=lab)
    assert [o["status"] for o in first] == ["ok", "ok", "failed", "failed"] and len(lab.calls) == 4
    # interrupted in the middle of a run: its capture has no outcome yet
    (cells[1].outcome_path).unlink()
    (cells[1].capture / "capture.json").write_text(json.dumps({"status": "recording"}))
    lab.calls.clear()
    second = matrix.run_matrix("x86", cells, run_lab=lab)
    assert lab.calls == [("tdp-eager", "debian:trixie")] and second[0] == first[0]
    assert second[2]["status"] == "failed"  # a failure is reused, not retried ...
    cells[0].outcome_path.write_text("{not json")  # a damaged record is run again, never a traceback
    lab.calls.clear()
    assert matrix.run_matrix("x86", cells[:1], run_lab=lab)[0]["status"] == "ok" and len(lab.calls) == 1
    del lab.fail["tdp-eager@eager_page_split=N"]
    lab.calls.clear()
    third = matrix.run_matrix("x86", cells, run_lab=lab, retry_failed=True)  # ... unless asked
    assert len(lab.calls) == 2 and [o["status"] for o in third] == ["ok"] * 4


def test_cli_writes_markdown_and_json(tmp_path, monkeypatch):
    import tracekit.lab.runner

    monkeypatch.setattr(tracekit.lab.runner, "run_lab", FakeLab(X86))
    out = tmp_path / "m"
    result = CliRunner().invoke(app, ["lab", "matrix", "--arch", "x86", "--kernel", "debian:trixie", "--kernel",
                                      "debian:trixie,eager_page_split=N", "-s", "tdp-eager", "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "| `debian:trixie` | `debian:trixie,eager_page_split=N` |" in result.output
    doc = json.loads((out / "matrix.json").read_text())
    assert doc["schema"] == "tracekit.lab.matrix/1" and (out / "matrix.md").read_text() in result.output
    assert [r["status"] for r in doc["runs"]] == ["ok", "ok"]
    monkeypatch.setattr(tracekit.lab.runner, "run_lab", FakeLab(X86, fail={"tdp-eager": LabError("guest died")}))
    failed = CliRunner().invoke(app, ["lab", "matrix", "--arch", "x86", "--kernel", "debian:bookworm", "-s",
                                      "tdp-eager", "-o", str(out)])  # fmt: skip
    assert failed.exit_code == 1 and "| runs | failed: guest died |" in failed.output
    bad = CliRunner().invoke(app, ["lab", "matrix", "--arch", "x86", "--kernel", "k", "-s", "tdp-eager", "--vcpus",
                                   "1,two", "-o", str(out)])  # fmt: skip
    assert bad.exit_code == 2 and "--vcpus" in bad.output and "Traceback" not in bad.output


def test_sample_copy_keeps_what_the_table_reads(tmp_path):
    cells = matrix.plan("arm64", ["debian:trixie"], ["contention"], tmp_path / "full")
    outcomes = matrix.run_matrix("arm64", cells, run_lab=FakeLab({"contention": "lab-arm64-contention.tkcap"}))
    (cells[0].capture.parent / "1.tkcap.console.log").write_text("console")
    matrix.copy_for_sample(tmp_path / "full", tmp_path / "small")
    small = matrix.plan("arm64", ["debian:trixie"], ["contention"], tmp_path / "small")
    again = matrix.run_matrix("arm64", small, run_lab=_refuse)
    assert again == outcomes
    assert matrix.build_tables("arm64", small, again)[0].rows == matrix.build_tables("arm64", cells, outcomes)[0].rows
    manifest = json.loads((small[0].capture / "capture.json").read_text())
    assert set(manifest["families"]) == {"stage2_visit", "lock"} and manifest["sample_trimmed"]["fault"] > 0
    assert not list((tmp_path / "small").rglob("*.log"))


def _refuse(*args, **options):
    raise AssertionError("a resumed matrix ran a lab again")
