"""Host-side pieces of ``tracekit lab --recorder`` without booting anything: wheel selection, the
recorder userland's assembly, the guest's command lines, argument checks, and the adoption of the
guest's capture (counts per probe, per workload phase, per level)."""

from __future__ import annotations

import json
import stat
import zipfile

import hypothesis.strategies as st
import pyarrow as pa
import pytest
from hypothesis import given, settings
from typer.testing import CliRunner

from tracekit.capture import CaptureWriter, open_capture
from tracekit.cli import app
from tracekit.errors import LabError, UsageError
from tracekit.capture.columns import FUNCPROBE_SCHEMAS as SCHEMAS
from tracekit.funcprobes.stage2_probes import STAGE2_PROBES
from tracekit.lab import fetch, machine, recorded, runner, scenarios
from tracekit.lab.guest_record import record_argv, workload_argv
from tracekit.lab.guest_run import workload_options
from tracekit.workload.__main__ import _parser
from tracekit.workload.command import build_options
from tracekit.workload.options import BACKING_SOURCES, DirtyLogOptions

from tests.lab.test_host_side import _read_newc

MiB = 1 << 20


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"PK")
    return folder


def test_select_wheel_takes_the_guest_python_and_platform(tmp_path):
    folder = _touch(
        tmp_path,
        "pyarrow-26.0.1-cp313-cp313-manylinux_2_28_aarch64.whl",
        "pyarrow-26.0.1-cp312-cp312-manylinux_2_28_aarch64.whl",  # another Python
        "pyarrow-26.0.1-cp313-cp313-manylinux_2_28_x86_64.whl",  # another machine
        "pyarrow-27.0.0-cp313-cp313-manylinux_2_34_aarch64.whl",  # needs a newer glibc than asked for
        "pyarrow-25.0.0-cp313-cp313-manylinux2014_aarch64.manylinux_2_17_aarch64.whl",
        "numpy-2.2.4-cp313-cp313-manylinux_2_28_aarch64.whl",
    )
    pick = fetch.select_wheel(folder, "pyarrow", "3.13", "manylinux_2_28_aarch64")
    assert pick is not None and pick.name == "pyarrow-26.0.1-cp313-cp313-manylinux_2_28_aarch64.whl"
    x86 = fetch.select_wheel(folder, "pyarrow", "3.13", "manylinux_2_28_x86_64")
    assert x86 is not None and x86.name.endswith("manylinux_2_28_x86_64.whl")
    # a manylinux2014 (glibc 2.17) wheel serves a 2_28 request; nothing for a Python with no wheel
    (folder / "pyarrow-26.0.1-cp313-cp313-manylinux_2_28_aarch64.whl").unlink()
    older = fetch.select_wheel(folder, "pyarrow", "3.13", "manylinux_2_28_aarch64")
    assert older is not None and older.name.startswith("pyarrow-25.0.0-")
    assert fetch.select_wheel(folder, "pyarrow", "3.11", "manylinux_2_28_aarch64") is None
    assert fetch.select_wheel(tmp_path / "absent", "pyarrow", "3.13", "manylinux_2_28_aarch64") is None


def test_header_packages_keep_common_and_kbuild_but_not_the_toolchain_or_image():
    release = "6.12.107+deb13-cloud-arm64"
    depends = ["<linux-base:arm64>", "<linux-headers-6.12.107+deb13-common:arm64>",
               "linux-image-6.12.107+deb13-cloud-arm64:arm64", "linux-image-6.12.107+deb13-cloud-arm64-unsigned:arm64",
               "linux-kbuild-6.12.107+deb13:arm64", "gcc-14:arm64"]  # fmt: skip
    assert fetch.header_packages(release, depends) == [
        "linux-headers-6.12.107+deb13-cloud-arm64", "linux-headers-6.12.107+deb13-common", "linux-kbuild-6.12.107+deb13"]


