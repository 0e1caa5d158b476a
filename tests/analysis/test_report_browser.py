"""The HTML report as a real browser sees it (headless Chromium from Debian: apt-get install chromium)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tracekit.analysis.analyze import analyze_capture
from tracekit.analysis.report import FIGURES, write_report
from tracekit.capture import open_capture

from .conftest import SAMPLES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_chromium(tmp_path):
    page = tmp_path / "report.html"
    write_report(analyze_capture(open_capture(SAMPLES / "x86-dirty-log-2m.tkcap")), page)
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    for name in FIGURES:
        assert f'data-figure="{name}"' in dom, name
    assert "Model cross-check" in dom and "49,217 of 49,217" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1200,1600", page.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 20_000  # a blank page is a few kB; four figures are far more
