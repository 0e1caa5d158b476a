"""The recorder's life cycle under signals, SIGKILL and a user without privileges, run for real.

Each trial runs ``tracekit record`` as users do (the console script, a command after ``--``) and, after
it, checks that nothing is left: no process of the traced command, no tracefs instance and no layout
directory of that recorder. Signals are sent at points the test observes (handlers installed, probes
attached, segments written), never at guessed times; outcomes that depend on where a signal lands are
all accepted as long as they are clean.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.livecheck import catches, need_root, skip_or_fail
from tests.recorder.test_live import INSTANCES, TRACEKIT, _need
from tracekit.recorder.layoutdir import LAYOUT_PREFIX

pytestmark = [pytest.mark.live, pytest.mark.slow]

WORKLOAD = [TRACEKIT, "workload", "dirty-log", "-i", "100000", "-b", "8M"]


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _running_with(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker.encode() in argv and _state(int(entry.name)) not in (None, "Z", "X"):
                found.append(int(entry.name))
    return found


class Trial:
    """One ``tracekit record -- tracekit workload ...`` run; a unique seed marks its workload."""

    def __init__(self, tmp_path: Path, backend: str = "bcc", output: Path | None = None, options: tuple = ()):
        self.seed = str(int.from_bytes(os.urandom(3), "little") + 1_000_000)
        self.output = output or tmp_path / f"trial-{self.seed}.tkcap"
        self.stderr_path = tmp_path / f"trial-{self.seed}.stderr"
        self.process = subprocess.Popen(
            [TRACEKIT, "record", "--backend", backend, *options, "-o", str(self.output), "--", *WORKLOAD,
             "--seed", self.seed],
            stdout=subprocess.DEVNULL, stderr=self.stderr_path.open("w"))

    def wait_for(self, condition, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"recorder exited before {what}: {self.stderr()}"
            assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
            time.sleep(0.01)

    def handlers_installed(self) -> bool:
        return catches(self.process.pid, signal.SIGTERM)  # Python itself never catches SIGTERM

    def recording(self) -> bool:
        return bool(list(self.output.glob("walk/part-*.parquet")))

    def finish(self) -> int:
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"recorder still running 60 s after the signal: {self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def manifest(self) -> dict | None:
        try:
            return json.loads((self.output / "capture.json").read_text())
        except OSError:
            return None

    def leftovers(self) -> list[str]:
        """What this recorder left behind (empty when nothing)."""
        time.sleep(0.2)  # let init reap a killed workload
        left = [f"workload pid {pid} still runs" for pid in _running_with(self.seed)]
        pid = self.process.pid
        if INSTANCES.is_dir():
            left += [f"tracefs instance {p.name}" for p in INSTANCES.iterdir() if p.name.startswith(f"tracekit-{pid}-")]
        left += [f"layout dir {p}" for p in Path(tempfile.gettempdir()).glob(f"{LAYOUT_PREFIX}{pid}-*")]
        return left

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in _running_with(self.seed):
            os.kill(pid, signal.SIGKILL)
        for path in Path(tempfile.gettempdir()).glob(f"{LAYOUT_PREFIX}{self.process.pid}-*"):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def trial(tmp_path):
    made: list[Trial] = []

    def start(backend: str = "bcc") -> Trial:
        _need(backend)
        made.append(Trial(tmp_path, backend))
        return made[-1]

    yield start
    for t in made:
        t.cleanup()


def _assert_clean_stop(t: Trial, rc: int, signame: str) -> None:
    """Either stopped before a capture existed (one line, 128 + signal) or a complete capture (exit 0)."""
    text = t.stderr()
    assert "Traceback" not in text and "Exception" not in text, text
    manifest = t.manifest()
    if rc == 0:
        assert manifest is not None and manifest["status"] == "complete", text
        assert manifest["stop_reason"] == signame
    else:
        assert rc == 128 + signal.Signals[signame], text
        assert manifest is None, "a capture was begun but not closed"
        lines = [line for line in text.splitlines() if line.startswith("tracekit: ")]
        assert lines and lines[-1].startswith(f"tracekit: stopped by {signame}"), text
    assert t.leftovers() == []


@pytest.mark.parametrize("backend,gap", [("bcc", 0.0), ("bcc", 0.05), ("bcc", 0.2), ("tracefs", 0.05)])
def test_a_second_ctrl_c_hurries_the_cleanup_without_skipping_it(trial, backend, gap):
    t = trial(backend)
    t.wait_for(t.recording, "walk segment")
    t.process.send_signal(signal.SIGINT)
    time.sleep(gap)
    t.process.send_signal(signal.SIGINT)
    rc = t.finish()
    assert rc == 0, t.stderr()
    manifest = t.manifest()
    assert manifest["status"] == "complete" and manifest["stop_reason"] == "SIGINT", t.stderr()
    assert sum(f["rows"] for f in manifest["families"].values()) > 0
    assert "Traceback" not in t.stderr() and "Failed to detach" not in t.stderr()
    assert t.leftovers() == []


@pytest.mark.parametrize("signame,delay", [("SIGINT", 0.0), ("SIGINT", 0.3), ("SIGINT", 0.8), ("SIGINT", 1.5),
                                           ("SIGTERM", 0.0), ("SIGTERM", 0.5), ("SIGTERM", 1.2), ("SIGTERM", 2.5)])
def test_a_signal_during_start_up_stops_cleanly(trial, signame, delay):
    """From the moment the console script has its handlers (checked in /proc) through the imports,
    the probe compile and the attach: one line and no capture, or a complete capture."""
    t = trial("bcc")
    t.wait_for(t.handlers_installed, "stop-signal handlers")
    time.sleep(delay)
    t.process.send_signal(signal.Signals[signame])
    _assert_clean_stop(t, t.finish(), signame)


def test_a_signal_right_after_the_probes_attach_stops_cleanly(trial):
    t = trial("bcc")
    t.wait_for(lambda: (t.output / "capture.json").exists(), "capture")
    t.process.send_signal(signal.SIGTERM)
    rc = t.finish()
    assert rc == 0, t.stderr()
    _assert_clean_stop(t, rc, "SIGTERM")


def test_a_sigkilled_recorder_takes_its_workload_along_and_the_next_run_reclaims_its_directory(trial, tmp_path):
    t = trial("bcc")
    t.wait_for(t.recording, "walk segment")
    workload = _running_with(t.seed)
    assert workload, "the workload is not running"
    layout = list(Path(tempfile.gettempdir()).glob(f"{LAYOUT_PREFIX}{t.process.pid}-*"))
    assert layout, "the recorder made no layout directory named after its pid"
    t.process.send_signal(signal.SIGKILL)
    t.process.wait()
    deadline = time.monotonic() + 10
    while _running_with(t.seed) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _running_with(t.seed) == [], "the released workload runs on untraced after its recorder was killed"
    assert layout[0].is_dir()  # nobody could remove it yet
    run = subprocess.run([TRACEKIT, "record", "-q", "--probes", "ioctl", "-d", "0.2", "-o", str(tmp_path / "next.tkcap"),
                          "--", "true"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert not layout[0].exists(), "the next recorder did not reclaim the dead recorder's layout directory"
    reclaimed = json.loads((tmp_path / "next.tkcap" / "capture.json").read_text())["recorder"]
    assert layout[0].name in reclaimed["stale_layout_dirs_removed"]
    assert t.leftovers() == []


def _as_nobody() -> list[str]:
    need_root()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        skip_or_fail("setpriv (util-linux) is not installed: cannot run tracekit as an unprivileged user")
    prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "import tracekit.cli"], capture_output=True, text=True)
    if probe.returncode != 0:
        skip_or_fail(f"user nobody cannot import tracekit from this checkout: {probe.stderr.strip()[-200:]}")
    return prefix


@pytest.fixture
def open_dir():
    """A directory every user may write (the test's own tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="tk-nobody-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("args", [
    ["record", "-d", "1", "--", "true"],
    ["record", "-d", "1", "--pid", "1"],
    ["record", "--backend", "tracefs", "-d", "1", "--pid", "1"],
])
@pytest.mark.parametrize("where", ["open", "private"])
def test_record_without_privileges_is_one_line_naming_them(open_dir, tmp_path, args, where):
    prefix = _as_nobody()
    output = (open_dir if where == "open" else tmp_path) / "x.tkcap"
    run = subprocess.run([*prefix, TRACEKIT, *args[:1], "-o", str(output), *args[1:]],
                         capture_output=True, text=True, cwd=open_dir, env={**os.environ, "HOME": str(open_dir)},
                         timeout=120)
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracekit: error: cannot record as this user"), run.stderr
    assert "tracefs" in lines[0] and "not accessible" in lines[0]
    if "tracefs" not in args:
        assert "CAP_BPF" in lines[0] and "CAP_PERFMON" in lines[0]
    assert not output.exists()


