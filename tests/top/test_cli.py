"""``tracekit top`` options: bad input is one line and exit 2, before anything is loaded."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tracekit.cli import app
from tracekit.recorder import target
from tracekit.top import cli as top_cli


@pytest.fixture(autouse=True)
def privileged(monkeypatch):
    """Option checks as a privileged user would meet them, whoever runs the tests."""
    monkeypatch.setattr(top_cli, "recording_blockers", lambda backend: [])


@pytest.mark.parametrize("args,message", [
    (["-i", "0"], "--interval must be a positive, finite number of seconds, not 0"),
    (["-i", "nan"], "--interval must be a positive, finite number of seconds, not nan"),
    (["-i", "inf"], "--interval must be a positive, finite number of seconds, not inf"),
    (["-s", "speed"], "unknown sort key 'speed'"),
    (["--json"], "--json needs --once"),
    (["-n", "0"], "--iterations must be positive"),
    (["--once", "--backend", "perf"], "unknown backend 'perf'"),
])
def test_bad_options_are_one_line_errors(args, message, monkeypatch):
    monkeypatch.setattr(top_cli, "kvm_processes", lambda **_: [target.Target(4242, "qemu-kvm", None, 1, 1, None)])
    result = CliRunner().invoke(app, ["top", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_no_vm_on_the_host_is_one_line(monkeypatch):
    monkeypatch.setattr(top_cli, "kvm_processes", lambda **_: [])
    result = CliRunner().invoke(app, ["top", "--once"])
    assert result.exit_code == 2 and "no process holds a KVM VM" in result.output
