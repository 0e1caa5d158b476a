"""The ``dirty-log`` command, shared by the typer CLI and ``python3 -m tracekit.workload``.

:func:`build_options` turns command-line text into validated options; :func:`dirty_log_command` runs
the workload, prints the selftest's lines (or one JSON document, docs/cli-json/workload.md), writes
the layout record at the end (also after a failure or a stop signal) to ``--layout`` and where a
recorder that started it asks (``$TRACEKIT_LAYOUT_DIR``), and publishes it after every
phase for a recorder attaching by pid. It raises WorkloadError (:class:`WorkloadInterrupted` for
SIGINT, SIGTERM or SIGHUP, after a clean teardown) or :class:`DirtyLogMismatch`. :data:`OPTION_HELP`
is the help of every option, so both front ends say the same. Standard library only.
"""

from __future__ import annotations

import json
import os
import signal
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from tracekit.errors import WorkloadError
from tracekit.workload.dirtylog import DirtyLogResult, run_dirty_log
from tracekit.workload.options import LOG_MODES, DirtyLogOptions, parse_page_size, parse_size
from tracekit.workload.published import LayoutPublisher, recorder_layout_path

__all__ = [
    "OPTION_HELP",
    "build_options",
    "dirty_log_command",
    "write_layout",
    "WorkloadInterrupted",
    "DESCRIPTION",
    "EXAMPLES",
]

#: Signals that stop a run early: the VM is torn down and the partial layout is still written.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class WorkloadInterrupted(WorkloadError):
    """SIGINT, SIGTERM or SIGHUP arrived before the run completed."""


@contextmanager
def _signals_stop_the_run() -> Iterator[None]:
    """Turn the stop signals into WorkloadInterrupted in the main thread; restore the handlers after."""

    def stop(signum: int, frame: object) -> None:
        raise WorkloadInterrupted(f"stopped by {signal.Signals(signum).name} before the run completed")

    saved = {}
    try:
        for sig in STOP_SIGNALS:
            saved[sig] = signal.signal(sig, stop)
    except ValueError:  # not the main thread: leave signals to the caller
        pass
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)

DESCRIPTION = (
    "Run a VM straight on /dev/kvm (no QEMU) whose vCPUs dirty guest memory while the host logs it: "
    "the equivalent of KVM selftests' dirty_log_perf_test, with the same output lines. Each vCPU is a "
    "host thread named tk-vcpu-N running a tiny CPL3 long-mode guest that touches one word in every "
    "4 KiB page of its share per iteration. After every iteration the dirty log is checked against the "
    "pages the guest wrote; a mismatch fails the run (exit 1). The default run (1 vCPU, 64M, 4 "
    "iterations, 2M guest pages, manual clear) takes well under a second."
)
EXAMPLES = [
    "tracekit workload dirty-log",
    "tracekit workload dirty-log -v 2 -b 256M -i 3 --guest-page-size 4k",
    "tracekit workload dirty-log -a -w 30 -r 7 --log-mode ring",
    "tracekit workload dirty-log -g -x 2 --json --layout run.json",
    "tracekit workload dirty-log -s anonymous_hugetlb_2mb -b 512M   # needs reserved hugetlb pages",
    "tracekit workload dirty-log -s anonymous_thp -b 256M -i 1 -g --eager-split-chunk 2M   # arm64 hosts only",
]

