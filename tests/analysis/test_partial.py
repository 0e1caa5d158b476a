"""How much of a capture the recording window cut, on synthetic captures (no kernel)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracekit.analysis.analyze import analysis_json, analyze_capture, render_text
from tracekit.analysis.compare import capture_metrics
from tracekit.analysis.partial import partial_summary
from tracekit.analysis.report import render_report
from tracekit.analysis.walks import MAX_WALK_ELEMENTS, depth_of
from tracekit.capture import open_capture

from .walkref import rebuild_walks

WINDOW = {"clock": "CLOCK_MONOTONIC", "start_ns": 1000, "stop_ns": 9000, "seconds": 8e-6}
RECORDER = {"walk_elements_without_start": 3, "walk_elements_beyond_limit": 0, "ioctl_began_before": 1,
            "ioctl_unfinished": 1, "ioctl_exits_without_entry": 0, "lock_waits_began_before": 2,
            "lock_waits_unfinished": 1}


def test_a_walk_of_hundreds_of_thousands_of_elements_never_shows_a_negative_depth():
    """383,336 elements glued onto one walk (a capture made before the window existed) wrapped the int16
    depth to -9880; it saturates now, and the walk counts as malformed."""
    n = 383_336
    walk = pd.DataFrame({"walk_id": np.array([1, 2], np.uint64), "ts_ns": [0, 1], "tid": [5, 5],
                         "addr": np.array([0, 0], np.uint64), "pferr": np.array([7, 7], np.uint32)})
    element = pd.DataFrame({"walk_id": np.r_[np.ones(n, np.uint64), np.full(3, 2, np.uint64)],
                            "index": np.r_[np.arange(n) % 256, [0, 1, 2]].astype(np.int16),
                            "level": np.r_[np.full(n, 4), [4, 3, 2]].astype(np.int8),
                            "pte": np.ones(n + 3, np.uint64)})
    walks, _ = rebuild_walks(walk, element)
    assert walks["depth"].tolist() == [32767, 3]
    assert list(depth_of(np.array([3, 40_000, 70_000]))) == [3, 32767, 32767]
    summary = partial_summary({}, walks, None, None)
    assert summary["malformed_walks"] == 1 and summary["window"] is None


def test_counted_walk_frames_weigh_each_row():
    counts = pd.DataFrame({"depth": np.array([0, 3, MAX_WALK_ELEMENTS + 1], np.int16), "walks": [4, 100, 2]})
    summary = partial_summary({"window": WINDOW, "partial": RECORDER}, counts, None, None)
    assert (summary["walks_without_elements"], summary["malformed_walks"]) == (4, 2)
    assert summary["total"] == 3 + 2 + 1 + 4 + 2  # dropped by the recorder, then the walks; no ioctl rows


def test_partial_calls_from_rows_and_summaries():
    ioctl = pd.DataFrame({"partial": pd.Categorical(["", "began_before", "unfinished", None])})
    summary = pd.DataFrame({"partial": [2, None]})
    out = partial_summary({"partial": RECORDER}, None, ioctl, summary)
    assert out["ioctl_partial_calls"] == 2 + 2 and out["walks_without_elements"] == 0


def test_analyze_reports_the_window_and_the_partial_operations(make_capture):
    path = make_capture({
        "walk": {"walk_id": np.array([1], np.uint64), "addr": np.array([0x1000], np.uint64),
                 "pferr": np.array([7], np.uint32), "ts_ns": [2000]},
        "walk_element": {"walk_id": np.array([1, 1, 1], np.uint64), "index": np.array([0, 1, 2], np.uint8),
                         "level": np.array([4, 3, 2], np.int8), "pte": np.array([0x27, 0x27, 0xE7], np.uint64),
                         "ts_ns": [2000] * 3},
        "ioctl": {"ts_ns": [1000, 3000], "duration_ns": [500, 6000], "cmd": np.array([0xAEC0, 0xAE42], np.uint32),
                  "cmd_name": ["KVM_CLEAR_DIRTY_LOG", "KVM_GET_DIRTY_LOG"], "ret": [0, None],
                  "partial": ["began_before", "unfinished"]},
        "ioctl_summary": {"cmd": np.array([0xAE80], np.uint32), "cmd_name": ["KVM_RUN"], "count": [3],
                          "total_ns": [9000], "max_ns": [8000], "errors": [0], "partial": [2]},
    }, manifest={"window": WINDOW, "partial": RECORDER})
    cap = open_capture(path)
    result = analyze_capture(cap)
    partial = analysis_json(result)["info"]["partial"]
    assert partial["recorder"] == RECORDER and partial["window"] == WINDOW
    assert partial["ioctl_partial_calls"] == 4
    latency = result.tables["ioctl_latency"].set_index("cmd_name")["partial"].to_dict()
    assert latency == {"KVM_CLEAR_DIRTY_LOG": 1, "KVM_GET_DIRTY_LOG": 1, "KVM_RUN": 2}
    text = render_text(result)
    assert "recording window: 0.000 s of CLOCK_MONOTONIC" in text
    assert "3 walk elements without start" in text.replace("\n    ", " ")
    page = render_report(result, cap)  # the HTML report and compare say it too
    assert "recording window: 0.000 s of CLOCK_MONOTONIC" in page and "3 walk elements without start" in page
    assert capture_metrics(result).values[("work", "partial operations")] == (float(partial["total"]), "count")


def test_a_capture_without_a_window_says_so(make_capture):
    path = make_capture({"ioctl": {"duration_ns": [5], "cmd": np.array([0xAE42], np.uint32),
                                   "cmd_name": ["KVM_GET_DIRTY_LOG"], "ret": [0]}})
    cap = open_capture(path)
    result = analyze_capture(cap)
    assert result.info["partial"]["ioctl_partial_calls"] == 0 and result.info["partial"]["total"] == 0
    assert "not recorded (capture made before windows existed)" in render_text(result)
    assert "partial operations: none" in render_text(result)
    assert "not recorded (capture made before windows existed)" in render_report(result, cap)
    assert ("work", "partial operations") not in capture_metrics(result).values  # nothing to compare before windows existed
