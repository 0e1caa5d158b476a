"""The console script's launcher: a stop signal during Python's own start-up waits for tracekit's handlers.

``sitecustomize`` (imported by ``site``, before any tracekit code) sends the signal, as a Ctrl-C in that
window would; pip's plain ``#!python`` script is the control that shows the window.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tracekit.launcher import BLOCK, launcher_text, write_launcher

BODY = "import sys\nfrom tracekit.__main__ import main\nsys.exit(main())\n"


def _run_signalled_in_site(script: Path, tmp_path: Path, signame: str) -> subprocess.CompletedProcess:
    """Run ``script --version`` with ``signame`` sent to itself while ``site`` imports sitecustomize."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        f"import os, signal, time\nos.kill(os.getpid(), signal.{signame})\ntime.sleep(0.05)\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    # as a shell starts it: the stop signals at their default (pytest may run as a job that ignores SIGINT)
    command = ["/usr/bin/env", "--default-signal=INT,TERM,HUP", str(script), "--version"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def _script(tmp_path: Path, text: str) -> Path:
    script = tmp_path / "tracekit"
    script.write_text(text)
    script.chmod(0o755)
    return script


def test_pips_script_answers_a_ctrl_c_in_site_with_a_traceback(tmp_path):
    """The control: without the launcher the window is there (what the launcher exists for)."""
    run = _run_signalled_in_site(_script(tmp_path, f"#!{sys.executable}\n{BODY}"), tmp_path, "SIGINT")
    assert "KeyboardInterrupt" in run.stderr and run.returncode != 0


# Each form with one signal in the fast tier; the other pairs (the same launcher line) in the slow one.
@pytest.mark.parametrize(("form", "signame"), [
    ("shebang", "SIGINT"), ("sh", "SIGTERM"),
    *(pytest.param(form, signame, marks=pytest.mark.slow)
      for form, signame in [("shebang", "SIGTERM"), ("shebang", "SIGHUP"), ("sh", "SIGINT"), ("sh", "SIGHUP")])])
def test_a_stop_signal_during_pythons_start_up_is_one_line(tmp_path, form, signame):
    """Both forms (``#!env -S``, and ``/bin/sh`` for paths the kernel cannot take on a '#!' line)."""
    env = "/usr/bin/env"
    if form == "sh":  # an env path with a space makes the launcher use /bin/sh
        (tmp_path / "with space").mkdir()
        env = str(tmp_path / "with space" / "env")
        os.symlink("/usr/bin/env", env)
    text = launcher_text(sys.executable, env)
    assert text.startswith("#!/bin/sh\n" if form == "sh" else f"#!{env} -S {BLOCK} ")
    run = _run_signalled_in_site(_script(tmp_path, text), tmp_path, signame)
    assert (run.returncode, run.stderr, run.stdout) == (128 + signal.Signals[signame],
                                                        f"tracekit: stopped by {signame}\n", "")


def test_without_a_signal_the_launcher_runs_the_command(tmp_path):
    run = subprocess.run([str(_script(tmp_path, launcher_text(sys.executable))), "--version"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("tracekit ") and run.stderr == ""


def test_the_command_and_its_children_run_with_the_stop_signals_unblocked(tmp_path):
    """tracekit unblocks them as its entry module is imported; a command it starts inherits that mask."""
    code = ("import subprocess, tracekit.__main__; "
            "print(subprocess.run(['grep', '^SigBlk', '/proc/self/status'], capture_output=True, text=True).stdout)")
    run = subprocess.run(["/usr/bin/env", BLOCK, sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    blocked = int(run.stdout.split()[1], 16)
    assert not any(blocked & (1 << (sig - 1)) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)), run.stdout


def test_the_installed_console_script_is_the_launcher(tmp_path):
    """scripts/install.sh rewrites pip's script; a Ctrl-C in ``site`` is then one line."""
    script = Path(sys.executable).parent / "tracekit"
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable} (the package is not installed in this venv)")
    assert BLOCK in "".join(script.read_text().splitlines()[:2]), (
        f"{script} is pip's script: run scripts/install.sh (or python -m tracekit.launcher {script})")
    run = _run_signalled_in_site(script, tmp_path, "SIGINT")
    assert (run.returncode, run.stderr) == (130, "tracekit: stopped by SIGINT\n")


def test_an_env_that_cannot_block_signals_leaves_pips_script(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    fake_env = _script(tmp_path / "bin", "#!/bin/sh\nexit 125\n")
    fake_env.rename(tmp_path / "bin" / "env")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    script = _script(tmp_path, f"#!{sys.executable}\n{BODY}")
    said = write_launcher(str(script), sys.executable)
    assert "left as pip wrote it" in said and "cannot --block-signal" in said
    assert script.read_text() == f"#!{sys.executable}\n{BODY}"


def test_the_process_is_named_tracekit_not_after_the_interpreter():
    """The launcher execs Python through env (comm ``python``); main names the process as pip's script did."""
    code = "from tracekit.__main__ import name_process; name_process(); print(open('/proc/self/comm').read().strip())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "tracekit", done
