"""The data behind the HTML report's figures (never its pixels): golden copies per sample, and what the
figures must show on captures made for the purpose (streamed KVM_RUN spans, few-sample series, the
phase cut, times relative to the capture start). After an intended change, rewrite the copies with
``TRACEKIT_UPDATE_GOLDEN=1`` and review their diff."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from tracekit.analysis.analyze import analyze_capture
from tracekit.analysis.report import render_report
from tracekit.analysis.reportdata import MIN_SAMPLES, report_data, report_data_json
from tracekit.capture import open_capture

from .conftest import SAMPLES

GOLDEN = Path(__file__).resolve().parent / "golden" / "report"
CASES = ["x86-dirty-log-2m", "x86-dirty-log-4k", "lab-arm64-eager-enable", "lab-arm64-skip3-eager-enable",
         "lab-x86-tdp-eager"]


def _data(name: str, phase: str | None = None):
    cap = open_capture(SAMPLES / f"{name}.tkcap")
    result = analyze_capture(cap, phase=phase)
    return cap, result, report_data(cap, result)


@pytest.mark.parametrize("name", CASES)
def test_sample_report_data_equals_its_golden_copy(name):
    _, _, data = _data(name)
    text = json.dumps(report_data_json(data), indent=1, sort_keys=True, default=str) + "\n"
    golden = GOLDEN / f"{name}.json"
    if os.environ.get("TRACEKIT_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.is_file(), f"no golden copy {golden.name}: run with TRACEKIT_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"{name}: the report's data differs from {golden.name}"


def test_where_the_time_goes_and_the_timeline_of_the_two_vcpu_sample():
    _, _, data = _data("x86-dirty-log-2m")
    time = data.time_table()
    # KVM_RUN, aggregated in the kernel, leads: the workload record's own KVM_RUN totals agree within 0.1%
    assert time["what"].head(2).tolist() == ["KVM_RUN vCPU 0 (tid 20933)", "KVM_RUN vCPU 1 (tid 20934)"]
    assert time["total_ns"].head(2).tolist() == [245845441, 217686020]
    assert not time["per_call"].head(2).any()
    assert data.rows == ["vCPU 0 (tid 20933)", "vCPU 1 (tid 20934)", "VMM main (tid 20914)"]
    lanes = data.timeline_table().set_index(["row", "kind"])
    # every walk is binned on its vCPU's row (65 system-area walks included), every mmu_lock wait too
    walks = lanes.xs("guest walk", level="kind")["events"]
    assert walks.sum() == 49217 and set(walks.index) == {"vCPU 0 (tid 20933)", "vCPU 1 (tid 20934)"}
    assert lanes.xs("mmu_lock wait", level="kind")["events"].sum() == 795
    assert lanes.xs("mmu_lock wait", level="kind")["busy_ns"].sum() == 1651509 + 898537
    # the view is the workload's phases (the recorder ran 0.54 s before it): what lies outside is counted
    assert data.view_start_ns > data.t0_ns and data.outside > 0
    # three CLEAR_DIRTY_LOG calls are listed, not drawn as a distribution
    few = {s.label: sorted(s.values) for s in data.few_samples()}
    assert few["KVM_CLEAR_DIRTY_LOG"] == [453003, 456929, 475506]
    assert [s.label for s in data.distributions()] == ["wait: mmu_lock"]


def test_lab_timings_are_flagged_and_the_lab_steps_are_the_phases():
    cap, result, data = _data("lab-arm64-eager-enable")
    assert data.phases["source"].unique().tolist() == ["lab"]
    # named as the Perfetto timeline and compare name them: the log step enabled dirty logging
    assert data.phases["phase"].tolist() == ["prefault", "touch", "enable-dirty-logging"]
    assert data.rows[0].startswith("vCPU 0 ")  # from the fault family's vcpu_id
    assert {s.label: s.count for s in data.distributions()}["split: stage2_split"] == 128
    page = render_report(result, cap)
    assert "Emulated timings (qemu-arm64-tcg)" in page
    assert page.index("Emulated timings") < page.index("Verdicts") < page.index("Where the time goes")


def test_every_output_of_a_lab_capture_says_its_timings_are_emulated():
    """analyze's text (under the capture line) and JSON, the report's banner and compare's NOTE: on the lab
    sample, and on none of the live sample's."""
    from tracekit.analysis.analyze import analysis_json, render_text
    from tracekit.analysis.compare_view import sides_notes

    for name, lab in (("lab-arm64-eager-enable", True), ("x86-dirty-log-4k", False)):
        cap, result, _ = _data(name)
        text = render_text(result, width=80).splitlines()
        assert (text[2].startswith("NOTE: emulated machine (QEMU TCG): event counts are exact") if lab
                else not any("emulated machine" in line for line in text))
        assert (analysis_json(result)["info"]["timing_note"] is not None) == lab
        assert ("Emulated timings" in render_report(result, cap)) == lab
        notes = sides_notes(["a"], [cap.manifest], ["b"], [cap.manifest])
        assert any("timings are the emulator's" in note for note in notes) == lab


