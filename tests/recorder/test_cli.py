"""``tracekit record`` option handling, with the recording itself patched out (no root needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tracekit.cli import app
from tracekit.recorder import cli as recorder_cli, session
from tracekit.recorder.kvm_ioctls import KVM_GET_DIRTY_LOG, KVM_RUN


@pytest.fixture
def captured(monkeypatch):
    seen = {}

    def fake_record(config, stream=None, live_status=None):
        seen["config"] = config
        return session.RecordSummary(output=str(config.output), backend="bcc", target={"pid": 1, "comm": "x"},
                                     seconds=1.0, rows={"walk": 3}, lost=0, bytes_written=10,
                                     stop_reason="duration", attached=[], failed=[])

    monkeypatch.setattr(recorder_cli, "record", fake_record)  # the name the command calls
    return seen


def test_options_become_the_config(captured, tmp_path):
    out = tmp_path / "c.tkcap"
    result = CliRunner().invoke(app, ["record", "-p", "qemu", "-d", "2.5", "-o", str(out), "--probes", "walk,ioctl",
                                      "--backend", "tracefs", "--stream-ioctl", "KVM_GET_DIRTY_LOG",
                                      "--ring-mb", "32", "--json", "-q"])
    assert result.exit_code == 0, result.output
    config = captured["config"]
    assert (config.pid_specs, config.all_vms, config.duration, config.output, config.families, config.backend) == (
        ("qemu",), False, 2.5, out, ("walk", "ioctl"), "tracefs")
    assert config.options.stream_ioctls == (KVM_GET_DIRTY_LOG,) and config.options.aggregate_ioctls == (KVM_RUN,)
    assert config.options.ring_pages == {"walk_events": 32 * 256, "mmu_events": 32 * 256}
    assert config.options.tracefs_buffer_kb == 32 * 1024  # the tracefs backend's buffer per CPU
    assert json.loads(result.stdout)["rows"] == {"walk": 3}


def test_command_after_double_dash(captured, tmp_path):
    result = CliRunner().invoke(app, ["record", "-o", str(tmp_path / "w.tkcap"), "--", "tracekit", "workload",
                                      "dirty-log", "-i", "2"])
    assert result.exit_code == 0, result.output
    assert captured["config"].command == ["tracekit", "workload", "dirty-log", "-i", "2"]
    assert captured["config"].pid_specs == () and not captured["config"].all_vms


def test_pid_repeats_and_all_vms(captured, tmp_path):
    result = CliRunner().invoke(app, ["record", "-o", str(tmp_path / "v.tkcap"), "-p", "vm1", "--pid", "4242",
                                      "--all-vms", "-q"])
    assert result.exit_code == 0, result.output
    assert captured["config"].pid_specs == ("vm1", "4242") and captured["config"].all_vms


def test_default_output_name(captured):
    CliRunner().invoke(app, ["record", "-p", "1", "-q"])
    assert str(captured["config"].output).startswith("record-") and str(captured["config"].output).endswith(".tkcap")


@pytest.mark.parametrize("args,message", [
    (["--ring-mb", "3", "-p", "1"], "--ring-mb must be a power of two"),
    (["--stream-ioctl", "KVM_NOPE", "-p", "1"], "unknown ioctl 'KVM_NOPE'"),
    (["--probes", ",", "-p", "1"], "--probes names no family"),
])
def test_bad_options_are_one_line_errors(captured, args, message):
    result = CliRunner().invoke(app, ["record", *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args,message", [
    (["-p", "1", "--", "true"], "either --pid or a command"),
    ([], "nothing to record"),
    (["-p", "1", "-d", "0"], "--duration must be positive, not 0"),
    (["-p", "1", "-d", "nan"], "--duration must be positive, not nan"),
    (["-p", "1", "-d", "-inf"], "--duration must be positive, not -inf"),
    (["-p", "1", "--segment-seconds", "0"], "--segment-seconds must be a positive, finite number of seconds, not 0"),
    (["-p", "1", "--segment-seconds", "nan"], "--segment-seconds must be a positive, finite number of seconds, not nan"),
    (["-p", "1", "--segment-seconds", "inf"], "--segment-seconds must be a positive, finite number of seconds, not inf"),
    (["-p", "1", "--segment-seconds", "-1"], "--segment-seconds must be a positive, finite number of seconds, not -1"),
])
def test_session_rejects_bad_configs(tmp_path, args, message):
    result = CliRunner().invoke(app, ["record", "-o", str(tmp_path / "x.tkcap"), *args])
    assert result.exit_code == 2 and message in result.output
    assert result.output.count("\n") == 1 and "segment_rows" not in result.output
    assert not (tmp_path / "x.tkcap").exists()


@pytest.mark.parametrize("duration", ["inf", "1e308"])
def test_an_endless_duration_records_until_stopped(captured, duration):
    result = CliRunner().invoke(app, ["record", "-p", "1", "-d", duration])
    assert result.exit_code == 0, result.output
    assert captured["config"].duration == float(duration)



def test_existing_output_is_refused(tmp_path):
    out = tmp_path / "x.tkcap"
    out.mkdir()
    (out / "keep").write_text("")
    result = CliRunner().invoke(app, ["record", "-o", str(out), "-p", "1"])
    assert result.exit_code == 2 and "already exists" in result.output


def test_symlinked_output_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "x.tkcap"
    link.symlink_to(tmp_path / "elsewhere")
    result = CliRunner().invoke(app, ["record", "-o", str(link), "-p", "1"])
    assert result.exit_code == 2 and "symbolic link" in result.output


def test_print_bpf_shows_sources_and_defines():
    result = CliRunner().invoke(app, ["record", "--print-bpf", "--probes", "ioctl"])
    assert result.exit_code == 0
    assert "-DTK_IOCTL_AGG_CMD0=0xae80" in result.output and "TRACEPOINT_PROBE(syscalls, sys_enter_ioctl)" in result.output


def test_help_has_examples():
    result = CliRunner().invoke(app, ["record", "--help"])
    assert result.exit_code == 0 and "Examples:" in result.output and "--stream-ioctl" in result.output


def test_unknown_family_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["record", "-o", str(tmp_path / "x.tkcap"), "-p", "1", "--probes", "nope"])
    assert result.exit_code == 2 and "unknown probe family 'nope'" in result.output
    assert not Path(tmp_path / "x.tkcap").exists()
