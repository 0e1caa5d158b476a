"""Inside a lab guest: attach the function probes with tracefs, run a scenario, save the raw trace.

``python3 -m tracekit.lab.guest_run ARCH SCENARIO OUTDIR`` (the guest's ``/init``, as root) resolves the
architecture's probes in ``/proc/kallsyms``, defines them in ``kprobe_events``, records into a private
tracefs instance (``mono`` clock, a hist trigger per hot probe), runs the scenario's steps between
``trace_marker_raw`` marks, and saves ``meta.json`` (probe resolution and failures with reasons, the VMM's
log, step times), the raw per-CPU pages and their formats into OUTDIR. It removes what it set up; a failure
prints one ``tk-guest-error:`` line and exits 1. Standard library only.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from tracekit.funcprobes.availability import resolve_running
from tracekit.funcprobes.kprobe_events import TracefsFuncProbes as _Tracing
from tracekit.host import TRACEFS, load_kallsyms
from tracekit.lab import scenarios

__all__ = ["main", "run", "probe_family", "lock_standin", "prepare_kernel", "workload_options", "INSTANCE"]

INSTANCE = "tracekit"
#: The workload's wall-time limit for one pass inside a lab guest, s.
PASS_TIMEOUT_S = 3600.0


def probe_family(arch: str) -> tuple[tuple, tuple]:
    """(function probes, tracepoints) recorded in the ``arch`` lab (the host decodes with the same probes)."""
    if arch == "arm64":
        from tracekit.funcprobes.stage2_probes import STAGE2_PROBES  # this architecture's only: slow imports in a guest

        return STAGE2_PROBES, ()
    from tracekit.funcprobes.tdp_probes import TDP_PROBES, TRACEPOINT_SPLITS  # (the same, x86)

    return TDP_PROBES, TRACEPOINT_SPLITS


def lock_standin(scenario: scenarios.Scenario, tracefs: Path = TRACEFS) -> tuple:
    """(:data:`~tracekit.lab.scenarios.LOCK_STANDIN`,) when ``scenario`` records ``lock:contention_*`` and this
    kernel has no such tracepoints (before 5.19), else ()."""
    wanted = ("lock", "contention_begin") in scenario.tracepoints
    return (scenarios.LOCK_STANDIN,) if wanted and not (tracefs / "events/lock/contention_begin").is_dir() else ()


def _write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _kvm_banner() -> list[str]:
    """The kernel's KVM initialisation lines (arm64: "VHE mode initialized", "Hyp mode initialized", ...)."""
    try:
        text = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.split("]", 1)[-1].strip() for line in text.splitlines() if "kvm" in line.lower()][:20]


def _kvm_params() -> dict[str, str]:
    params = {}
    for module in sorted(Path("/sys/module").glob("kvm*")):
        folder = module / "parameters"
        if folder.is_dir():
            for item in sorted(folder.iterdir()):
                try:
                    params[f"{module.name}.{item.name}"] = item.read_text().strip()
                except OSError:
                    continue
    return params


_WORKLOAD_BACKING = {"thp": "anonymous_thp", "4k": "anonymous", "hugetlb-2m": "anonymous_hugetlb_2mb",
                     "hugetlb-1g": "anonymous_hugetlb_1gb"}  # fmt: skip


def _run_workload(scenario: scenarios.Scenario, tracing: _Tracing, timings: list[dict], tids: set[int]) -> list[dict]:
    """The project's dirty-log workload (x86, and arm64 through its arm64 backend); each of its phases is a step
    (``setup``, ``populate``, ``enable_dirty_logging``, ``dirty_memory_N``, ``get_dirty_log_N``,
    ``clear_dirty_log_N``, ``disable_dirty_logging``)."""
    from tracekit.workload.dirtylog import run_dirty_log  # workload scenarios only: an emulated guest imports slowly

    # the emulator's guest clock runs at wall speed while a loaded host starves it (135 s was too little for
    # 65,536 faults at a host load of 14); the lab's own hard timeout still ends a hung guest
    options = replace(workload_options(scenario), pass_timeout_s=PASS_TIMEOUT_S)
    state = {"index": -1, "start": 0}

    def on_phase(name: str, iteration: int | None, end: bool) -> None:
        if not end:
            state.update(index=state["index"] + 1, start=time.monotonic_ns())
            tracing.mark(state["index"], end=False)
            return
        tracing.mark(state["index"], end=True)
        op = name if iteration is None else f"{name}_{iteration}"
        timings.append({"index": state["index"], "op": op, "start_ns": state["start"], "end_ns": time.monotonic_ns()})

    result = run_dirty_log(options, on_phase=on_phase)
    tids.update(v["tid"] for v in result.layout.get("vcpus", []) if v.get("tid"))
    result.check()
    return [{"op": "dirty_log_workload", "options": options.as_dict(), "result": result.as_json()}]


