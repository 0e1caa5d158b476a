"""The ``tracekit lab`` commands: emulated arm64 and x86 machines that run a scenario and bring back a capture.

Contract
--------
:func:`register` adds a ``lab`` sub-typer with ``arm64``, ``x86`` (run one scenario, write a
capture, print a summary or ``--json``, exit 1 when a check fails, 3 when the kernel cannot run the
scenario), ``scenarios`` (list them) and ``fetch`` (fill the cache ahead of time). Library errors
propagate as :class:`tracekit.errors.TracekitError` to the root app, which prints one line. The
``--json`` outputs are documented in ``docs/cli-json/lab.md``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer

from tracekit.errors import MissingCapability, ProbeLoadError, UsageError
from tracekit.funcprobes.availability import choose_backend, family_report, kprobe_support, running_types
from tracekit.funcprobes.btf_offsets import BtfTypes
from tracekit.funcprobes.fetchargs import TypeSources
from tracekit.funcprobes.kallsyms import MODES
from tracekit.funcprobes.stage2_probes import STAGE2_PROBES
from tracekit.funcprobes.tdp_probes import TDP_PROBES
from tracekit.host import KALLSYMS, load_kallsyms
from tracekit.lab import scenarios
from tracekit.render import prose_lines, table_text

__all__ = ["register", "lab_app"]

lab_app = typer.Typer(
    name="lab",
    help=(
        "Emulated machines (QEMU system emulation) with kprobes and a nested KVM: boot Debian's cloud kernel "
        "(or your own), run a scenario with the function probes attached inside, and bring the capture back. "
        "Counts are exact under emulation; timings are not.\n\n"
        "Examples:\n\n"
        "  tracekit lab arm64 -o split.tkcap                 # eager split at dirty-log enable\n\n"
        "  tracekit lab arm64 --scenario eager-clear -o clear.tkcap\n\n"
        "  tracekit lab x86 -o tdp.tkcap --json\n\n"
        "  tracekit lab scenarios"
    ),
    no_args_is_help=True,
)


def _run(arch: str, scenario: str, output: Path, kernel: Optional[str], modules: Optional[Path],
         timeout: Optional[float], keep_raw: bool, as_json: bool, recorder: Optional[str] = None) -> None:  # fmt: skip
    # the lab's modules load when a lab command runs, not at every tracekit start
    from tracekit.lab.runner import DEFAULT_TIMEOUT, RECORDER_TIMEOUT, run_lab

    if timeout is None:
        timeout = RECORDER_TIMEOUT if recorder else DEFAULT_TIMEOUT
    if not as_json:
        how = f"tracekit record --backend {recorder}" if recorder else "raw kprobe_events"
        typer.echo(f"tracekit lab {arch}: scenario {scenario} with {how}; booting an emulated machine "
                   f"(timeout {timeout:.0f} s)", err=True)  # fmt: skip
    run = run_lab(
        arch, scenario, output, kernel=kernel, modules=modules, timeout=timeout, keep_raw=keep_raw,
        command_line=shlex.join(["tracekit", *sys.argv[1:]]), recorder=recorder,
    )  # fmt: skip
    if as_json:
        typer.echo(json.dumps(run.as_dict(), indent=2, sort_keys=True))
    else:
        typer.echo(f"capture:  {run.output}")
        typer.echo(f"kernel:   {run.kernel_release} ({run.kernel_source}); boot+run {run.boot_seconds:.1f} s")
        if run.recorder != "raw":
            attach = f"{run.attach_seconds:.1f} s to attach (import, compile), " if run.attach_seconds is not None else ""
            typer.echo(f"recorder: tracekit record --backend {run.recorder} in the guest: {attach}"
                       f"{run.record_seconds:.1f} s in all")  # fmt: skip
        typer.echo(f"probes:   {len(run.probes['attached'])} attached, {len(run.probes['failed'])} not")
        for failed in run.probes["failed"]:
            typer.echo(f"  - {failed['probe']}: {failed['reason']}")
        if run.probes.get("silent"):
            typer.echo(f"attached, never hit: {', '.join(run.probes['silent'])} (inlined into a caller, or unused here)")
        for step in run.steps:
            counts = ", ".join(f"{k}={v:,}" for k, v in sorted(step["counts"].items())) or "-"
            typer.echo(f"step {step['index']} {step['op']:<22} {counts}")
        for key, entry in sorted(run.lock_contention.items()):
            typer.echo(f"contention {key:<24} {entry['waits']:>7,} waits, {entry['wait_ns'] / 1e6:,.1f} ms waited")
        for check in run.checks:
            typer.echo(_check_line(check))
        typer.echo("note: counts are exact under emulation; durations are not meaningful")
    if not run.ok:
        raise typer.Exit(1)


def _check_line(check: dict) -> str:
    """One check of a lab run as the summary prints it (``ok``, ``BAD`` or ``n/a`` first)."""
    if not check.get("applicable", True):
        return f"n/a {check['count']}: {check['reason']}"
    mark = "ok " if check["ok"] else "BAD"
    if check["measured"] is None:
        return f"{mark} {check['count']}: {check['reason']}"
    if check.get("kind") == "fired":
        return f"{mark} {check['count']}: fired {check['measured']:,} times" + ("" if check["ok"] else " (never)")
    model = f" (the model, {check['model']}: walk flags {check['walk_flags']})" if check.get("kind") == "model" else ""
    return f"{mark} {check['count']}: measured {check['measured']:,}, expected {check['expected']:,}{model}"


_SCENARIO_HELP = "Scenario to run (see 'tracekit lab scenarios')."
_OUTPUT_HELP = "Capture directory to write (must not exist); the console log goes next to it as OUTPUT.console.log."
_KERNEL_HELP = (
    "The kernel to boot: debian:bullseye|bookworm|bookworm-backports|trixie|trixie-backports|forky|sid, "
    "debian:VERSION (e.g. debian:6.1), or the path of your own image. Debian's cloud kernels come from the mirror "
    "of the host's apt sources (or $TRACEKIT_DEBIAN_MIRROR), cached. Default: debian:trixie."
)
_TIMEOUT_HELP = "Kill the emulated machine after this many seconds (its console log is kept)."
_RAW_HELP = "Also keep the guest's raw trace pages and format files as OUTPUT.guest/."
_JSON_HELP = "Print the run summary as JSON (docs/cli-json/lab.md)."
_RECORDER_HELP = (
    "Run the scenario's workload under the real 'tracekit record --backend bcc|tracefs' inside the guest (a bigger "
    "cached userland with bcc, LLVM, the kernel headers and pyarrow) instead of the raw kprobe_events path; "
    "workload scenarios only. The bcc compile runs emulated: minutes."
)
_TIMEOUT_DEFAULT_HELP = _TIMEOUT_HELP + " Default: 600, with --recorder 1800."


@lab_app.command("arm64")
def arm64(
    output: Path = typer.Option(..., "--output", "-o", help=_OUTPUT_HELP),
    scenario: str = typer.Option("eager-enable", "--scenario", "-s", help=_SCENARIO_HELP),
    kernel: Optional[str] = typer.Option(None, "--kernel", help=_KERNEL_HELP, metavar="SPEC"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help=_TIMEOUT_DEFAULT_HELP, show_default=False),
    keep_raw: bool = typer.Option(False, "--keep-raw", help=_RAW_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
    recorder: Optional[str] = typer.Option(None, "--recorder", help=_RECORDER_HELP, metavar="bcc|tracefs"),
) -> None:
    """Boot an emulated arm64 machine (VHE, GICv3), run a stage-2 scenario in a nested VM, write a capture.

    The stage2 function probes (kvm_pgtable_walk, stage2_split_walker, kvm_pgtable_stage2_split, ...)
    are attached with kprobe_events inside the guest (BTF argument names, or by register and BTF offset
    before 6.8). Exit status 1 when the scenario's exact expected counts are not met or a probe it needs
    saw nothing; 3 when the kernel cannot run the scenario at all (e.g. eager split before 6.5).

    Examples:

      tracekit lab arm64 -o split.tkcap

      tracekit lab arm64 --scenario lazy -o lazy.tkcap --keep-raw

      tracekit lab arm64 --kernel ~/linux/arch/arm64/boot/Image -o patched.tkcap --json

      tracekit lab arm64 --kernel debian:bookworm --scenario lazy -o lazy-6.1.tkcap

      tracekit lab arm64 --recorder bcc -o bcc.tkcap        # the real tracekit record, bcc kprobes

      tracekit lab arm64 --recorder tracefs -o tf.tkcap     # the real tracekit record, kprobe_events
    """
    _run("arm64", scenario, output, kernel, None, timeout, keep_raw, as_json, recorder)


@lab_app.command("x86")
def x86(
    output: Path = typer.Option(..., "--output", "-o", help=_OUTPUT_HELP),
    scenario: str = typer.Option("tdp-eager", "--scenario", "-s", help=_SCENARIO_HELP),
    kernel: Optional[str] = typer.Option(None, "--kernel", help=_KERNEL_HELP, metavar="SPEC"),
    modules: Optional[Path] = typer.Option(
        None, "--modules", help="Directory with the .ko files (kvm.ko, kvm-amd.ko, irqbypass.ko, ...) a --kernel PATH "
        "needs loaded; loaded in dependency order."
    ),
    timeout: Optional[float] = typer.Option(None, "--timeout", help=_TIMEOUT_DEFAULT_HELP, show_default=False),
    keep_raw: bool = typer.Option(False, "--keep-raw", help=_RAW_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
    recorder: Optional[str] = typer.Option(None, "--recorder", help=_RECORDER_HELP, metavar="bcc|tracefs"),
) -> None:
    """Boot an emulated x86-64 machine (nested SVM/NPT, TDP MMU), run a scenario, write a capture.

    The tdp function probes and the kvmmmu:kvm_mmu_split_huge_page tracepoint are recorded inside.

    Examples:

      tracekit lab x86 -o tdp.tkcap

      tracekit lab x86 --scenario tdp-lazy -o lazy.tkcap --json

      tracekit lab x86 --kernel debian:7.3 -o tdp-7.3.tkcap

      tracekit lab x86 --recorder tracefs -o tf.tkcap
    """
    _run("x86", scenario, output, kernel, modules, timeout, keep_raw, as_json, recorder)


@lab_app.command("matrix")
def matrix_cmd(
    arch: str = typer.Option(..., "--arch", help="arm64 or x86."),
    kernels: List[str] = typer.Option(..., "--kernel", help="A column: KERNEL[,SETTING=VALUE...], e.g. debian:trixie, "
                                      "an image path, debian:trixie,eager_page_split=N. Repeat for each column."),
    scenario_names: List[str] = typer.Option(..., "--scenario", "-s", help="Scenario (repeatable; NAME[@SETTING=VALUE])."),
    vcpus: Optional[str] = typer.Option(None, "--vcpus", help="Run each scenario with these vCPU counts, e.g. 1,2,4."),
    repeat: int = typer.Option(1, "--repeat", help="Runs per kernel and scenario."),
    output: Path = typer.Option(..., "--output", "-o", help="Matrix directory: DIR/KERNEL/SCENARIO/RUN.tkcap, "
                                "matrix.md, matrix.json. Captures already there are reused (resume)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help=_TIMEOUT_HELP + " Default: 600 per run."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run again the cells that failed last time."),
    as_json: bool = typer.Option(False, "--json", help="Print matrix.json instead of the Markdown table."),
) -> None:
    """Run scenarios on several kernels and compare them in the shape of a kernel cover letter.

    One capture per kernel, scenario and run; then a table per scenario whose rows are measures (probe
    counts per step, visits per level, lock waits by mode, the scenario's exact checks, emulated step
    times) and whose columns are the kernels. A scenario a kernel cannot run shows "n/a: reason". Exit
    status 1 when a run failed or missed a check (the tables are written either way).

    Examples:

      tracekit lab matrix --arch x86 --kernel debian:trixie --kernel debian:trixie,eager_page_split=N -s tdp-eager -o m

      tracekit lab matrix --arch arm64 --kernel debian:trixie -s contention --vcpus 1,2,4 -o contention
    """
    # the lab's modules load when a lab command runs, not at every tracekit start
    from tracekit.lab import matrix

    counts = None
    if vcpus:
        try:
            counts = [int(v) for v in vcpus.split(",")]
        except ValueError:
            raise UsageError(f"--vcpus {vcpus!r} is not a comma-separated list of numbers") from None
    command = shlex.join(["tracekit", *sys.argv[1:]])
    cells = matrix.plan(arch, kernels, scenario_names, output, counts, repeat)

    def progress(cell, outcome, reused) -> None:
        how = "reused" if reused else "ran"
        detail = outcome.get("reason") or outcome.get("kernel_release", "")
        typer.echo(f"[{how}] {cell.column.spec} {cell.scenario} run {cell.run}: {outcome['status']} {detail}", err=True)

    outcomes = matrix.run_matrix(arch, cells, timeout=timeout, retry_failed=retry_failed, progress=progress)
    tables = matrix.build_tables(arch, cells, outcomes)
    plan_args = {"arch": arch, "kernels": kernels, "scenario_names": scenario_names, "vcpus": counts, "repeat": repeat}
    text = matrix.write_outputs(output, tables, cells, outcomes, command, plan_args)
    typer.echo((output / "matrix.json").read_text() if as_json else text)
    problems = sum(table.problems for table in tables)
    if problems:
        typer.echo(f"tracekit lab matrix: {problems} run(s) failed or missed a check (see the runs rows)", err=True)
        raise typer.Exit(1)


@lab_app.command("scenarios")
def list_scenarios(
    arch: Optional[str] = typer.Option(None, "--arch", help="Only this architecture (arm64 or x86)."),
    as_json: bool = typer.Option(False, "--json", help="Print the scenarios as JSON (docs/cli-json/lab.md)."),
) -> None:
    """List the lab scenarios, their steps and their exact expected counts.

    Examples:

      tracekit lab scenarios

      tracekit lab scenarios --arch x86 --json
    """
    chosen = [s for s in scenarios.SCENARIOS if arch is None or s.arch == arch]
    if as_json:
        typer.echo(json.dumps([s.as_dict() for s in chosen], indent=2, sort_keys=True))
        return
    name_width = max((len(s.name) for s in chosen), default=0)
    for s in chosen:  # wrapped at words to the terminal, under the description's column
        expected = ", ".join([*(f"{k}={v:,}" for k, v in s.expected.items()), *(f"{k} from the model" for k in s.model_counts)])
        needs = f" [needs {', '.join(s.needs)}]" if s.needs else ""
        text = f"{s.arch:<6} {s.name:<{name_width}}  {s.description}" + (f" [expects {expected}]" if expected else "") + needs
        typer.echo("\n".join(prose_lines(text, indent=" " * (9 + name_width))))


@lab_app.command("probes")
def probes_cmd(
    family: Optional[str] = typer.Option(None, "--family", help="stage2 (arm64) or tdp (x86); default: both."),
    kallsyms: Optional[Path] = typer.Option(
        None, "--kallsyms", help="Resolve against this kallsyms text (e.g. saved from another machine) instead of /proc/kallsyms."
    ),
    machine: Optional[str] = typer.Option(None, "--machine", help="Architecture to assume (aarch64, x86_64); default: this one."),
    btf: Optional[Path] = typer.Option(
        None, "--btf", help="That kernel's BTF: a raw blob (its /sys/kernel/btf/vmlinux) or its uncompressed image; "
        "default: this machine's /sys/kernel/btf."),
    module: list[Path] = typer.Option([], "--module", help="A KVM module's BTF (its .ko or /sys/kernel/btf/kvm) on --btf; "
                                      "repeatable."),
    btf_args: Optional[bool] = typer.Option(None, "--btf-args/--no-btf-args", help="Whether that kernel's kprobe_events "
                                            "takes BTF argument names (6.8+); default: this machine's tracefs says."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (docs/cli-json/lab.md)."),
) -> None:
    """Where each function probe would attach, how its arguments are fetched, and which backend would be used.

    Each probe is resolved against kallsyms (compiler clones such as .isra.0 included) and the kernel's
    BTF: attached with BTF argument names (6.8+), by register and BTF member offset (older kernels),
    without arguments (no prototype, a clone), or absent with the reason (inlined, not in this kernel,
    other architecture, CONFIG_KPROBES off).

    Examples:

      tracekit lab probes

      tracekit lab probes --family stage2 --kallsyms arm64-kallsyms.txt --machine aarch64 --btf Image --no-btf-args --json
    """
    families = {"stage2": STAGE2_PROBES, "tdp": TDP_PROBES}
    if family is not None and family not in families:
        raise UsageError(f"unknown probe family {family!r}; choose stage2 or tdp")
    try:
        symbols = load_kallsyms(kallsyms or KALLSYMS)
        if btf is not None:
            base = BtfTypes.from_kernel_image(btf) if btf.read_bytes()[:2] != b"\x9f\xeb" else BtfTypes.load(btf)
            types = TypeSources([_module_types(base, m) for m in module] or [base])
        else:
            types = running_types()
    except OSError as error:
        raise UsageError(f"cannot read {error.filename}: {error.strerror}") from None
    support = kprobe_support(symbols)
    if btf_args is not None:
        support = dataclasses.replace(support, btf_args=btf_args)
    bcc_ok = _bcc_importable()
    btf_ok = types is not None
    backend, why = choose_backend(support, bcc_ok, btf_ok)
    report = {
        "machine": machine or platform.machine(),
        "kprobes": support.kprobes,
        "kprobe_events": support.kprobe_events,
        "btf_args": support.btf_args,
        "btf": types is not None,
        "reason": support.reason,
        "backend": backend,
        "backend_reason": why,
        "families": {
            name: family_report(name, probes, symbols, support, machine, types)
            for name, probes in families.items()
            if family in (None, name)
        },
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    typer.echo(f"backend: {backend} ({why})")
    for name, rows in report["families"].items():
        cells = []
        for row in rows:
            how = "" if row["status"] in ("absent", "wrong-arch") else MODES[row["mode"]].replace("attached ", "")
            detail = " ".join(row["fetch"]) or ("" if row["status"] == "no-kprobes" else row["reason"])
            if row["fetch"] and row["dropped"]:
                detail += f" (without {', '.join(row['dropped'])})"
            cells.append([row["probe"], row["status"], how, row["symbol"] or "-", detail])
        typer.echo(table_text(["probe", "status", "how", "symbol", "arguments or reason"], cells, title=f"{name}:"))


def _module_types(base, path: Path):
    """``base`` with the module BTF at ``path``; UsageError naming the file when it is not BTF."""
    try:
        return base.with_module(path.read_bytes())
    except (MissingCapability, ProbeLoadError) as error:
        raise UsageError(f"{path}: {error}") from None


def _bcc_importable() -> bool:
    try:
        import bcc  # noqa: F401  (optional dependency: only whether it loads matters here)
    except ImportError:
        return False
    return True


@lab_app.command("fetch")
def fetch_cmd(
    arch: str = typer.Argument(..., help="arm64 or x86."),
    kernel: Optional[str] = typer.Option(None, "--kernel", help=_KERNEL_HELP, metavar="SPEC"),
    refresh: bool = typer.Option(False, "--refresh", help="Read the suite's package lists again and take the kernel "
                                 "they name now (a cached kernel is otherwise reused as it is)."),
    recorder: bool = typer.Option(False, "--recorder", help="Also the bigger userland of --recorder runs (bcc, LLVM, "
                                  "the kernel headers, pyarrow from PyPI: about 200 MB to download, 570 MB unpacked)."),
) -> None:
    """Download and unpack the lab's kernel and userland into the cache now (apt with a private state dir).

    The cache is ~/.cache/tracekit/lab unless TRACEKIT_LAB_CACHE is set; the Debian mirror is the one the
    host's apt sources name unless TRACEKIT_DEBIAN_MIRROR is set.

    Examples:

      tracekit lab fetch arm64

      TRACEKIT_LAB_CACHE=/srv/tk-lab tracekit lab fetch x86

      tracekit lab fetch arm64 --recorder

      tracekit lab fetch x86 --kernel debian:bullseye

      tracekit lab fetch arm64 --kernel debian:sid --refresh
    """
    # the lab's modules load when a lab command runs, not at every tracekit start
    from tracekit.lab import fetch, kernels

    if arch not in fetch.DEB_ARCH:
        raise UsageError(f"unknown lab architecture {arch!r}; choose arm64 or x86")
    cache = fetch.cache_dir()
    lab_kernel = kernels.resolve_kernel(kernel, arch, cache, refresh=refresh)
    userland = fetch.fetch_userland(arch, cache)
    typer.echo(f"kernel {lab_kernel.release} ({lab_kernel.source}): {lab_kernel.image}")
    if lab_kernel.modules:
        typer.echo(f"modules loaded in the guest: {', '.join(name for name, _ in lab_kernel.modules)}")
    refused: dict[str, list[str]] = {}
    for scenario in scenarios.SCENARIOS:
        reason = scenarios.not_applicable(scenario, lab_kernel.version) if scenario.arch == arch else None
        if reason:
            refused.setdefault(reason, []).append(scenario.name)
    for reason, names in refused.items():
        typer.echo(f"not applicable on {lab_kernel.release}: {', '.join(names)} ({reason})")
    typer.echo(f"userland: {userland}")
    if recorder:
        typer.echo(f"recorder userland: {fetch.fetch_recorder_userland(arch, cache, lab_kernel.release, lab_kernel.suite)}")


kernel_app = typer.Typer(name="kernel", help="Lab kernels built from source (minimal config, optional patches).",
                         no_args_is_help=True)
lab_app.add_typer(kernel_app, name="kernel")


@kernel_app.command("build")
def kernel_build(
    arch: str = typer.Option(..., "--arch", help="arm64 or x86."),
    source: str = typer.Option("debian:trixie", "--source", help="debian:CODENAME (Debian's linux-source-X) or a kernel tree."),
    patch: list[str] = typer.Option([], "--patch", help="A -p1 patch file, or the name of one of the project's own patches; repeatable."),
    config: list[Path] = typer.Option([], "--config", help="A config fragment added after the lab's own; repeatable."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Parallel make jobs (default: the CPU count)."),
    as_json: bool = typer.Option(False, "--json", help="Print the build as JSON (docs/cli-json/lab.md)."),
) -> None:
    """Build a minimal lab kernel (allnoconfig + what the labs need), cached by source, patches and config.

    Prints the image to pass to 'tracekit lab ARCH --kernel'. A patched build starts from the cached
    unpatched build's objects, so only what the patches touch is recompiled.

    Examples:

      tracekit lab kernel build --arch arm64

      tracekit lab kernel build --arch arm64 --patch split-skip-level3

      nice -n 10 tracekit lab kernel build --arch x86 --source ~/linux --config my.config -j2
    """
    # the lab's modules load when a lab command runs, not at every tracekit start
    from tracekit.lab import kbuild

    result = kbuild.build(arch, source, patch, config, jobs=jobs, progress=lambda line: typer.echo(line, err=True))
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2, sort_keys=True))
        return
    how = "cached" if result.cached else f"built in {result.seconds:.0f} s, {result.compiled} objects compiled"
    typer.echo(f"kernel {result.release} ({how}); boot it with: tracekit lab {arch} --kernel IMAGE", err=True)
    typer.echo(str(result.image))


def register(app: typer.Typer) -> None:
    """Add the ``lab`` sub-typer to the root app."""
    app.add_typer(lab_app, name="lab")
