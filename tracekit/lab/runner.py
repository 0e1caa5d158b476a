"""Run one lab: resolve the kernel, build the initramfs, boot under QEMU, decode, check, write the capture.

:func:`run_lab` runs one scenario on one kernel and returns the :class:`LabRun` that ``--json`` prints;
:func:`scenario_checks` judges the run on that kernel's semantics (docs/lab.md).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tracekit.analysis.skiplevels import expected_split_visits
from tracekit.capture import open_capture
from tracekit.errors import LabError, MissingCapability, NotApplicable, UsageError
from tracekit.funcprobes.btf_offsets import BtfTypes
from tracekit.lab import fetch, kernel_features, kernels, machine, recorded, results, scenarios
from tracekit.lab.guest_record import BACKENDS, CAPTURE
from tracekit.lab.guest_run import probe_family
from tracekit.lab.kbuild import build_record
from tracekit.procs import pid_alive

__all__ = ["run_lab", "LabRun", "TIMING_NOTE", "ARCHES", "RECORDERS", "RECORDER_TIMEOUT", "DEFAULT_TIMEOUT",
           "guest_memory_mib"]

ARCHES = ("arm64", "x86")
#: ``--recorder`` choices: the real ``tracekit record`` backends run inside the guest.
RECORDERS = BACKENDS
DEFAULT_TIMEOUT = machine.DEFAULT_TIMEOUT
#: Bound on a recorder run: the emulated clang compile of the bcc program alone takes minutes.
RECORDER_TIMEOUT = 1800
#: Guest memory the recorder userland adds (its ~570 MB initramfs is held twice while it unpacks; clang).
_RECORDER_EXTRA_MIB = 2048
TIMING_NOTE = (
    "emulated machine (QEMU TCG): event counts are exact, durations are those of the emulator and "
    "say nothing about real hardware"
)


@dataclass
class LabRun:
    arch: str
    scenario: dict
    output: Path
    kernel_release: str
    kernel_source: str
    boot_seconds: float
    console_log: Path
    counts: dict[str, int]
    steps: list[dict]
    kernel_histograms: dict
    probes: dict
    checks: list[dict] = field(default_factory=list)
    lock_contention: dict = field(default_factory=dict)
    recorder: str = "raw"
    record_seconds: float | None = None
    attach_seconds: float | None = None
    visits_by_level: dict = field(default_factory=dict)
    kernel: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(check["ok"] for check in self.checks)

    def as_dict(self) -> dict:
        return {
            "arch": self.arch,
            "scenario": self.scenario,
            "capture": str(self.output),
            "kernel_release": self.kernel_release,
            "kernel_source": self.kernel_source,
            "boot_seconds": round(self.boot_seconds, 3),
            "console_log": str(self.console_log),
            "counts": self.counts,
            "steps": self.steps,
            "kernel_histograms": self.kernel_histograms,
            "probes": self.probes,
            "checks": self.checks,
            "lock_contention": self.lock_contention,
            "recorder": self.recorder,
            "record_seconds": self.record_seconds,
            "attach_seconds": self.attach_seconds,
            "visits_by_level": {name: {str(k): v for k, v in levels.items()} for name, levels in self.visits_by_level.items()},
            "ok": self.ok,
            "kernel": self.kernel,
            "timing_note": TIMING_NOTE,
        }


def scenario_checks(scenario: scenarios.Scenario, release: str, counts: dict[str, int], probes: dict,
                    capture: Path | None = None) -> list[dict]:  # fmt: skip
    """The run's checks on kernel ``release``: each exact expected count (that kernel's semantics), each of the
    scenario's ``model_counts`` as the model predicts it for ``capture`` (kind ``model``) and each
    ``evidence`` probe that must fire. A probe the kernel cannot have is ``applicable: false`` with the reason; one
    the guest did not attach (``probes["failed"]``, or a tracepoint missing from ``probes["tracepoints"]``) or that
    never fired fails with the guest's reason: a run never passes on probes that saw nothing."""
    version = kernels.version_of(release)
    absent = kernel_features.absent_probes(version, scenario.arch)
    failed = {f["probe"]: f["reason"] for f in probes.get("failed", []) if isinstance(f, dict) and "probe" in f}
    enabled = probes.get("tracepoints")
    if enabled is not None:
        wanted = [*probe_family(scenario.arch)[1], *scenario.tracepoints]
        names = {event.split(":")[-1] for event in enabled}
        failed.update({event: f"tracepoint {system}:{event} is not in this kernel" for system, event in wanted
                       if event not in names})  # fmt: skip
    wanted = [(name, count, "exact") for name, count in scenarios.expected_on(scenario, version).items()]
    wanted += [(name, 1, "fired") for name in scenario.evidence]
    models = _model_expectations(scenario, capture) if capture is not None else {}
    wanted += [(name, model["expected"], "model") for name, model in models.items()]
    checks = []
    for name, expected, kind in wanted:
        check = {"count": name, "kind": kind, "expected": expected, "measured": counts.get(name, 0), "applicable": True}
        if name in absent:
            check.update(applicable=False, ok=True, measured=None,
                         reason=f"not applicable on {release}: {absent[name].reason()}")  # fmt: skip
        elif name in failed:
            why = failed[name]
            if "Invalid fetch argument" in why and not kernel_features.has(version, scenario.arch, "kprobe-btf-args"):
                why += f" ({kernel_features.get('kprobe-btf-args').reason()})"
            check.update(ok=False, measured=None, reason=f"{name} not attached: {why}")
        elif kind == "fired":
            check.update(ok=check["measured"] > 0, reason="" if check["measured"] else f"{name} attached but never fired")
        else:
            check.update(ok=check["measured"] == expected, reason="")
        if kind == "model":
            check.update(model=models[name]["model"], walk_flags=models[name]["walk_flags"])
        checks.append(check)
    return checks