def workload_options(scenario: scenarios.Scenario):
    """The dirty-log workload's options (``DirtyLogOptions``) for a ``("workload", iterations)`` scenario."""
    from tracekit.workload.options import DirtyLogOptions  # (the same)

    return DirtyLogOptions(
        vcpus=scenario.vcpus,
        bytes_per_vcpu=(scenario.memory_mib << 20) // scenario.vcpus,
        iterations=scenario.steps[0][1],
        backing=_WORKLOAD_BACKING[scenario.backing],
        log_mode="clear" if scenario.manual_protect else "get",
        # 0 (off) is KVM's default: left unset, so kernels before arm64 eager split (6.5) run the scenario too
        eager_split_chunk=(scenario.eager_split_chunk or None) if scenario.arch == "arm64" else None,
        **scenario.workload_args,
    )


def _set_eager_page_split(scenario: scenarios.Scenario) -> None:
    eager = Path("/sys/module/kvm/parameters/eager_page_split")
    if eager.exists():
        _write(eager, "Y" if scenario.eager_page_split else "N")


def prepare_kernel(scenario: scenarios.Scenario) -> None:
    """What the scenario needs of the guest kernel before its VMM starts: THP mode, hugetlb pool, x86 eager split."""
    _set_thp(scenario)
    if scenario.backing.startswith("hugetlb-"):
        _reserve_hugetlb(scenario)
    _set_eager_page_split(scenario)


def _set_thp(scenario: scenarios.Scenario) -> None:
    """THP only where the VMM asks for it (``madvise``, as on Debian hosts), none at all for 4 KiB backings."""
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if path.exists():
        _write(path, "never" if scenario.backing == "4k" else "madvise")


def _run_steps(scenario: scenarios.Scenario, tracing: _Tracing, timings: list[dict], tids: set[int]) -> list[dict]:
    """Run the steps; fills ``timings`` and ``tids`` (the VMM's vCPU threads); returns the VMM's ioctl log."""
    prepare_kernel(scenario)  # eager_page_split is an x86 kvm parameter: a no-op for the arm64 step scenarios
    if scenario.steps[0][0] == "workload":
        return _run_workload(scenario, tracing, timings, tids)
    from tracekit.lab.arm64_vm import Arm64Vm  # the arm64 step scenarios only: an emulated guest imports slowly

    def new_vm() -> Arm64Vm:
        return Arm64Vm(
            scenario.memory_mib << 20,
            backing=scenario.backing,
            eager_split_chunk=scenario.eager_split_chunk,
            manual_protect=scenario.manual_protect,
            vcpus=scenario.vcpus,
        )

    hot = {p.name for p in probe_family(scenario.arch)[0] if p.hot}
    vm = new_vm()
    log: list[dict] = []
    try:
        for index, step in enumerate(scenario.steps):
            op, args = step[0], step[1:]
            tracing.mark(index, end=False)
            start = time.monotonic_ns()
            if op == "prefault":
                vm.prefault_host(2 << 20 if scenario.backing != "4k" else 4096)
            elif op == "touch":
                vm.touch(args[0])
            elif op == "touch_parallel":
                vm.touch_parallel(args[0])
            elif op == "touch_together":
                vm.touch_parallel(args[0], together=True)
            elif op == "log":
                vm.set_dirty_logging(bool(args[0]))
            elif op == "get_dirty":
                vm.get_dirty_log()
            elif op == "clear":
                vm.clear_dirty_log()
            elif op == "hot":
                tracing.set_hot(bool(args[0]), hot)
            elif op == "new_vm":
                log += vm.log
                tids |= vm.tids
                vm.close()
                vm = new_vm()
            elif op == "clear_while_touching":
                writers = threading.Thread(target=vm.touch_parallel, args=(args[0],))
                writers.start()
                vm.clear_dirty_log()
                writers.join()
            else:
                raise ValueError(f"unknown scenario step {op!r}")
            timings.append({"index": index, "op": op, "start_ns": start, "end_ns": time.monotonic_ns()})
            tracing.mark(index, end=True)
        tids |= vm.tids
        return log + vm.log
    finally:
        vm.close()