def test_recorder_root_gets_the_build_link_the_blas_alternatives_and_the_wheel(tmp_path):
    release = "6.12.107+deb13-cloud-arm64"
    root = tmp_path / "root"
    (root / "usr" / "src" / f"linux-headers-{release}" / "include").mkdir(parents=True)
    libdir = root / "usr" / "lib" / "aarch64-linux-gnu"
    _touch(libdir / "blas", "libblas.so.3")
    _touch(libdir / "lapack", "liblapack.so.3")
    wheel = tmp_path / "pyarrow-26.0.1-cp313-cp313-manylinux_2_28_aarch64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pyarrow/__init__.py", "__version__ = '26.0.1'\n")
    fetch.assemble_recorder_root(root, "arm64", release, wheel)
    build = root / "usr" / "lib" / "modules" / release / "build"
    assert build.is_symlink() and (build / "include").is_dir()  # resolves inside the root
    assert (libdir / "libblas.so.3").resolve() == (libdir / "blas" / "libblas.so.3").resolve()
    assert (libdir / "liblapack.so.3").is_symlink()
    assert (root / "usr/local/lib/python3.13/dist-packages/pyarrow/__init__.py").read_text().startswith("__version__")
    fetch.assemble_recorder_root(root, "arm64", release, wheel)  # a second pass changes nothing
    with pytest.raises(LabError, match="did not unpack to /usr/src/linux-headers-6.13"):
        fetch.assemble_recorder_root(root, "arm64", "6.13", wheel)
    bad = tmp_path / "broken.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(LabError, match="not a valid wheel"):
        fetch.assemble_recorder_root(root, "arm64", release, bad)
    assert not bad.exists()


def _parsed(argv: list[str]) -> DirtyLogOptions:
    args = vars(_parser().parse_args(["dirty-log", *argv]))
    for key in ("command", "as_json", "layout"):
        args.pop(key)
    return build_options(**args)


@pytest.mark.parametrize("name", [s.name for s in scenarios.SCENARIOS if s.steps[0][0] == "workload"])
def test_workload_argv_rebuilds_each_workload_scenarios_options(name):
    scenario = next(s for s in scenarios.SCENARIOS if s.name == name)
    options = workload_options(scenario)
    assert _parsed(workload_argv(options)) == options


@settings(max_examples=40, deadline=None)
@given(
    vcpus=st.integers(1, 4),
    pages=st.integers(1, 64),
    backing=st.sampled_from(sorted(b for b, size in BACKING_SOURCES.items() if size <= 2 * MiB)),
    log_mode=st.sampled_from([None, "get", "clear"]),
    chunk=st.sampled_from([None, 0, 4096, 2 * MiB, 1 << 30]),
    write_percent=st.integers(0, 100),
    random_order=st.booleans(),
)
def test_workload_argv_round_trips(vcpus, pages, backing, log_mode, chunk, write_percent, random_order):
    options = DirtyLogOptions(vcpus=vcpus, bytes_per_vcpu=pages * 2 * MiB, iterations=2, backing=backing,
                              log_mode=log_mode, eager_split_chunk=chunk, write_percent=write_percent,
                              random_order=random_order)  # fmt: skip
    assert _parsed(workload_argv(options)) == options


def test_record_argv_runs_the_workload_as_the_recorders_command(tmp_path):
    options = workload_options(scenarios.smallest("arm64"))
    argv = record_argv("arm64", "bcc", tmp_path / "c.tkcap", options)
    assert argv[:7] == ["tracekit", "--verbose", "record", "--probes", "stage2", "--backend", "bcc"]
    child = argv[argv.index("--") + 1 :]
    assert child[:3] == ["tracekit", "workload", "dirty-log"]
    assert argv[argv.index("--ring-mb") + 1] == "64" and argv.index("--ring-mb") < argv.index("--")
    assert "--layout" not in child  # the recorder hands the workload its layout directory in the environment
    assert "--eager-split-chunk" in child and child[child.index("--eager-split-chunk") + 1] == "2M"
    x86 = record_argv("x86", "tracefs", tmp_path / "c.tkcap", workload_options(scenarios.smallest("x86")))
    assert x86[3:7] == ["--probes", "tdp,mmu", "--backend", "tracefs"] and "--eager-split-chunk" not in x86
    with pytest.raises(ValueError, match="choose bcc or tracefs"):
        record_argv("arm64", "perf", tmp_path / "c.tkcap", options)