OPTION_HELP = {
    "vcpus": "Number of vCPUs, one host thread each (named tk-vcpu-N).",
    "bytes_per_vcpu": "Guest memory each vCPU dirties, e.g. 64M, 1G (k, m, g, t suffixes; multiple of 4K).",
    "iterations": "Dirty-logging iterations after the populate pass.",
    "backing": "Host memory behind the test region: anonymous, anonymous_thp, anonymous_hugetlb_2mb, "
    "anonymous_hugetlb_1gb or shmem (hugetlb pages must be reserved beforehand).",
    "write_percent": "Percentage of pages written in each iteration (the others are read).",
    "random_order": "Touch the pages of each vCPU in a seeded random order instead of in order.",
    "seed": "Seed of the random order and of the write/read choice.",
    "no_manual_protect": "Do not enable KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: legacy KVM_GET_DIRTY_LOG, which "
    "re-protects by itself (same as --log-mode get).",
    "memslots": "Split the test region into this many memslots (slots 1..N).",
    "log_mode": "Dirty-log interface: clear (manual protect, GET + CLEAR; default where offered), get "
    "(legacy GET) or ring (per-vCPU dirty rings + KVM_RESET_DIRTY_RINGS).",
    "no_initially_set": "In clear mode, do not ask for KVM_DIRTY_LOG_INITIALLY_SET (enabling logging then "
    "write-protects everything at once).",
    "ring_entries": "In ring mode, entries per vCPU dirty ring (a power of two >= 256; default: enough for the "
    "vCPU's pages, up to what KVM allows). A full ring makes the vCPU harvest and reset it mid-pass.",
    "guest_page_size": "Page size of the guest's own page tables over the test region: 4k, 2m or 1g.",
    "eager_split_chunk": "arm64 only: KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE for this VM, set before the first memslot: "
    "a stage-2 block size the host offers (KVM_CAP_ARM_SUPPORTED_BLOCK_SIZES, e.g. 2M or 1G) to split huge "
    "mappings eagerly, in chunks of that size, when dirty logging starts (at the CLEARs with manual protect "
    "and initially-set), or 0 for off. Default: KVM's default (off). On x86 the kvm.eager_page_split module "
    "parameter decides instead, and the option is refused.",
    "json": "Print one JSON document at the end instead of the text lines (docs/cli-json/workload.md).",
    "layout": "Write the run's layout record (memslots, page tables, vCPU threads, ioctl log, phases) "
    "to this JSON file when the run ends (docs/workload.md).",
}


def build_options(
    *,
    vcpus: int,
    bytes_per_vcpu: str,
    iterations: int,
    backing: str,
    write_percent: int,
    random_order: bool,
    seed: int,
    no_manual_protect: bool,
    memslots: int,
    log_mode: Optional[str],
    no_initially_set: bool,
    guest_page_size: str,
    ring_entries: Optional[int] = None,
    eager_split_chunk: Optional[str] = None,
) -> DirtyLogOptions:
    """Validated options from command-line values; WorkloadError names the bad one."""
    if log_mode is not None and log_mode not in LOG_MODES:
        raise WorkloadError(f"--log-mode {log_mode!r} is unknown (choose from {', '.join(LOG_MODES)})")
    if no_manual_protect:
        if log_mode not in (None, "get"):
            raise WorkloadError(f"-g (no manual protect) contradicts --log-mode {log_mode}")
        log_mode = "get"
    if no_initially_set and log_mode not in (None, "clear"):
        raise WorkloadError(f"--no-initially-set applies to --log-mode clear, not {log_mode}")
    options = DirtyLogOptions(
        vcpus=vcpus,
        bytes_per_vcpu=parse_size(bytes_per_vcpu),
        iterations=iterations,
        backing=backing,
        write_percent=write_percent,
        random_order=random_order,
        seed=seed,
        log_mode=log_mode,
        initially_set=not no_initially_set,
        memslots=memslots,
        guest_page_size=parse_page_size(guest_page_size),
        ring_entries=ring_entries,
        eager_split_chunk=None if eager_split_chunk is None else parse_size(eager_split_chunk),
    )
    options.validate()
    return options


def write_layout(layout: dict, path: str) -> None:
    """Write the layout record as JSON; WorkloadError if the file cannot be written."""
    try:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(layout, out, indent=1)
            out.write("\n")
    except OSError as error:
        raise WorkloadError(f"cannot write the layout to {path}: {error.strerror or error}") from None


def dirty_log_command(
    options: DirtyLogOptions,
    *,
    as_json: bool = False,
    layout_path: Optional[str] = None,
    out: Callable[[str], None] = print,
) -> DirtyLogResult:
    """Run, report and record (see the module contract)."""
    emit = (lambda line: None) if as_json else out
    publisher = LayoutPublisher()  # for a recorder attaching to this process while it runs
    layout_paths = [p for p in (layout_path, recorder_layout_path()) if p]  # --layout, and a recorder that started us
    try:
        with _signals_stop_the_run():
            result = run_dirty_log(options, emit=emit, on_layout=publisher.publish)
    except WorkloadError as error:
        layout = getattr(error, "layout", None)
        for path in layout_paths if layout else ():
            write_layout(layout, path)
        raise
    finally:
        publisher.remove()
    for path in layout_paths:
        write_layout(result.layout, path)
    if as_json:
        document = result.as_json()
        document["layout_file"] = os.path.abspath(layout_path) if layout_path else None
        out(json.dumps(document, indent=1))
    result.check()
    return result