def _reserve_hugetlb(scenario: scenarios.Scenario) -> None:
    size_kb = {"hugetlb-2m": 2048, "hugetlb-1g": 1048576}[scenario.backing]
    pages = (scenario.memory_mib * 1024) // size_kb
    pool = Path(f"/sys/kernel/mm/hugepages/hugepages-{size_kb}kB/nr_hugepages")
    if int(pool.read_text()) < pages:  # 1 GiB pages come from the boot-time pool (kernel_args)
        _write(pool, str(pages))


def run(arch: str, name: str, out: Path) -> dict:
    """Run scenario ``name`` of ``arch`` and fill ``out``; returns the metadata written to meta.json."""
    scenario = scenarios.get(name, arch)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict = {
        "scenario": scenario.as_dict(),
        "uname": " ".join(platform.uname()),
        "kernel_release": platform.release(),
        "kvm_params": _kvm_params(),
        "vmm_pid": os.getpid(),
        "status": "error",
    }
    symbols = load_kallsyms()
    probes, tracepoints = probe_family(arch)
    resolutions = resolve_running(tuple(probes) + lock_standin(scenario), symbols)
    meta["probes"] = {"requested": [r.probe.name for r in resolutions], "resolution": [r.as_dict() for r in resolutions]}
    (out / "kallsyms.txt").write_text(
        "".join(
            f"{address:016x} t {sym}\n"
            for sym, address in symbols.by_name.items()
            if "kvm" in sym or "stage2" in sym or "tdp" in sym or "mmu" in sym
        )
    )
    meta["kvm_banner"] = _kvm_banner()
    timings: list[dict] = []
    tracing = _Tracing(resolutions, tuple(tracepoints) + tuple(scenario.tracepoints), instance=INSTANCE, strict=True)
    try:
        tracing.start()
        meta["probes"].update(
            attached=tracing.attached,
            failed=tracing.failed,
            events=tracing.defined,
            tracepoints=[f"{system}:{event}" for system, event in tracing.tracepoints],
        )
        tids: set[int] = {os.getpid()}
        meta["workload_log"] = _run_steps(scenario, tracing, timings, tids)
        meta["vmm_tids"] = sorted(tids)
        tracing.stop()
        meta["lost"] = tracing.save(out)
        meta["status"] = "complete"
    except Exception as error:  # recorded for the host, then reported as one line
        meta["error"] = f"{type(error).__name__}: {error}"
    finally:
        meta["steps"] = timings
        tracing.close()
        (out / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return meta


def guest_main(run_fn, usage: str, argv: list[str] | None) -> int:
    """A guest entry point: ``run_fn(*args[:-1], Path(OUTDIR))`` with as many arguments as ``usage`` names;
    exit status 0, 1 with one ``tk-guest-error:`` line, or 2 with the usage."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != len(usage.split()) - 3:  # "python3 -m MODULE" then the arguments
        print(f"usage: {usage}", file=sys.stderr)
        return 2
    meta = run_fn(*args[:-1], Path(args[-1]))
    if meta["status"] != "complete":
        print(f"tk-guest-error: {meta.get('error')}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return guest_main(run, "python3 -m tracekit.lab.guest_run ARCH SCENARIO OUTDIR", argv)


if __name__ == "__main__":
    sys.exit(main())
