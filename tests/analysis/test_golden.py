"""Every sample's analysis (the JSON document and the text, of the whole capture and of one phase where the
sample has phases) equals its recorded golden copy in ``golden/``: how the analyses read a capture (batches,
passes, filters) may change, what they find may not. After an intended change of an analysis output,
rewrite the copies with ``TRACEKIT_UPDATE_GOLDEN=1`` and review their diff with the change."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tracekit.analysis.analyze import analysis_json, analyze_capture, render_text
from tracekit.capture import open_capture

from .conftest import SAMPLES

GOLDEN = Path(__file__).resolve().parent / "golden"
PHASE = "dirty-memory#2"
CASES = [(path.name, phase) for path in sorted(SAMPLES.glob("*.tkcap"))
         for phase in ((None, PHASE) if open_capture(path).manifest.get("workload", {}).get("phases") else (None,))]


def _outputs(name: str, phase: str | None) -> str:
    # Opened by its bare name from the samples directory, so neither the text (whose table widths follow
    # the path's length) nor the JSON depends on where the checkout lies.
    cwd = os.getcwd()
    os.chdir(SAMPLES)
    try:
        result = analyze_capture(open_capture(Path(name)), phase=phase)
    finally:
        os.chdir(cwd)
    doc = analysis_json(result)
    text = render_text(result, width=80)  # a fixed width: the copy must not follow the terminal or COLUMNS
    return json.dumps({"json": doc, "text": text.splitlines()}, indent=1, sort_keys=True, default=str) + "\n"


@pytest.mark.parametrize("name,phase", CASES, ids=lambda v: v or "whole")
def test_sample_analysis_equals_its_golden_copy(name, phase):
    golden = GOLDEN / f"{name.removesuffix('.tkcap')}{'.' + phase.replace('#', '-') if phase else ''}.json"
    outputs = _outputs(name, phase)
    if os.environ.get("TRACEKIT_UPDATE_GOLDEN") == "1":
        golden.write_text(outputs)
    assert golden.is_file(), f"no golden copy {golden.name}: run with TRACEKIT_UPDATE_GOLDEN=1"
    assert outputs == golden.read_text(), f"{name} ({phase or 'whole capture'}) differs from {golden.name}"