def test_recorder_arguments_are_checked_before_anything_is_fetched(tmp_path):
    smallest = scenarios.smallest("arm64")
    runner.check_recorder(None, scenarios.get("rebuild", "arm64"), None)  # the raw path runs every scenario
    runner.check_recorder("tracefs", smallest, tmp_path / "Image")
    with pytest.raises(UsageError, match="choose bcc or tracefs"):
        runner.check_recorder("perf", smallest, None)
    with pytest.raises(UsageError, match="rebuild drives the nested VM step by step.*eager-enable"):
        runner.check_recorder("bcc", scenarios.get("rebuild", "arm64"), None)
    with pytest.raises(UsageError, match="with --kernel use --recorder tracefs"):
        runner.check_recorder("bcc", smallest, tmp_path / "Image")
    assert runner.guest_memory_mib("arm64", smallest, None) == 2048
    assert runner.guest_memory_mib("arm64", smallest, "bcc") == 4096
    assert runner.guest_memory_mib("arm64", scenarios.get("hugetlb-1g", "arm64"), "tracefs") == 6144


def test_cli_rejects_a_bad_recorder_with_one_line(tmp_path):
    result = CliRunner().invoke(app, ["lab", "arm64", "--recorder", "perf", "-o", str(tmp_path / "x.tkcap")])
    assert result.exit_code != 0 and "choose bcc or tracefs" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x.tkcap").exists()
    result = CliRunner().invoke(app, ["lab", "arm64", "-s", "overhead", "--recorder", "bcc", "-o", str(tmp_path / "y")])
    assert result.exit_code != 0 and "cannot run under tracekit record" in result.output


def test_initramfs_carries_the_launcher_bpf_sources_and_analysis(tmp_path):
    path = tmp_path / "initrd.cpio"
    machine.build_initramfs(path, None)
    entries = _read_newc(path.read_bytes())
    mode, launcher = entries["usr/local/bin/tracekit"]
    assert mode & stat.S_IXUSR and launcher == machine.LAUNCHER
    assert "opt/tracekit/tracekit/probes/stage2.bpf.c" in entries and "opt/tracekit/tracekit/probes/tdp.h" in entries
    assert "opt/tracekit/tracekit/analysis/__init__.py" in entries
    assert "opt/tracekit/tracekit/lab/guest_record.py" in entries
    assert not any("__pycache__" in name for name in entries)


def _visit_rows(rows):
    cols = {f.name: [r.get(f.name, 0) for r in rows] for f in SCHEMAS["stage2_visit"]}
    return pa.table({k: pa.array([str(x) for x in v]) if k in ("visitor", "kind") else v for k, v in cols.items()})


def _capture(path):
    """A recorder-like capture: 2 splits and their visits in an enable phase, a fault in another phase."""
    phases = [{"name": "populate", "iteration": None, "start_ns": 100, "end_ns": 200},
              {"name": "enable_dirty_logging", "iteration": None, "start_ns": 300, "end_ns": 400},
              {"name": "dirty_memory", "iteration": 1, "start_ns": 500, "end_ns": 600}]  # fmt: skip
    manifest = {"backend": "tracefs", "probes": {"attached": ["tkrec9:stage2_split"]}, "workload": {"phases": phases},
                "host": "guest", "source": {"kind": "live"}}  # fmt: skip
    common = {"cpu": 0, "pid": 7, "tid": 7}
    with CaptureWriter(path, manifest=manifest) as writer:
        for name, schema in SCHEMAS.items():
            writer.declare(name, schema)
        writer.append("split", pa.Table.from_pylist(
            [{**common, "ts_ns": t, "probe": "stage2_split", "addr": a, "size": 2 * MiB, "duration_ns": 5, "ret": 0}
             for t, a in ((310, 0), (320, 2 * MiB))], schema=SCHEMAS["split"].remove_metadata()))  # fmt: skip
        visits = [{**common, "ts_ns": 311, "walk_id": 0, "visitor": "stage2_split_walker", "level": 2, "kind": "leaf:block", "count": 1},
                  {**common, "ts_ns": 312, "walk_id": 0, "visitor": "stage2_split_walker", "level": 3, "kind": "leaf:page", "count": 512},
                  {**common, "ts_ns": 321, "walk_id": 1, "visitor": "stage2_split_walker", "level": 2, "kind": "leaf:block", "count": 1},
                  {**common, "ts_ns": 322, "walk_id": 1, "visitor": "stage2_split_walker", "level": 3, "kind": "leaf:page", "count": 512}]  # fmt: skip
        writer.append("stage2_visit", _visit_rows(visits))
        writer.append("fault", pa.Table.from_pylist(
            [{**common, "ts_ns": 150, "probe": "guest_abort", "vcpu_id": 0, "addr": 0, "duration_ns": 1, "ret": 1}],
            schema=SCHEMAS["fault"].remove_metadata()))  # fmt: skip
    return path