@pytest.mark.parametrize("args", [["top", "--once"], ["top", "--backend", "tracefs", "--once"]])
def test_top_without_privileges_is_one_line_naming_them(open_dir, args):
    prefix = _as_nobody()
    run = subprocess.run([*prefix, TRACEKIT, *args], capture_output=True, text=True, cwd=open_dir,
                         env={**os.environ, "HOME": str(open_dir)}, timeout=120)
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracekit: error: cannot watch VMs as this user"), run.stderr
    assert "tracefs" in lines[0] and ("CAP_BPF" in lines[0]) == ("tracefs" not in args)


@pytest.mark.parametrize("args", [["doctor"], ["doctor", "--json"], ["demo", "-o", "d.tkcap"],
                                  ["record", "--print-bpf", "--probes", "ioctl"]])
def test_other_commands_without_privileges_run_without_a_traceback(open_dir, args):
    prefix = _as_nobody()
    run = subprocess.run([*prefix, TRACEKIT, *args], capture_output=True, text=True, cwd=open_dir,
                         env={**os.environ, "HOME": str(open_dir)}, timeout=300)
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode in (0, 1), run.stderr
    if args[0] == "doctor":
        assert run.returncode == 0
        assert "CAP_BPF" in run.stdout and "not accessible" in run.stdout