def test_a_phase_cut_shows_that_phase_only():
    _, result, data = _data("x86-dirty-log-2m", "dirty-memory#2")
    phase = result.tables["phases"].set_index("phase").loc["dirty-memory#2"]
    assert (data.view_start_ns, data.view_end_ns) == (data.t0_ns, data.end_ns) == (phase["start_ns"], phase["end_ns"])
    walks = data.timeline_table().set_index(["row", "kind"]).xs("guest walk", level="kind")["events"].sum()
    assert walks == 16384 + 8  # the dirty-logging faults of pass 2 and its system-area walks
    assert not any(s.aggregated for s in data.series)  # the kernel's KVM_RUN totals cannot be cut by phase


def _kvm_runs(make_capture, first_ns: int, starts: np.ndarray, run_ns: int, vcpu: int, **manifest):
    """A capture of one KVM_CHECK_EXTENSION call of tid 7 at ``first_ns`` and KVM_RUN calls of vCPU ``vcpu``
    (tid 8) at ``starts``, ``run_ns`` each, recorded in a window of 0-80 ms; its analysis and report data."""
    runs = len(starts)
    path = make_capture({"ioctl": {
        "ts_ns": np.concatenate([[first_ns], starts]), "tid": [7] + [8] * runs,
        "duration_ns": np.concatenate([[2_000], np.full(runs, run_ns)]),
        "cmd": np.array([0xAE03] + [0xAE80] * runs, np.uint32),
        "cmd_name": ["KVM_CHECK_EXTENSION"] + ["KVM_RUN"] * runs, "ret": [0] * (runs + 1)}},
        manifest={"target": {"pids": [1], "threads": [{"tid": 8, "comm": "vcpu", "vcpu": vcpu}]},
                  "window": {"clock": "CLOCK_MONOTONIC", "start_ns": 0, "stop_ns": 80_000_000, "seconds": 0.08},
                  **manifest})
    cap = open_capture(path)
    result = analyze_capture(cap)
    return cap, result, report_data(cap, result)


def test_streamed_kvm_run_calls_are_spans_on_their_vcpu_row(make_capture):
    runs = 3 * MIN_SAMPLES
    cap, result, data = _kvm_runs(make_capture, 0, np.arange(runs, dtype=np.int64) * 1_000_000 + 10_000_000,
                                  400_000, 3)
    lanes = data.timeline_table().set_index(["row", "kind"])
    run = lanes.loc[("vCPU 3 (tid 8)", "KVM_RUN")]
    assert run["events"] == runs and run["busy_ns"] == runs * 400_000
    assert lanes.loc[("tid 7", "ioctl"), "busy_ns"] == 2_000
    assert [s.label for s in data.distributions()] == ["KVM_RUN vCPU 3 (tid 8)"]
    assert [s.label for s in data.few_samples()] == ["KVM_CHECK_EXTENSION"]
    page = render_report(result, cap)
    assert 'data-figure="timeline"' in page.replace("'", '"') and "Emulated timings" not in page
    assert data.t0_from == "the recording window's start" and data.end_ns == 80_000_000
    assert "every family from +0.000 ms to +80.000 ms" in page


