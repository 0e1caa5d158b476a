"""The HTML report as a real browser sees it (headless Chromium from Debian, installed by scripts/install.sh).

Each sample's page is opened with a small script added to a copy of it that draws every figure onto a
canvas and counts the pixels that are not background: every figure must be decoded by the browser and
carry ink beyond its axes, and say it draws data (``data-points``). The compare page's inline SVG change
figure is checked the same way."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tracekit.analysis.analyze import analyze_capture
from tracekit.analysis.report import write_report
from tracekit.capture import open_capture

from .conftest import SAMPLES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-dev-shm-usage"]

#: Sets data-width and data-ink (share of pixels that are neither white nor near-white) on every figure.
PROBE = """<script>
addEventListener('load', () => { for (const img of document.querySelectorAll('img.figure')) {
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const px = g.getImageData(0, 0, c.width, c.height).data; let ink = 0;
  for (let i = 0; i < px.length; i += 4) if (px[i] < 200 || px[i + 1] < 200 || px[i + 2] < 200) ink++;
  img.setAttribute('data-width', img.naturalWidth); img.setAttribute('data-ink', (ink / (px.length / 4)).toFixed(4));
}});
</script>"""

#: sample -> the figures its page must have (every figure the capture has data for).
EXPECTED = {
    "x86-dirty-log-2m": {"where-time-goes", "timeline", "walk-depth", "visits-vs-model", "latency"},
    "x86-dirty-log-4k": {"where-time-goes", "timeline", "walk-depth", "visits-vs-model", "latency"},
    "lab-arm64-eager-enable": {"where-time-goes", "timeline", "visits-vs-model", "stage2-levels", "latency"},
    "lab-arm64-skip3-eager-enable": {"where-time-goes", "timeline", "visits-vs-model", "stage2-levels", "latency"},
    "lab-x86-tdp-eager": {"where-time-goes", "timeline", "stage2-levels", "latency"},
}


#: The compare page's figure is inline SVG: drawn onto a canvas through an image of its markup, it sets
#: data-width and data-ink on its <figure> as PROBE does on an <img>.
SVG_PROBE = """<script>
addEventListener('load', () => { for (const fig of document.querySelectorAll('figure[data-figure]')) {
  const svg = fig.querySelector('svg'); const img = new Image();
  img.onload = () => { const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
    const g = c.getContext('2d'); g.fillStyle = '#fff'; g.fillRect(0, 0, c.width, c.height); g.drawImage(img, 0, 0);
    const px = g.getImageData(0, 0, c.width, c.height).data; let ink = 0;
    for (let i = 0; i < px.length; i += 4) if (px[i] < 200 || px[i + 1] < 200 || px[i + 2] < 200) ink++;
    fig.setAttribute('data-width', img.naturalWidth); fig.setAttribute('data-ink', (ink / (px.length / 4)).toFixed(4)); };
  img.src = 'data:image/svg+xml;charset=utf-8,' + encodeURIComponent(new XMLSerializer().serializeToString(svg));
}});
</script>"""


def _dom(page, tmp_path, probe: str = PROBE) -> str:
    probed = page.with_suffix(".probe.html")
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", probe + "</body>"), encoding="utf-8")
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
                           "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=180,
                          check=True).stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install.sh installs it)")
@pytest.mark.parametrize("sample", sorted(EXPECTED))
def test_every_figure_of_the_report_has_data_in_chromium(sample, tmp_path):
    cap = open_capture(SAMPLES / f"{sample}.tkcap")
    page = tmp_path / "report.html"
    write_report(analyze_capture(cap), cap, page)
    dom = _dom(page, tmp_path)
    figures = {m.group(1): m.group(0) for m in re.finditer(r"<img class=\"figure\" data-figure=\"([\w-]+)\"[^>]*>", dom)}
    assert set(figures) == EXPECTED[sample]
    for name, tag in figures.items():
        attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', tag))
        assert int(attrs["points"]) > 0, (name, attrs)
        assert int(attrs["width"]) > 300, (name, "the browser did not decode the figure")
        assert float(attrs["ink"]) > 0.02, (name, attrs["ink"], "a figure with nothing drawn in it")
    assert "Verdicts" in dom.split("Where the time goes")[0]  # the verdicts come first
    lab = cap.manifest["source"]["kind"] == "lab"
    assert ("Emulated timings" in dom) == lab


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install.sh installs it)")
def test_the_report_screenshot_is_not_blank(tmp_path):
    cap = open_capture(SAMPLES / "x86-dirty-log-2m.tkcap")
    page = tmp_path / "report.html"
    write_report(analyze_capture(cap), cap, page)
    assert "49,217 of 49,217" in page.read_text(encoding="utf-8")
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1200,1600", page.as_uri()], capture_output=True, timeout=180, check=True)
    assert shot.stat().st_size > 20_000  # a blank page is a few kB; the figures are far more


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install.sh installs it)")
def test_the_compare_page_draws_its_change_figure_in_chromium(tmp_path):
    """``compare --html`` of the skip-level-3 patch on eager enable: the browser draws the change figure
    (bars beyond its axes) above the tables, and the emulated-timings note is on the page."""
    from typer.testing import CliRunner

    from tracekit.cli import app

    page = tmp_path / "compare.html"
    result = CliRunner().invoke(app, ["compare", str(SAMPLES / "lab-arm64-eager-enable.tkcap"), "--",
                                      str(SAMPLES / "lab-arm64-skip3-eager-enable.tkcap"), "--html", str(page)])
    assert result.exit_code == 0, result.output
    dom = _dom(page, tmp_path, SVG_PROBE)
    figure = re.search(r'<figure data-figure="change"[^>]*>', dom)
    assert figure, "no change figure"
    attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', figure.group(0)))
    # its five bars: 0.165 of the pixels; the same figure without bars (axes, labels): 0.038
    assert int(attrs["width"]) > 300 and float(attrs["ink"]) > 0.08, attrs
    assert dom.index('data-figure="change"') < dom.index("<table") and "timings are the emulator's" in dom
    assert "<td>L3 stage2_split_walker leaf:page visits</td>" in dom
