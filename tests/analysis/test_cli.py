"""The analyze / report / compare commands and the Perfetto export, through the real CLI."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from tests.synthetic import write_synthetic_capture
from tracekit.cli import app

from .conftest import SAMPLES

runner = CliRunner()
SAMPLE = str(SAMPLES / "x86-dirty-log-4k.tkcap")


def test_analyze_text_fits_the_width_and_keeps_every_column():
    """COLUMNS=80 (a terminal of 80): every line fits and every column of every table is there (a wide
    table in pieces, each repeating its key column); into a pipe (no COLUMNS) each table is in one piece
    at its natural width, the same columns, no colour codes."""
    for env, widest in (({"COLUMNS": "80"}, 80), ({}, None)):
        result = runner.invoke(app, ["analyze", SAMPLE], env={"COLUMNS": None, "NO_COLOR": None, **env})
        assert result.exit_code == 0, result.output
        assert "model cross-check: match: 8,213 of 8,213 walks match (100.00%)" in result.output
        assert "\x1b[" not in result.output and "columns not shown" not in result.output
        # The ioctl table: in one piece into a pipe; at 80 columns in pieces that each repeat cmd_name.
        pieces = [line.split() for line in result.output.splitlines() if line.startswith("cmd_name ")]
        ioctl = pieces[:1] if widest is None else pieces[:2]  # then the memslot table's
        assert [name for piece in ioctl for name in piece[1:]] == ["count", "errors", "errnos", "total", "mean",
                                                                   "p50", "p99", "max"]
        if widest:
            assert max(len(line) for line in result.output.splitlines()) <= widest


def test_analyze_json_and_phase():
    result = runner.invoke(app, ["analyze", SAMPLE, "--json", "--phase", "dirty-memory#2"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["schema"] == "tracekit.analyze/1" and doc["info"]["phase"] == "dirty-memory#2"
    # 4,096 write-protect faults of the second pass plus a few system-area walks (21 in the whole run)
    assert 4096 <= sum(r["walks"] for r in doc["tables"]["walk_depth"]) <= 4096 + 21
    assert doc["verdicts"]["crosscheck"]["verdict"] == "match"


def test_bad_input_is_one_line():
    result = runner.invoke(app, ["analyze", SAMPLE, "--phase", "nope"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "no phase 'nope'" in result.output
    result = runner.invoke(app, ["analyze", str(SAMPLES / "missing.tkcap")])
    assert result.exit_code == 1 and "no such capture" in result.output
    result = runner.invoke(app, ["compare", SAMPLE])
    assert result.exit_code == 2 and "after a '--'" in result.output


def test_report_writes_self_contained_html(tmp_path):
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", SAMPLE, "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    for name in ("where-time-goes", "timeline", "walk-depth", "visits-vs-model", "latency"):
        assert f"data-figure='{name}'" in page
    assert "src='data:image/png;base64," in page and "http" not in page.split("<body>")[1].split("</h1>")[0]
    assert "<script" not in page
    paths = page.split("<h3>Guest walks per cause, level path and access code (pferr)</h3>")[1].split("</table>")[0]
    rows = re.findall(r"<tr>\s*<td[^>]*>(\w+)</td>\s*<td[^>]*>([^<]+)</td>\s*<td[^>]*>([^<]+)</td>", paths)
    assert rows and all(re.fullmatch(r"0x[0-9a-f]+", pferr) for _, _, pferr in rows)  # pferr in hex, not decimal


def test_compare_runs(tmp_path):
    a = [tmp_path / f"a{i}.tkcap" for i in range(2)]
    b = [tmp_path / f"b{i}.tkcap" for i in range(2)]
    for i, path in enumerate(a):
        write_synthetic_capture(path, 2000 + 10 * i, extra_rows=200, seed=i)
    for i, path in enumerate(b):
        write_synthetic_capture(path, 1000 + 10 * i, extra_rows=200, seed=i)
    result = runner.invoke(app, ["compare", *map(str, a), "--", *map(str, b), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["schema"] == "tracekit.compare/2"
    walks = {m["metric"]: m for m in doc["metrics"]}["guest walks"]
    # A: 2000, 2010 (mean 2005, stdev 7.07); B: 1000, 1010 (mean 1005, stdev 7.07): -49.88% (stdev 0.39%)
    assert walks["group"] == "work" and walks["n_a"] == walks["n_b"] == 2
    assert walks["change_pct"] == pytest.approx(-49.875, abs=1e-3) and walks["noise"] == "beyond"
    assert walks["change_stdev_pct"] == pytest.approx(100 * (50 + (1005 * 7.0711 / 2005) ** 2) ** 0.5 / 2005, abs=1e-3)
    assert walks["text"] == "-49.88% guest walks (stdev 0.39%)"
    text = runner.invoke(app, ["compare", *map(str, a), "--", *map(str, b)], env={"COLUMNS": "80"})
    assert text.exit_code == 0, text.output
    assert "2,005 ± 7.1" in text.output and "-49.88% ± 0.39%" in text.output
    assert max(len(line) for line in text.output.splitlines()) <= 80
    page = tmp_path / "compare.html"
    html = runner.invoke(app, ["compare", *map(str, a), "--", *map(str, b), "--html", str(page), "--json"])
    assert html.exit_code == 0, html.output
    text = page.read_text()
    assert "data-figure='change'" in text and "<svg" in text and "<rect" in text  # the bars drawn
    assert "<td>guest walks</td><td>2,005 ± 7.1</td><td>1,005 ± 7.1</td><td>-49.88% ± 0.39%</td>" in text


def test_compare_takes_options_anywhere(tmp_path):
    """``A -- B --phase X --json`` and ``--phase X A -- B --json`` are the same command."""
    a, b = tmp_path / "a.tkcap", tmp_path / "b.tkcap"
    write_synthetic_capture(a, 300, extra_rows=50, seed=1)
    write_synthetic_capture(b, 200, extra_rows=50, seed=2)
    after = runner.invoke(app, ["compare", str(a), "--", str(b), "--phase", "nope", "--json"])
    before = runner.invoke(app, ["compare", "--phase", "nope", str(a), "--", str(b), "--json"])
    assert after.exit_code == before.exit_code == 2, after.output
    assert after.output == before.output and "--phase needs phases" in after.output
    plain = runner.invoke(app, ["compare", str(a), "--", str(b), "--json", "--all"])
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.output)["b"] == [str(b)]
    missing = runner.invoke(app, ["compare", str(a), "--", str(b), "--phase"])
    assert missing.exit_code == 2 and missing.output.startswith("tracekit: error: Option '--phase' requires")


def test_compare_cut_to_a_phase_says_so_and_keeps_its_runtimes_only(tmp_path):
    """``--phase dirty-memory`` on the samples: the text and the HTML page name the cut, and the phase group
    holds the dirty-memory runtimes only (not setup's or populate's, which the cut does not measure)."""
    a, b = (str(SAMPLES / "compare" / f"dirty-log-{size}-1.tkcap") for size in ("2m", "4k"))
    page = tmp_path / "c.html"
    text = runner.invoke(app, ["compare", a, "--", b, "--phase", "dirty-memory", "--all", "--html", str(page)],
                         env={"COLUMNS": None})
    assert text.exit_code == 0, text.output
    assert "cut to phase dirty-memory:" in text.output and "cut to phase dirty-memory:" in page.read_text()
    doc = json.loads(runner.invoke(app, ["compare", a, "--", b, "--phase", "dirty-memory", "--json"]).output)
    phases = [m["metric"] for m in doc["metrics"] if m["group"] == "phase"]
    assert phases == ["dirty-memory#1 runtime", "dirty-memory#2 runtime", "dirty-memory runtime (all 2)"]
    assert "cut to phase" not in runner.invoke(app, ["compare", a, "--", b]).output


@pytest.mark.slow  # 150 k JSON events; fast tier: the JSON writer on the arm64 sample (below), the x86 tracks in test_perfetto
def test_export_perfetto_json(tmp_path):
    out = tmp_path / "t.json"
    result = runner.invoke(app, ["export", str(SAMPLES / "x86-dirty-log-2m.tkcap"), "--perfetto", str(out),
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    trace = json.loads(out.read_text())
    events = trace["traceEvents"]
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"vCPU 0 (tid 20933)", "vCPU 1 (tid 20934)", "vCPU 0 (tid 20933): guest walks"} <= names
    slices = {e["cat"] for e in events if e["ph"] == "X"}
    assert {"ioctl", "lock", "phase"} <= slices
    counters = [e for e in events if e["ph"] == "C" and e["name"] == "guest walks/s"]
    # every walk is counted once: the counter holds walks/s per 10 ms bin
    assert sum(e["args"]["rate"] for e in counters) // 100 == 49_217
    ioctls = [e for e in events if e.get("cat") == "ioctl" and e["ph"] == "X"]
    assert len(ioctls) == 29 and all(e["dur"] >= 0 for e in ioctls)
    assert sum(e["name"] == "mmu_lock" for e in events if e.get("cat") == "lock") == 795


@pytest.mark.parametrize("sample", [pytest.param(p.name, marks=() if p.name == "lab-arm64-eager-enable.tkcap"
                                                 else pytest.mark.slow) for p in sorted(SAMPLES.glob("*.tkcap"))])
def test_perfetto_export_of_every_sample_is_what_the_json_importer_needs(tmp_path, sample):
    """Perfetto's JSON importer (and the legacy trace viewer) need ``ph``/``pid`` on every event,
    ``ts``/``tid``/``dur`` on complete (``X``) events, and complete events of one thread properly nested:
    a slice that starts inside another must end inside it, else trace processor drops it (its import
    statistic ``slice_drop_overlapping_complete_event``)."""
    out = tmp_path / "t.json"
    result = runner.invoke(app, ["export", str(SAMPLES / sample), "--perfetto", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    events = json.loads(out.read_text())["traceEvents"]
    assert events and all("ph" in e and "pid" in e for e in events)
    tracks: dict = {}
    for e in (e for e in events if e["ph"] == "X"):
        assert e["dur"] >= 0 and isinstance(e["ts"], (int, float))
        tracks.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in tracks.values():
        open_ends: list = []
        for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):
            while open_ends and open_ends[-1] <= start:
                open_ends.pop()
            assert not open_ends or end <= open_ends[-1], f"slice {start}-{end} overlaps the end of its parent"
            open_ends.append(end)


def test_an_output_that_does_not_fit_is_one_line(tmp_path):
    """The sample's own 2-iteration output fits; one of a 20-iteration run is refused in one line, exit 1."""
    fits = runner.invoke(app, ["analyze", SAMPLE, "--json", "--selftest-output",
                               str(SAMPLES / "x86-dirty-log-4k.out")])
    assert fits.exit_code == 0, fits.output
    assert json.loads(fits.output)["info"]["phases_from"] == "--selftest-output"
    lines = ["Populate memory time: 0.500000000s", "Enabling dirty logging time: 0.000100000s"]
    for i in range(1, 21):
        lines += [f"Iteration {i} dirty memory time: 0.010000000s", f"Iteration {i} get dirty log time: 0.000030000s",
                  f"Iteration {i} clear dirty log time: 0.000030000s"]
    other = tmp_path / "twenty.out"
    other.write_text("\n".join(lines + ["Disabling dirty logging time: 0.000700000s", ""]))
    result = runner.invoke(app, ["analyze", SAMPLE, "--selftest-output", str(other)])
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0, result.output
    assert "does not fit this capture: it prints 20 get-dirty-log phases, the capture holds 2" in result.output