def test_a_thread_whose_events_all_lie_outside_the_timeline_gets_no_empty_row(make_capture, monkeypatch):
    """The timeline shows the phases (10-20 ms of an 80 ms recording): a thread whose only call came before
    them (tid 7, like the demo's second python thread) is counted in the caption, not drawn as an empty row."""
    from tracekit.analysis import reportfigures

    phases = [{"name": "populate", "iteration": None, "start_ns": 10_000_000, "end_ns": 20_000_000}]
    _, _, data = _kvm_runs(make_capture, 1_000_000, np.arange(MIN_SAMPLES, dtype=np.int64) * 400_000 + 11_000_000,
                           300_000, 0, workload={"workload": "dirty-log", "phases": phases})
    assert data.rows == ["vCPU 0 (tid 8)", "tid 7"] and data.outside == 1
    labels = []
    png = reportfigures._png

    def keep(fig):
        labels.append([t.get_text() for t in fig.axes[-1].get_yticklabels()])
        return png(fig)

    monkeypatch.setattr(reportfigures, "_png", keep)
    figure = reportfigures._timeline(data)
    assert labels == [["vCPU 0 (tid 8)"]] and "1 events before or after the phases" in figure.caption


def test_tables_show_times_since_the_capture_start_with_units():
    cap, result, _ = _data("x86-dirty-log-2m")
    page = render_report(result, cap)
    tables = page[page.index("<h2>Tables</h2>"):]
    assert "_ns" not in re.sub(r"<[^>]+>", " ", tables).replace("kvm_mmu", "")  # no raw header like total_ns
    visible = re.sub(r"<[^>]+>", " ", page)
    assert not re.search(r"\b\d{10,}\b", visible)  # no raw CLOCK_MONOTONIC nanoseconds anywhere on the page
    assert "+538.835 ms" in tables  # the setup phase's start, 539 ms after the first recorded event (a lock wait)


def test_counts_spanning_orders_of_magnitude_are_drawn_on_log_axes_with_their_values(monkeypatch):
    """The lab sample's 128 level-2 split visits beside 65,536 level-3 ones, and the live sample's 32 four-level
    walks beside 24,576 three-level ones: the level figures (and where the time goes, KVM_RUN's 246 ms
    beside a 2 us ioctl) use a log axis, each bar written with its value, a zero written at the baseline."""
    from tracekit.analysis import reportfigures

    drawn: dict[tuple[str, str], tuple[str, str, set[str]]] = {}
    png = reportfigures._png
    sample = ""

    def keep(fig):
        ax = fig.axes[-1]
        drawn[(sample, ax.get_xlabel())] = (ax.get_xscale(), ax.get_yscale(), {t.get_text() for t in ax.texts})
        return png(fig)

    monkeypatch.setattr(reportfigures, "_png", keep)
    for sample in ("lab-arm64-eager-enable", "x86-dirty-log-2m"):
        _, result, data = _data(sample)
        reportfigures.all_figures(result, data)
    def lab(label):
        return drawn[("lab-arm64-eager-enable", label)]

    def live(label):
        return drawn[("x86-dirty-log-2m", label)]

    assert lab("page-table level")[1] == "log" and {"128", "65,536", "0"} <= lab("page-table level")[2]
    assert lab("stage-2 level")[1] == "log"
    assert live("guest walk depth (levels read)")[1] == "log"
    assert {"24,576", "32", "33"} <= live("guest walk depth (levels read)")[2]
    assert live("page-table level")[1] == "log" and {"49,217", "65"} <= live("page-table level")[2]
    assert live("total time (ms, log scale)")[0] == "log" and live("latency (µs, log scale)")[0] == "log"