def _model_expectations(scenario: scenarios.Scenario, capture: Path) -> dict[str, dict]:
    """``{"split_walker": {"expected", "model", "walk_flags"}}`` for a scenario whose ``model_counts`` name it: the
    model's LEAF visits for the run's own split calls under the walk flags its kernel passed (0 without split walks)."""
    if "split_walker" not in scenario.model_counts:
        return {}
    cap = open_capture(capture)
    model = expected_split_visits(cap.dataframe("stage2_walk"), cap.dataframe("stage2_visit"), scenario.as_dict())
    return {"split_walker": model or {"expected": 0, "model": "no split walks", "walk_flags": "-"}}


def run_lab(
    arch: str,
    scenario: str,
    output: Path,
    *,
    kernel: str | Path | None = None,
    modules: Path | None = None,
    timeout: float | None = None,
    keep_raw: bool = False,
    command_line: str = "",
    recorder: str | None = None,
) -> LabRun:
    """See the module contract."""
    if arch not in ARCHES:
        raise UsageError(f"unknown lab architecture {arch!r}; choose arm64 or x86")
    chosen = scenarios.get(scenario, arch)
    check_recorder(recorder, chosen, kernel)
    if timeout is None:
        timeout = RECORDER_TIMEOUT if recorder else DEFAULT_TIMEOUT
    if output.exists() and any(output.iterdir()):
        raise UsageError(f"{output} already exists and is not empty; choose a new capture path")
    fetch.require_tool(fetch.QEMU_BINARY[arch], fetch.QEMU_PACKAGE[arch])
    cache = fetch.cache_dir()
    fetch.check_disk(cache, 256 << 20)
    lab_kernel = kernels.resolve_kernel(kernel, arch, cache, modules)
    reason = scenarios.not_applicable(chosen, lab_kernel.version)
    if reason:
        raise NotApplicable(f"scenario {chosen.name} is not applicable on {lab_kernel.release}: {reason}")
    image, release_hint, module_files, source = lab_kernel.image, lab_kernel.release, lab_kernel.modules, lab_kernel.spec
    if recorder:
        # bcc compiles against the booted Debian kernel's headers; tracefs needs none: the default userland serves
        headers = lab_kernel if recorder == "bcc" else kernels.resolve_kernel(None, arch, cache)
        userland = fetch.fetch_recorder_userland(arch, cache, headers.release, headers.suite)
    else:
        userland = fetch.fetch_userland(arch, cache)
    output.parent.mkdir(parents=True, exist_ok=True)
    console_log = output.parent / f"{output.name}.console.log"
    _remove_stale_work_dirs(cache)
    work = Path(tempfile.mkdtemp(prefix=f"tracekit-lab-{os.getpid()}-", dir=cache))
    try:
        initrd = work / "initrd.cpio"
        machine.build_initramfs(initrd, userland, module_files)
        archive = work / "result.tar"
        guest_console = work / "console.log"  # copied to console_log whatever happens
        append = f"tk.arch={arch} tk.scenario={chosen.name} {chosen.kernel_args}".strip()
        if arch == "x86":
            append += f" tk.kvmargs={kvm_args(chosen, lab_kernel.kvm_params)}"
        if recorder:
            append += f" tk.recorder={recorder}"
        command = machine.qemu_command(
            arch, image, initrd, guest_console, archive, append, memory_mib=guest_memory_mib(arch, chosen, recorder),
            cpu_features=machine.RECORDER_X86_FEATURES if recorder and arch == "x86" else "",
        )
        boot = _boot(command, guest_console, archive, timeout, console_log)
        try:
            guest_dir = results.unpack(archive, work / "guest")
        except LabError as error:
            raise LabError(f"{error}{results.guest_reason(boot.console, str(error))} (console log: {console_log})") from None
        if recorder:
            return _adopt_recorded(arch, chosen, recorder, output, guest_dir, boot, lab_kernel, console_log,
                                   command_line, work, cache, keep_raw)  # fmt: skip
        trace = results.read_guest_trace(guest_dir)
        if trace.meta.get("status") != "complete" or boot.guest_rc != 0:
            error = trace.meta.get("error", "see the console log")
            raise LabError(f"the guest scenario failed: {error}{results.guest_reason(boot.console, error)} "
                           f"(console log: {console_log})")  # fmt: skip
        probes = probe_family(arch)[0]
        manifest = {
            "source": {"kind": "lab", "description": f"tracekit lab {arch} --scenario {chosen.name}: {chosen.description}"},
            "backend": "tracefs-kprobe-events",
            "command_line": _portable(command_line, work, cache, output),
            "host": f"qemu-{arch}-tcg",
            "arch": "aarch64" if arch == "arm64" else "x86_64",
            "kernel_release": trace.meta.get("kernel_release", release_hint),
            "lab_kernel": _portable_kernel(lab_kernel, work, cache, output),
            "kvm_params": trace.meta.get("kvm_params", {}),
            "kvm_banner": trace.meta.get("kvm_banner", []),
            "page_size": 4096,
            "target": {"pids": [trace.meta.get("vmm_pid")], "comm": "python3", "threads": []},
            "probes": {
                "requested": trace.meta["probes"]["requested"],
                "attached": trace.meta["probes"].get("attached", []),
                "failed": trace.meta["probes"].get("failed", []),
                "resolution": trace.meta["probes"].get("resolution", []),
                "tracepoints": trace.meta["probes"].get("tracepoints", []),  # the ones this kernel has
            },
            "workload": {"scenario": chosen.as_dict(), "ioctl_log": trace.meta.get("workload_log", [])},
            "timing_note": TIMING_NOTE,
            "qemu_command": [_portable(arg, work, cache, output) for arg in boot.command],
        }
        hits = {ev.name for ev in trace.events}
        # attached but never hit: an inlined-into-its-caller global symbol, or a path the scenario skips
        manifest["probes"]["silent"] = [name for name in manifest["probes"]["attached"] if name not in hits]
        offset = _mmu_lock_offset(image) if chosen.tracepoints else None
        summary = results.write_capture(output, trace, guest_dir, probes, manifest, mmu_lock_offset=offset)
        if keep_raw:
            shutil.copytree(guest_dir, output.parent / f"{output.name}.guest")
        return LabRun(
            arch=arch,
            scenario=chosen.as_dict(),
            output=output,
            kernel_release=manifest["kernel_release"],
            kernel_source=source,
            boot_seconds=boot.seconds,
            console_log=console_log,
            counts=summary["counts"],
            steps=summary["steps"],
            kernel_histograms=summary["kernel_histograms"],
            probes=manifest["probes"],
            checks=scenario_checks(chosen, manifest["kernel_release"], summary["counts"],
                                   {**manifest["probes"], "tracepoints": trace.meta["probes"].get("tracepoints")}, output),
            lock_contention=summary["lock_contention"],
            kernel=lab_kernel.as_dict(),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def kvm_args(scenario: scenarios.Scenario, known: tuple[str, ...] | None) -> str:
    """The x86 ``kvm`` module arguments (comma-separated) for ``scenario``, only those the module has (``known``;
    None: all): ``tdp_mmu`` and, from 5.17, ``eager_page_split``."""
    args = {"tdp_mmu": "1", "eager_page_split": "1" if scenario.eager_page_split else "0"}
    return ",".join(f"{k}={v}" for k, v in args.items() if known is None or k in known)


def check_recorder(recorder: str | None, scenario: scenarios.Scenario, kernel: str | Path | None) -> None:
    """UsageError for a ``--recorder`` the run cannot honour (one line naming the way out)."""
    if recorder is None:
        return
    if recorder not in RECORDERS:
        raise UsageError(f"unknown recorder backend {recorder!r}; choose bcc or tracefs")
    if not scenario.workload_only:
        workload = [s.name for s in scenarios.SCENARIOS if s.arch == scenario.arch and s.workload_only]
        raise UsageError(f"scenario {scenario.name} drives the nested VM step by step and cannot run under tracekit "
                         f"record; --recorder works with: {', '.join(workload)}")  # fmt: skip
    if recorder == "bcc" and kernels.parse_spec(kernel).kind == "path":
        raise UsageError("--recorder bcc compiles against the Debian kernel's headers; with --kernel use --recorder "
                         "tracefs")  # fmt: skip


def guest_memory_mib(arch: str, scenario: scenarios.Scenario, recorder: str | None) -> int:
    """Guest RAM (MiB): the scenario's (or the architecture's default), plus room for the recorder userland."""
    base = scenario.guest_ram_mib or machine.MEMORY_MIB[arch]
    return base + (_RECORDER_EXTRA_MIB if recorder else 0)


def _adopt_recorded(arch: str, chosen: scenarios.Scenario, recorder: str, output: Path, guest_dir: Path,
                    boot: machine.BootResult, lab_kernel: kernels.LabKernel, console_log: Path, command_line: str,
                    work: Path, cache: Path, keep_raw: bool) -> LabRun:  # fmt: skip
    """The guest's ``tracekit record`` capture as the lab's output (see the module contract)."""

    meta = json.loads((guest_dir / "meta.json").read_text())
    log = guest_dir / "record.log"
    record_log = output.parent / f"{output.name}.record.log"
    if log.exists():
        shutil.copyfile(log, record_log)
    if keep_raw:
        shutil.copytree(guest_dir, output.parent / f"{output.name}.guest", ignore=shutil.ignore_patterns(CAPTURE))
    if meta.get("status") != "complete" or boot.guest_rc != 0:
        error = meta.get("error", "see the console log")
        raise LabError(f"tracekit record in the guest failed: {error}{results.guest_reason(boot.console, error)} "
                       f"(recorder log: {record_log}; console log: {console_log})")  # fmt: skip
    probes = probe_family(arch)[0]
    lab = {
        "source": {"kind": "lab", "description": f"tracekit lab {arch} --scenario {chosen.name} --recorder {recorder}: "
                   f"{chosen.description}"},  # fmt: skip
        "host": f"qemu-{arch}-tcg",
        "command_line": _portable(command_line, work, cache, output),
        "kernel_release": meta.get("kernel_release", lab_kernel.release),
        "lab_kernel": _portable_kernel(lab_kernel, work, cache, output),
        "kvm_params": meta.get("kvm_params", {}),
        "kvm_banner": meta.get("kvm_banner", []),
        "timing_note": TIMING_NOTE,
        "qemu_command": [_portable(arg, work, cache, output) for arg in boot.command],
        "lab": {"recorder_backend": recorder, "scenario": chosen.as_dict(), "record_command": meta.get("record_command"),
                "record_seconds": meta.get("record_seconds"), "attach_seconds": meta.get("attach_seconds")},  # fmt: skip
    }
    manifest = recorded.adopt_capture(guest_dir / CAPTURE, output, lab)
    cap = open_capture(output)
    counts = recorded.capture_counts(cap, probes)
    steps = recorded.phase_steps(cap, probes, (manifest.get("workload") or {}).get("phases", []))
    probes_info = dict(manifest.get("probes", {}))
    return LabRun(
        arch=arch, scenario=chosen.as_dict(), output=output, kernel_release=lab["kernel_release"],
        kernel_source=lab_kernel.spec, boot_seconds=boot.seconds, console_log=console_log, counts=counts, steps=steps,
        kernel_histograms={}, probes=probes_info, checks=scenario_checks(chosen, lab["kernel_release"], counts, probes_info, output), recorder=recorder, kernel=lab_kernel.as_dict(),
        record_seconds=meta.get("record_seconds"), attach_seconds=meta.get("attach_seconds"), visits_by_level=recorded.visits_by_level(cap, probes),
    )  # fmt: skip


def _boot(command: list[str], guest_console: Path, archive: Path, timeout: float, console_log: Path) -> machine.BootResult:
    """Boot the guest; once more when its kernel died before reaching ``/init`` (no ``tk-booted`` line:
    an emulation fault while booting, e.g. a trap taken while the kernel patches its own text on
    another vCPU) or locked up at any time (:class:`tracekit.lab.machine.GuestLockup`: a CPU that
    stopped taking interrupts, seen once in an arm64 recorder run). The failed attempt's console is
    kept as ``<capture>.console.attempt1.log``."""
    try:
        boot = _boot_once(command, guest_console, archive, timeout, console_log)
    except machine.GuestLockup:
        boot = None
    if boot is not None and "tk-booted" in boot.console:
        return boot
    shutil.copyfile(console_log, console_log.with_name(console_log.name.replace(".console.log", ".console.attempt1.log")))
    return _boot_once(command, guest_console, archive, timeout, console_log)


def _boot_once(command: list[str], guest_console: Path, archive: Path, timeout: float, console_log: Path) -> machine.BootResult:
    try:
        return machine.boot(command, guest_console, archive, timeout)
    except LabError as error:  # the same kind of error, naming the kept console
        raise type(error)(str(error).replace(str(guest_console), str(console_log)), detail=error.detail) from None
    finally:
        if guest_console.exists():
            shutil.copyfile(guest_console, console_log)


def _remove_stale_work_dirs(cache: Path) -> None:
    """Delete work directories left by lab runs whose process died (``tracekit-lab-PID-*``)."""
    for path in cache.glob("tracekit-lab-*"):
        parts = path.name.split("-")
        pid = int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else None
        if not pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def _mmu_lock_offset(image: Path) -> int | None:
    """``offsetof(struct kvm, mmu_lock)`` from the BTF inside an uncompressed kernel image, if it has one."""
    try:
        return BtfTypes.from_kernel_image(image).member("kvm", "mmu_lock").offset
    except (MissingCapability, OSError):
        return None


def _portable_kernel(lab_kernel: kernels.LabKernel, work: Path, cache: Path, output: Path) -> dict:
    """The kernel's description for a capture's manifest, without this machine's directories."""
    described = lab_kernel.as_dict()
    for key in ("spec", "image", "config", "source"):  # every field that can name a file here
        if isinstance(described[key], str):
            described[key] = _portable(described[key], work, cache, output)
    built = build_record(lab_kernel.image)  # a `tracekit lab kernel build` image: its source and patches
    if built:
        described["build"] = built
    return described


def _portable(text: str, work: Path, cache: Path, output: Path) -> str:
    """``text`` without this machine's directories: the manifest of a capture travels (samples/)."""
    text = text.replace(str(work), "$WORK").replace(str(cache), "$TRACEKIT_LAB_CACHE")
    return text.replace(str(output), output.name)