def test_counts_per_probe_phase_and_level_from_a_recorder_capture(tmp_path):
    cap = open_capture(_capture(tmp_path / "guest.tkcap"))
    # 2 splits x (1 block + 512 pages) = 1,026 split-walker visits, as the raw decoder counts them
    assert recorded.capture_counts(cap, STAGE2_PROBES) == {"stage2_split": 2, "split_walker": 1026, "guest_abort": 1}
    assert recorded.visits_by_level(cap, STAGE2_PROBES) == {"split_walker": {2: 2, 3: 1024}}
    steps = recorded.phase_steps(cap, STAGE2_PROBES, cap.manifest["workload"]["phases"])
    assert [s["op"] for s in steps] == ["populate", "enable_dirty_logging", "dirty_memory_1"]
    assert steps[0]["counts"] == {"guest_abort": 1}
    assert steps[1]["counts"] == {"stage2_split": 2, "split_walker": 1026}
    assert steps[2]["counts"] == {}


def test_adopting_the_guest_capture_merges_the_lab_metadata(tmp_path):
    guest = _capture(tmp_path / "guest.tkcap")
    output = tmp_path / "out" / "lab.tkcap"
    output.mkdir(parents=True)
    lab = {"source": {"kind": "lab", "description": "d"}, "host": "qemu-arm64-tcg", "timing_note": runner.TIMING_NOTE}
    recorded.adopt_capture(guest, output, lab)
    manifest = open_capture(output).manifest
    assert manifest["source"]["kind"] == "lab" and manifest["host"] == "qemu-arm64-tcg"
    assert manifest["backend"] == "tracefs" and manifest["probes"]["attached"] == ["tkrec9:stage2_split"]
    assert manifest["guest_recorder"] == {"host": "guest", "source": {"kind": "live"}}
    assert open_capture(output).rows("split") == 2 and not guest.exists()
    with pytest.raises(LabError, match="missing or unreadable"):
        recorded.adopt_capture(tmp_path / "absent.tkcap", tmp_path / "o2", lab)
    assert json.loads((output / "capture.json").read_text())["timing_note"] == runner.TIMING_NOTE


def test_x86_recorder_guests_get_the_sse4_2_pyarrow_needs(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "require_tool", lambda name, package: f"/usr/bin/{name}")
    paths = (tmp_path / "bz", tmp_path / "i", tmp_path / "c", tmp_path / "a", "")
    x86 = machine.qemu_command("x86", *paths, cpu_features=machine.RECORDER_X86_FEATURES)
    cpu = x86[x86.index("-cpu") + 1].split(",")
    assert {"+sse4.2", "+popcnt", "-cx16", "+svm", "+npt"} <= set(cpu)  # cx16 stays off (QEMU 7.2 RFLAGS bug)
    plain = machine.qemu_command("x86", *paths)
    assert plain[plain.index("-cpu") + 1] == "qemu64,+svm,+npt,+pdpe1gb,-cx16"  # the raw path's machine is unchanged


@pytest.mark.parametrize("record_exit, last_line, error", [
    (139, "tracekit: error: the traced command was killed by SIGSEGV; the capture c.tkcap is complete",
     "tracekit record exited with 139: tracekit: error: the traced command was killed by SIGSEGV; the capture c.tkcap is complete"),
    (0, "Stopped (command exited) after 34.5 s", None),
])
def test_a_workload_that_dies_under_the_recorder_fails_the_run_with_its_exit(tmp_path, monkeypatch, record_exit, last_line, error):
    """The recorder passes its command's failure on (a stop CI's guest workload: SIGSEGV after 262 walks,
    when the recorder still exited 0): the run fails with the recorder's own last line, not counts of 0."""
    from tracekit.lab import guest_record

    def fake_record(argv, stdout, log_path, start):
        (tmp_path / guest_record.CAPTURE).mkdir()
        log_path.write_text(f"Tracing pid 157\n{last_line}\n")
        return record_exit, start

    monkeypatch.setattr(guest_record, "prepare_kernel", lambda scenario: None)
    monkeypatch.setattr(guest_record, "_record", fake_record)
    meta = guest_record.run("arm64", "eager-enable", "bcc", tmp_path)
    assert meta["record_exit"] == record_exit
    assert (meta["status"], meta.get("error")) == (("complete", None) if error is None else ("error", f"RuntimeError: {error}"))
    assert json.loads((tmp_path / "meta.json").read_text())["status"] == meta["status"]
