"""Stop signals at the CLI edge and while a command has taken them over (no root needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tracekit import doctor
from tracekit.cli import app
from tracekit.stopsignals import StopRequests, StopSignal


def test_a_stop_signal_in_a_command_is_one_line_and_128_plus_its_number(monkeypatch):
    def stopped():
        raise StopSignal(signal.SIGTERM)

    monkeypatch.setattr(doctor, "probe_host", stopped)
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 128 + signal.SIGTERM
    assert result.output == "tracekit: stopped by SIGTERM\n"


def test_no_generic_handler_swallows_a_stop_signal():
    """Neither ``except Exception`` in library code nor typer's KeyboardInterrupt handling (a silent 130)."""
    stop = StopSignal(signal.SIGTERM)
    assert not isinstance(stop, (Exception, KeyboardInterrupt))


def test_requests_are_noted_never_raised_and_the_second_one_hurries():
    before = signal.getsignal(signal.SIGINT)
    with StopRequests() as stop:
        assert stop.reason is None and not stop.hurry
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.reason == "SIGTERM" and not stop.hurry
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.reason == "SIGTERM" and stop.hurry
        early = stop.stopped_early("recording began")
    assert signal.getsignal(signal.SIGINT) is before
    assert str(early) == "stopped by SIGTERM before recording began" and early.exit_code == 143


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_the_console_script_turns_an_early_signal_into_one_line(signame):
    """``python -m tracekit`` installs the handlers first; a signal during the imports ends it cleanly."""
    code = ("import os, signal, sys; import tracekit.stopsignals as s; real = s.install_early; "
            f"s.install_early = lambda: (real(), os.kill(os.getpid(), signal.{signame})); "
            "from tracekit.__main__ import main; sys.exit(main())")
    run = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 128 + signal.Signals[signame]
    assert run.stderr == f"tracekit: stopped by {signame}\n" and "Traceback" not in run.stderr


def test_the_second_and_third_requests_are_answered_on_the_given_descriptor():
    read_fd, write_fd = os.pipe()
    with StopRequests(notify_fd=write_fd):
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGINT)
    os.close(write_fd)
    with os.fdopen(read_fd) as said:
        lines = [line for line in said.read().splitlines() if line]
    assert len(lines) == 2
    assert lines[0].startswith("tracekit: stopping faster") and "still detached" in lines[0]
    assert lines[1] == f"tracekit: still cleaning up; kill -9 {os.getpid()} abandons it (the next run reclaims what is left)"
