"""The CLI edge: a typed error is one line and its exit code; its detail is shown, escaped, under -v."""

from __future__ import annotations

from typer.testing import CliRunner

from tracekit import doctor
from tracekit.cli import app
from tracekit.errors import ProbeLoadError


def _failing(monkeypatch):
    def fail():
        raise ProbeLoadError("compile failed:\nsee the log \udcff", detail="line 1\nline 2 \udcfe")

    monkeypatch.setattr(doctor, "probe_host", fail)


def test_the_message_is_one_printable_line_and_the_detail_only_under_verbose(monkeypatch):
    _failing(monkeypatch)
    quiet = CliRunner().invoke(app, ["doctor"])
    assert quiet.exit_code == 1
    assert quiet.output == "tracekit: error: compile failed: / see the log \\udcff\n"
    verbose = CliRunner().invoke(app, ["-v", "doctor"])
    assert verbose.exit_code == 1
    assert verbose.output == "tracekit: error: compile failed: / see the log \\udcff\nline 1\nline 2 \\udcfe\n"
