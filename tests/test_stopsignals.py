"""Stop signals at the CLI edge and while a command has taken them over (no root needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from tests.livecheck import catches
import tracekit
import tracekit.analysis
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


@pytest.mark.parametrize("signame", ["SIGINT", *(pytest.param(s, marks=pytest.mark.slow) for s in ("SIGTERM", "SIGHUP"))])
def test_the_console_script_turns_an_early_signal_into_one_line(signame):
    """``python -m tracekit`` installs the handlers first; a signal during the imports ends it cleanly."""
    code = ("import os, signal, sys; import tracekit.stopsignals as s; real = s.install_early; "
            f"s.install_early = lambda: (real(), os.kill(os.getpid(), signal.{signame})); "
            "from tracekit.__main__ import main; sys.exit(main())")
    run = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 128 + signal.Signals[signame]
    assert run.stderr == f"tracekit: stopped by {signame}\n" and "Traceback" not in run.stderr


def test_importing_the_entry_module_notes_the_stop_signals_and_imports_nothing_heavy():
    """The console script's first import of tracekit takes the stop signals over at once: it loads only
    tracekit's package, entry and signal modules (and ``signal``), never ``typing`` or the CLI."""
    code = ("import sys, signal; before = set(sys.modules); import tracekit.__main__; "
            "print(sorted(set(sys.modules) - before - {'signal', 'enum'})); "
            "print([signal.getsignal(s).__name__ for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    loaded, handlers = run.stdout.splitlines()
    assert loaded == str(["tracekit", "tracekit.__main__", "tracekit.stopsignals"])
    assert handlers == str(["_note_stop"] * 3)


@pytest.mark.parametrize("signame", ["SIGTERM", pytest.param("SIGINT", marks=pytest.mark.slow)])
def test_a_signal_between_the_entry_import_and_main_is_one_line(signame):
    """A signal noted as the entry module was imported is raised by main(), inside its try."""
    code = (f"import os, signal, sys; import tracekit.__main__ as entry; os.kill(os.getpid(), signal.{signame}); "
            "sys.exit(entry.main())")
    run = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 128 + signal.Signals[signame]
    assert run.stderr == f"tracekit: stopped by {signame}\n" and run.stdout == ""


def _runs(pid: int, argument: str) -> bool:
    """Whether process ``pid``'s command line holds ``argument`` (it has exec'd the command)."""
    try:
        return argument.encode() in open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return False


def test_ctrl_c_as_soon_as_the_console_script_takes_the_signals_is_one_line():
    """The real console script, SIGINT sent the moment its SIGTERM handler shows in /proc (Python never
    catches SIGTERM itself: that is tracekit's entry module, before main() and every heavy import), however
    loaded the host: one line, exit 130."""
    script = os.path.join(os.path.dirname(sys.executable), "tracekit")
    if not os.path.exists(script):
        pytest.skip(f"no console script beside {sys.executable} (the package is not installed in this venv)")
    sample = os.path.join(os.path.dirname(__file__), os.pardir, "samples", "x86-dirty-log-2m.tkcap")
    process = subprocess.Popen([script, "analyze", sample], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        # exec'd (until then the child is a copy of this process, with its handlers) and handling SIGTERM
        while not (_runs(process.pid, sample) and catches(process.pid, signal.SIGTERM)):
            assert process.poll() is None, "the command ended before it took the stop signals"
            assert time.monotonic() < deadline, "no SIGTERM handler after 120 s"
            time.sleep(0.001)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130 and err.decode() == "tracekit: stopped by SIGINT\n"


def _tracekit_frames(err: str) -> list[str]:
    """The traceback lines of ``err`` in tracekit's own code (its package and analyses)."""
    sources = [os.path.dirname(tracekit.__file__), os.path.dirname(tracekit.analysis.__file__)]
    return [line for line in err.splitlines() if line.strip().startswith("File ")
            and any(f'"{source}{os.sep}' in line for source in sources)]


# 18 full start-ups of the CLI (25 s a form): slow tier. The fast tier keeps a signal during the imports
# (test_the_console_script_turns_an_early_signal_into_one_line) and the moment the handlers are taken.
@pytest.mark.slow
@pytest.mark.parametrize("form", ["python -m tracekit", "pip's script"])
def test_ctrl_c_again_and_again_during_start_up_is_one_line_once_tracekit_runs(tmp_path, form):
    """Without the launcher (``python -m tracekit``, pip's plain console script, an ``env`` without
    ``--block-signal``), SIGINT at 8 moments spread over a run from ``exec`` on: once
    tracekit's first statement has run, one line and exit 130 (or the finished command); before it,
    Python's own start-up may answer with its traceback (the window only the launcher closes), never one
    that passes through tracekit's code."""
    script = tmp_path / "tracekit"
    script.write_text(f"#!{sys.executable}\nimport re\nimport sys\nfrom tracekit.__main__ import main\n"
                      "if __name__ == '__main__':\n    sys.exit(main())\n")  # pip's template
    script.chmod(0o755)
    command = [sys.executable, "-m", "tracekit"] if form == "python -m tracekit" else [str(script)]
    # as a shell starts it: the stop signals at their default (pytest may run as a job that ignores SIGINT)
    command = ["/usr/bin/env", "--default-signal=INT,TERM,HUP", *command, "--version"]
    began = time.monotonic()
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    took = time.monotonic() - began  # the moments spread over a whole run, however loaded the host
    outcomes = []
    for delay in [i * took / 8 for i in range(8)]:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
            time.sleep(delay)
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            try:
                out, err = process.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()  # reaped as the block ends
                raise
        err = err.decode()
        assert not _tracekit_frames(err), (delay, err)
        if "Traceback" in err or process.returncode == -signal.SIGINT:  # Python's start-up, or its exit
            outcomes.append("python's own")
            continue
        outcome = (process.returncode, err, out.decode())
        assert outcome[:2] == (130, "tracekit: stopped by SIGINT\n") or (
            outcome[:2] == (0, "") and outcome[2].startswith("tracekit ")), (delay, outcome)
        outcomes.append(outcome[0])
    assert 130 in outcomes, outcomes  # the signal came during tracekit's start-up at least once


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
