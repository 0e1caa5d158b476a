"""The tracefs backend leaves tracefs as it found it, even when it cannot finish starting (fake tracefs dir)."""

from __future__ import annotations

import pytest

from tracekit.funcprobes.kallsyms import resolve_all
from tracekit.host import parse_kallsyms
from tracekit.funcprobes.stage2_probes import STAGE2_PROBES
from tracekit.funcprobes.kprobe_events import TracefsFuncProbes, define_kprobes

KALLSYMS = "ffff0001 T kvm_pgtable_walk\nffff0002 t stage2_split_walker\nffff0003 T kvm_pgtable_stage2_split\n"


def test_failed_start_removes_every_probe_it_defined(tmp_path):
    """No instances/ directory: the instance cannot be made, so start() undoes its kprobe_events lines, last first."""
    (tmp_path / "kprobe_events").write_text("")
    resolutions = resolve_all(STAGE2_PROBES, parse_kallsyms(KALLSYMS))
    backend = TracefsFuncProbes(resolutions, tracefs=tmp_path, group="tk_test")
    with pytest.raises(FileNotFoundError):
        backend.start()
    lines = (tmp_path / "kprobe_events").read_text().splitlines()
    added = [line.split()[0].split("/", 1)[1] for line in lines if line[:2] in ("p:", "r:")]
    removed = [line[len("-:tk_test/"):] for line in lines if line.startswith("-:")]
    assert added == ["pgtable_walk", "pgtable_walk_ret", "split_walker", "stage2_split", "stage2_split_ret"]
    assert removed == list(reversed(added))
    assert {f["probe"] for f in backend.failed} == {p.name for p in STAGE2_PROBES} - {"pgtable_walk", "split_walker",
                                                                                       "stage2_split"}  # fmt: skip
    backend.close()  # a second close does nothing more
    assert (tmp_path / "kprobe_events").read_text().splitlines() == lines


def test_refused_line_gives_the_reason_with_the_error_log(tmp_path):
    """kprobe_events cannot be written (a directory here): nothing is defined, the reason quotes error_log's last lines."""
    (tmp_path / "kprobe_events").mkdir()
    (tmp_path / "error_log").write_text("[ 1.0] trace_kprobe: error: Invalid argument\n  Command: p:x\n    ^\n")
    res = resolve_all(STAGE2_PROBES, parse_kallsyms(KALLSYMS))[0]
    defined: list[str] = ["earlier"]
    reason = define_kprobes(tmp_path, res, defined, group="tk_test")
    assert defined == ["earlier"]
    assert reason == ("kprobe_events refused it: Is a directory: "
                      "[ 1.0] trace_kprobe: error: Invalid argument | Command: p:x | ^")


def test_strict_start_fails_on_a_refused_required_probe_and_leaves_tracefs_clean(tmp_path):
    """Never a silent pass: with ``strict`` (the labs), a line the kernel refuses for a probe that is not
    optional stops the start with the probe, how it was resolved and the kernel's error_log line."""
    from tracekit.errors import ProbeLoadError

    (tmp_path / "kprobe_events").mkdir()  # every write refused
    (tmp_path / "error_log").write_text("[ 1.0] trace_kprobe: error: Invalid fetch argument\n  Command: p:x\n")
    resolutions = resolve_all(STAGE2_PROBES, parse_kallsyms(KALLSYMS))
    backend = TracefsFuncProbes(resolutions, tracefs=tmp_path, group="tk_test", strict=True)
    with pytest.raises(ProbeLoadError, match=r"required probe pgtable_walk \(attached with BTF args at kvm_pgtable_walk\): "
                       r"kprobe_events refused it: .*Invalid fetch argument"):  # fmt: skip
        backend.start()
    assert backend.defined == [] and not (tmp_path / "instances").exists()
    lenient = TracefsFuncProbes(resolutions, tracefs=tmp_path, group="tk_test")
    with pytest.raises(FileNotFoundError):  # no instances/ here: the start goes on past the refusals
        lenient.start()
    assert {f["probe"] for f in lenient.failed} >= {"pgtable_walk", "split_walker", "stage2_split"}
