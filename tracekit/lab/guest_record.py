"""Inside a lab guest: run the scenario's workload under the real ``tracekit record``.

``python3 -m tracekit.lab.guest_record ARCH SCENARIO BACKEND OUTDIR`` (the guest's ``/init``) records the
dirty-log workload as a command and writes the capture, ``meta.json`` and the recorder's log to
``OUTDIR``; exit 0, or one ``tk-guest-error:`` line and 1.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from tracekit.lab import scenarios
from tracekit.lab.guest_run import _kvm_banner, _kvm_params, guest_main, prepare_kernel, workload_options
from tracekit.workload.options import DirtyLogOptions, format_size

__all__ = ["main", "run", "record_argv", "workload_argv", "FAMILY", "BACKENDS", "CAPTURE"]

#: The probe families ``tracekit record`` attaches in each lab: the function probes, and on x86 also
#: the kvmmmu tracepoints (``kvm_mmu_split_huge_page``: the split count the raw path checks).
FAMILY = {"arm64": "stage2", "x86": "tdp,mmu"}
BACKENDS = ("bcc", "tracefs")
#: The capture directory's name inside OUTDIR.
CAPTURE = "capture.tkcap"
#: Bound on one recording (the emulated bcc compile alone takes minutes).
_RECORD_TIMEOUT = 1500
#: The walk and mmu rings in an emulated guest (MiB; the host default is 8 for mmu): its reader runs far
#: slower than the kernel filling them, and one x86 eager split fills 8 MiB of ``kvm_tdp_mmu_spte_changed``
#: events (4,174 lost on a loaded host); 64 MiB of the guest's 3 GiB holds a whole scenario.
RING_MB = 64


def workload_argv(options: DirtyLogOptions) -> list[str]:
    """``tracekit workload dirty-log`` arguments that rebuild exactly ``options`` (see build_options)."""
    argv = ["--vcpus", str(options.vcpus), "--bytes-per-vcpu", format_size(options.bytes_per_vcpu),
            "--iterations", str(options.iterations), "--backing", options.backing,
            "--write-percent", str(options.write_percent), "--seed", str(options.seed),
            "--memslots", str(options.memslots), "--guest-page-size", format_size(options.guest_page_size).lower()]  # fmt: skip
    if options.random_order:
        argv.append("--random-order")
    if options.log_mode is not None:
        argv += ["--log-mode", options.log_mode]
    if not options.initially_set:
        argv.append("--no-initially-set")
    if options.ring_entries is not None:
        argv += ["--ring-entries", str(options.ring_entries)]
    if options.eager_split_chunk is not None:
        argv += ["--eager-split-chunk", format_size(options.eager_split_chunk) if options.eager_split_chunk else "0"]
    return argv


def record_argv(arch: str, backend: str, capture: Path, options: DirtyLogOptions) -> list[str]:
    """The whole ``tracekit --verbose record ... -- tracekit workload dirty-log ...`` command line (verbose: a
    program the kernel refuses leaves its verifier log in ``record.log``, which the host keeps)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown recorder backend {backend!r}; choose bcc or tracefs")
    return ["tracekit", "--verbose", "record", "--probes", FAMILY[arch], "--backend", backend, "-o", str(capture),
            "--ring-mb", str(RING_MB), "--", "tracekit", "workload", "dirty-log", "--json", *workload_argv(options)]  # fmt: skip


def _last_line(log: Path) -> str:
    return (log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"])[0]


def _record(argv: list[str], stdout, log_path: Path, start: float) -> tuple[int, float | None]:
    """Run the recorder, copying its stderr to ``log_path``; returns (exit status, monotonic time of its
    ``Tracing pid`` banner: the probes are attached, after the bcc compile, or None)."""
    attached = None
    with open(log_path, "wb") as log:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"})  # fmt: skip
        try:
            for line in child.stderr:
                if attached is None and line.startswith(b"Tracing pid"):
                    attached = time.monotonic()
                log.write(line)
                log.flush()
                if time.monotonic() - start > _RECORD_TIMEOUT:
                    raise subprocess.TimeoutExpired(argv, _RECORD_TIMEOUT)
            return child.wait(timeout=max(1.0, _RECORD_TIMEOUT - (time.monotonic() - start))), attached
        finally:
            if child.poll() is None:
                child.terminate()  # the recorder detaches its probes on SIGTERM
                try:
                    child.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


def run(arch: str, name: str, backend: str, out: Path) -> dict:
    """Run scenario ``name`` of ``arch`` under ``tracekit record --backend backend``; fill ``out``."""
    scenario = scenarios.get(name, arch)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict = {
        "scenario": scenario.as_dict(),
        "recorder_backend": backend,
        "uname": " ".join(platform.uname()),
        "kernel_release": platform.release(),
        "kvm_params": _kvm_params(),
        "kvm_banner": _kvm_banner(),
        "status": "error",
    }
    try:
        if not scenario.workload_only:
            raise ValueError(f"scenario {name} drives the nested VM step by step; only workload scenarios run under "
                             "tracekit record")  # fmt: skip
        prepare_kernel(scenario)
        argv = record_argv(arch, backend, out / CAPTURE, workload_options(scenario))
        meta["record_command"] = argv
        start = time.monotonic()
        with open(out / "workload.json", "wb") as stdout:
            returncode, attached = _record(argv, stdout, out / "record.log", start)
        meta["record_seconds"] = round(time.monotonic() - start, 3)
        meta["attach_seconds"] = None if attached is None else round(attached - start, 3)
        meta["record_exit"] = returncode
        if returncode != 0:  # also the traced workload's failure, which the recorder passes on
            raise RuntimeError(f"tracekit record exited with {returncode}: {_last_line(out / 'record.log')}")
        meta["status"] = "complete"
    except subprocess.TimeoutExpired:
        meta["error"] = f"tracekit record did not finish within {_RECORD_TIMEOUT} s"
    except Exception as error:  # recorded for the host, then reported as one line
        meta["error"] = f"{type(error).__name__}: {error}"
    finally:
        (out / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return meta


def main(argv: list[str] | None = None) -> int:
    return guest_main(run, "python3 -m tracekit.lab.guest_record ARCH SCENARIO BACKEND OUTDIR", argv)


if __name__ == "__main__":
    sys.exit(main())
