"""The dirty-log workload: a VM on ``/dev/kvm`` that dirties memory while the host logs it.

:func:`run_dirty_log` runs the equivalent of KVM selftests' ``dirty_log_perf_test`` and checks after each
iteration that the dirty pages are the ones the guest wrote (phases in docs/workload.md); standard
library only.
"""

from __future__ import annotations

import ctypes
import os
import platform
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from tracekit.errors import WorkloadError
from tracekit.workload import backing as backing_mod
from tracekit.workload import libc, report, uapi
from tracekit.workload.backend import ACCESS_STRIDE, Backend, GuestSpec
from tracekit.workload.backend_arm64 import Arm64Backend
from tracekit.workload.backend_x86 import X86Backend
from tracekit.workload.dirtyring import DIRTY_GFN_SIZE, DirtyRing, ring_bytes_for
from tracekit.workload.kvm import IoctlLog, Kvm, Vcpu, Vm
from tracekit.workload.options import DirtyLogOptions
from tracekit.workload.plan import pass_plan, set_bits

__all__ = [
    "run_dirty_log",
    "DirtyLogResult",
    "IterationResult",
    "DirtyLogMismatch",
    "TEST_GVA",
    "TEST_GPA",
    "SYSTEM_SLOT",
    "FIRST_TEST_SLOT",
    "LAYOUT_SCHEMA",
    "vcpu_thread_name",
    "BACKENDS",
    "backend_for",
]

TEST_GVA = 0xC000_0000
TEST_GPA = 1 << 32
SYSTEM_SLOT = 0
FIRST_TEST_SLOT = 1
LAYOUT_SCHEMA = "tracekit.workload.layout/1"
_SYSTEM_ALIGN = 2 << 20
_STOP_TIMEOUT_S = 10.0
_PARK_POLL_S = 20e-6


class DirtyLogMismatch(WorkloadError):
    """The dirty log differed from the pages the guest wrote."""

#: ``platform.machine()`` -> the backend of that architecture.
BACKENDS: dict[str, type[Backend]] = {"x86_64": X86Backend, "amd64": X86Backend, "AMD64": X86Backend,
                                      "aarch64": Arm64Backend, "arm64": Arm64Backend}


def backend_for(machine: str | None = None) -> Backend:
    """The backend of ``machine`` (default: this host's ``platform.machine()``)."""
    machine = machine or platform.machine()
    if machine not in BACKENDS:
        raise WorkloadError(f"the built-in KVM workload has no backend for {machine}")
    return BACKENDS[machine]()


def vcpu_thread_name(index: int) -> str:
    """OS thread name of vCPU ``index`` (``tk-vcpu-N``, at most 15 characters)."""
    return f"tk-vcpu-{index}"


@dataclass
class IterationResult:
    """One dirty-logging iteration: phase times (ns) and the verification counts (4 KiB pages)."""

    iteration: int
    dirty_memory_ns: int
    get_dirty_log_ns: int
    clear_dirty_log_ns: Optional[int]
    dirty_pages: int
    expected_dirty_pages: int
    missing_pages: int
    unexpected_pages: int

    @property
    def ok(self) -> bool:
        return self.missing_pages == 0 and self.unexpected_pages == 0

    def as_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "dirty_memory_ns": self.dirty_memory_ns,
            "get_dirty_log_ns": self.get_dirty_log_ns,
            "clear_dirty_log_ns": self.clear_dirty_log_ns,
            "dirty_pages": self.dirty_pages,
            "expected_dirty_pages": self.expected_dirty_pages,
            "missing_pages": self.missing_pages,
            "unexpected_pages": self.unexpected_pages,
            "ok": self.ok,
        }


@dataclass
class DirtyLogResult:
    """What a run measured; ``layout`` is the structured record (see docs/workload.md)."""

    options: DirtyLogOptions
    log_mode: str
    initially_set: bool
    guest_mode: str
    test_gpa: int
    test_size: int
    populate_ns: int
    enable_ns: int
    disable_ns: int
    iterations: list[IterationResult]
    layout: dict = field(repr=False)
    eager_split_chunk: Optional[int] = None

    @property
    def verified(self) -> bool:
        return all(it.ok for it in self.iterations)

    @property
    def clears(self) -> bool:
        """True when the mode has a clear step (manual clear or ring reset)."""
        return self.log_mode in ("clear", "ring")

    @property
    def expected_write_faults(self) -> int:
        """Write faults the guest must take in the test region under shadow paging with 4 KiB host pages.

        One per page in the populate pass (first touch), then one per page written in every
        iteration whose pages were write-protected: all of them, except the first in ``clear`` mode
        with initially-set (enabling then write-protects nothing). Reads of write-protected pages do
        not fault. On this kind of host each such fault is exactly one
        ``kvmmmu:kvm_mmu_pagetable_walk`` with an address in the test region.
        """
        return _expected_write_faults(self.options.total_bytes // ACCESS_STRIDE, self.initially_set, self.iterations)

    def lines(self) -> list[str]:
        """The complete dirty_log_perf_test-style output of this run."""
        lines = report.header_lines(len(self.iterations), self.guest_mode, self.test_gpa, self.test_size)
        lines.append(report.populate_line(self.populate_ns))
        lines += report.enable_lines(self.enable_ns)
        for it in self.iterations:
            lines += report.iteration_lines(
                it.iteration, it.dirty_memory_ns, it.get_dirty_log_ns, it.clear_dirty_log_ns
            )
        lines.append(report.disable_line(self.disable_ns))
        lines += self.total_lines()
        return lines

    def total_lines(self) -> list[str]:
        gets = [it.get_dirty_log_ns for it in self.iterations]
        clears = [it.clear_dirty_log_ns or 0 for it in self.iterations] if self.clears else None
        return report.total_lines(gets, clears)

    def check(self) -> None:
        """Raise DirtyLogMismatch naming the first iteration whose dirty log was wrong."""
        for it in self.iterations:
            if not it.ok:
                bad = sum(1 for i in self.iterations if not i.ok)
                raise DirtyLogMismatch(
                    f"dirty log mismatch in {bad} of {len(self.iterations)} iterations; iteration {it.iteration}: "
                    f"{it.dirty_pages} dirty pages reported, {it.expected_dirty_pages} expected "
                    f"({it.missing_pages} missing, {it.unexpected_pages} unexpected)"
                )

    def as_json(self) -> dict:
        """The ``--json`` document (documented in docs/cli-json/workload.md)."""
        gets = [it.get_dirty_log_ns for it in self.iterations]
        clears = [it.clear_dirty_log_ns or 0 for it in self.iterations]
        return {
            "test_iterations": len(self.iterations),
            "guest_mode": self.guest_mode,
            "guest_physical_test_memory": [self.test_gpa, self.test_gpa + self.test_size],
            "log_mode": self.log_mode,
            "initially_set": self.initially_set,
            "vcpus": self.options.vcpus,
            "bytes_per_vcpu": self.options.bytes_per_vcpu,
            "eager_split_chunk": self.eager_split_chunk,
            "populate_ns": self.populate_ns,
            "enable_dirty_logging_ns": self.enable_ns,
            "iterations": [it.as_dict() for it in self.iterations],
            "disable_dirty_logging_ns": self.disable_ns,
            "get_dirty_log_total_ns": sum(gets),
            "clear_dirty_log_total_ns": sum(clears) if self.clears else None,
            "verified": self.verified,
        }


def run_dirty_log(
    options: DirtyLogOptions,
    emit: Optional[Callable[[str], None]] = None,
    backend: Optional[Backend] = None,
    on_phase: Optional[Callable[[str, Optional[int], bool], None]] = None,
    on_layout: Optional[Callable[[dict], None]] = None,
) -> DirtyLogResult:
    """Run the workload (see the module contract); ``on_layout(record)`` gets the layout record so far
    after every phase (to publish it for a recorder attaching mid-run)."""
    options.validate()
    run = _Run(options, backend or backend_for(), emit or (lambda line: None), on_phase, on_layout)
    try:
        return run.execute()
    except WorkloadError as error:
        error.layout = run.layout()
        raise
    finally:
        run.close()


class _VcpuState:
    """Host-side state of one vCPU: its fd, ring, plan location, thread and pass times."""

    def __init__(self, index: int, first_page: int, pages: int, plan_gpa: int) -> None:
        self.index = index
        self.first_page = first_page
        self.pages = pages
        self.plan_gpa = plan_gpa
        self.vcpu: Optional[Vcpu] = None
        self.ring: Optional[DirtyRing] = None
        self.pending_ring: list[tuple[int, int]] = []
        self.thread: Optional[threading.Thread] = None
        self.tid = 0
        self.passes = 0
        self.pass_ns: list[int] = []
        self.pass_run_ns: list[int] = []
        self.pass_cpu_ns: list[int] = []
        self.ring_full_exits = 0
        self.error: Optional[BaseException] = None
        self.rng: Optional[random.Random] = None

    @property
    def plan_gva(self) -> int:
        """Where the guest sees the plan: its guest-physical address (the system area is identity-mapped)."""
        return self.plan_gpa


class _Run:
    def __init__(
        self,
        options: DirtyLogOptions,
        backend: Backend,
        emit: Callable[[str], None],
        on_phase: Optional[Callable[[str, Optional[int], bool], None]] = None,
        on_layout: Optional[Callable[[dict], None]] = None,
    ) -> None:
        self.options = options
        self.backend = backend
        self.emit = emit
        self.on_phase = on_phase or (lambda name, iteration, end: None)
        self.on_layout = on_layout or (lambda layout: None)
        self.log = IoctlLog()
        self.start_ns = time.monotonic_ns()
        self.main_tid = threading.get_native_id()
        self.kvm: Optional[Kvm] = None
        self.vm: Optional[Vm] = None
        self.system = None
        self.test = None
        self.vcpus: list[_VcpuState] = []
        self.phases: list[dict] = []
        self.results: list[IterationResult] = []
        self.memslots: list[dict] = []
        self.caps: dict = {}
        self.paging: dict = {}
        self.log_mode = options.log_mode or "?"
        self.initially_set = False
        self.ring_bytes = 0
        self.eager_split_chunk: Optional[int] = None
        self.ring_full_exits = 0
        self.foreign_ring_entries = 0
        self.stop = False
        parties = options.vcpus + 1
        self.start_barrier = threading.Barrier(parties)
        self.done_barrier = threading.Barrier(parties)
        total = options.total_bytes
        self.total_pages = total // ACCESS_STRIDE
        self.slot_size = total // options.memslots
        self.slot_pages = self.slot_size // ACCESS_STRIDE
        # Wall-time limit for one pass: generous, only to turn a hung guest into an error.
        self.pass_timeout_s = options.pass_timeout_s or 120.0 + 60.0 * (total / (1 << 30))
        self.bitmap = (ctypes.c_uint8 * (self.total_pages // 8))()

    # -- phases -------------------------------------------------------------------------------

    def _begin(self, name: str, iteration: Optional[int] = None) -> int:
        """Tell ``on_phase`` that phase ``name`` begins; return its start time (ns)."""
        self.on_phase(name, iteration, False)
        return time.monotonic_ns()

    def _phase(self, name: str, start: int, end: int, iteration: Optional[int] = None) -> int:
        self.phases.append({"name": name, "iteration": iteration, "start_ns": start, "end_ns": end})
        self.on_phase(name, iteration, True)
        self.on_layout(self.layout())
        return end - start

    def execute(self) -> DirtyLogResult:
        options = self.options
        start = self._begin("setup")
        spec, guest_mode = self._setup()
        self._phase("setup", start, time.monotonic_ns())
        for line in report.header_lines(options.iterations, guest_mode, TEST_GPA, options.total_bytes):
            self.emit(line)

        self._write_plans(0)
        start = self._begin("populate")
        for state in self.vcpus:
            state.thread = threading.Thread(target=self._vcpu_main, args=(state,), name=vcpu_thread_name(state.index))
            state.thread.daemon = True
            state.thread.start()
        populate_ns = self._phase("populate", start, self._run_pass())
        self.emit(report.populate_line(populate_ns))
        self._harvest_rings()  # logging is off: nothing expected, but start each ring clean

        start = self._begin("enable_dirty_logging")
        self._set_logging(True)
        enable_ns = self._phase("enable_dirty_logging", start, time.monotonic_ns())
        for line in report.enable_lines(enable_ns):
            self.emit(line)

        for iteration in range(1, options.iterations + 1):
            expected = self._write_plans(iteration)
            start = self._begin("dirty_memory", iteration)
            dirty_ns = self._phase("dirty_memory", start, self._run_pass(), iteration)
            get_ns, clear_ns, actual = self._collect(iteration)
            result = self._verify(iteration, dirty_ns, get_ns, clear_ns, actual, expected)
            self.results.append(result)
            for line in report.iteration_lines(iteration, dirty_ns, get_ns, clear_ns):
                self.emit(line)

        start = self._begin("disable_dirty_logging")
        self._set_logging(False)
        disable_ns = self._phase("disable_dirty_logging", start, time.monotonic_ns())
        self.emit(report.disable_line(disable_ns))
        self._stop_threads()
        result = DirtyLogResult(
            options=options,
            log_mode=self.log_mode,
            initially_set=self.initially_set,
            guest_mode=guest_mode,
            test_gpa=TEST_GPA,
            test_size=options.total_bytes,
            populate_ns=populate_ns,
            enable_ns=enable_ns,
            disable_ns=disable_ns,
            iterations=self.results,
            layout={},
            eager_split_chunk=self.eager_split_chunk,
        )
        for line in result.total_lines():
            self.emit(line)
        result.layout = self.layout()
        return result

    # -- setup --------------------------------------------------------------------------------

    def _setup(self) -> tuple[GuestSpec, str]:
        options, backend = self.options, self.backend
        self.kvm = kvm = Kvm(self.log)
        max_vcpus = kvm.check_extension(uapi.KVM_CAP_MAX_VCPUS)
        nr_memslots = kvm.check_extension(uapi.KVM_CAP_NR_MEMSLOTS)
        manual = kvm.check_extension(uapi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
        self.caps = {"max_vcpus": max_vcpus, "nr_memslots": nr_memslots, "manual_dirty_log_protect2": manual}
        if max_vcpus and options.vcpus > max_vcpus:
            raise WorkloadError(f"-v {options.vcpus}: this host's KVM allows at most {max_vcpus} vCPUs per VM")
        if nr_memslots and options.memslots + 1 > nr_memslots:
            raise WorkloadError(
                f"-x {options.memslots}: this host's KVM allows {nr_memslots} memslots (one is the workload's own)"
            )
        if options.guest_page_size not in backend.guest_page_sizes:
            raise WorkloadError(f"the {backend.arch} backend cannot map {options.guest_page_size} byte guest pages")
        if TEST_GPA + options.total_bytes > backend.max_gpa:
            raise WorkloadError(
                f"the test region of {options.total_bytes >> 20} MiB does not fit below the guest's "
                f"{backend.max_gpa.bit_length() - 1}-bit physical address limit"
            )

        backend.check_host(kvm, options.guest_page_size)
        if options.eager_split_chunk is not None:
            self.caps.update(backend.check_eager_split_chunk(kvm, options.eager_split_chunk))
        backing_mod.check_host(options.backing, options.total_bytes)  # before building anything large
        self.log_mode = mode = options.log_mode or ("clear" if manual else "get")
        if mode == "clear" and not manual:
            raise WorkloadError(
                "this host's KVM does not offer KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: use -g (legacy KVM_GET_DIRTY_LOG)"
            )
        offered = bool(manual & uapi.KVM_DIRTY_LOG_INITIALLY_SET)
        self.initially_set = mode == "clear" and options.initially_set and offered

        self.vm = vm = kvm.create_vm(backend.vm_type(kvm))
        pages_per_vcpu = options.bytes_per_vcpu // ACCESS_STRIDE
        if mode == "ring":
            ring_max = vm.check_extension(backend.dirty_ring_cap)
            self.caps["dirty_log_ring"] = ring_max
            if not ring_max:
                raise WorkloadError(
                    "this host's KVM does not offer a dirty ring (KVM_CAP_DIRTY_LOG_RING): use --log-mode clear or get"
                )
            if options.ring_entries:
                self.ring_bytes = options.ring_entries * DIRTY_GFN_SIZE
                if self.ring_bytes > ring_max:
                    raise WorkloadError(
                        f"--ring-entries {options.ring_entries}: this host's KVM allows at most "
                        f"{ring_max // DIRTY_GFN_SIZE} dirty-ring entries"
                    )
            else:
                self.ring_bytes = ring_bytes_for(pages_per_vcpu, ring_max, os.sysconf("SC_PAGE_SIZE"))
            vm.enable_cap(backend.dirty_ring_cap, self.ring_bytes)
        elif mode == "clear":
            flags = uapi.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
            if self.initially_set:
                flags |= uapi.KVM_DIRTY_LOG_INITIALLY_SET
            vm.enable_cap(uapi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, flags)

        # System area: backend pages, per-vCPU plans, then page tables.
        plan_bytes = -(-pages_per_vcpu * 8 // 4096) * 4096
        plan_base = backend.reserved_bytes
        for index in range(options.vcpus):
            self.vcpus.append(_VcpuState(index, index * pages_per_vcpu, pages_per_vcpu, plan_base + index * plan_bytes))
        plans_end = plan_base + options.vcpus * plan_bytes
        spec = GuestSpec(
            system_gpa=0,
            reserved_end=plan_base,
            system_map_end=plans_end,
            table_base_gpa=plans_end,
            test_gva=TEST_GVA,
            test_gpa=TEST_GPA,
            test_size=options.total_bytes,
            guest_page_size=options.guest_page_size,
        )
        # VM-wide settings first: KVM takes the arm64 eager-split chunk size only while every memslot is empty.
        if options.eager_split_chunk is not None:
            self.eager_split_chunk = backend.set_eager_split_chunk(vm, options.eager_split_chunk)
        backend.configure_vm(vm, spec)
        image = backend.build_guest(spec)
        self.paging = image.paging
        system_size = -(-image.end_gpa // _SYSTEM_ALIGN) * _SYSTEM_ALIGN
        if system_size > TEST_GPA or plans_end > TEST_GVA:
            raise WorkloadError("the workload's own memory (plans and page tables) would overlap the test region")
        self.system = backing_mod.allocate("anonymous", system_size)
        for gpa, data in image.pages.items():
            ctypes.memmove(self.system.address + gpa, data, len(data))
        self._add_slot(SYSTEM_SLOT, 0, system_size, self.system.address, "anonymous", "system")

        self.test = backing_mod.allocate(options.backing, options.total_bytes)
        for k in range(options.memslots):
            offset = k * self.slot_size
            hva = self.test.address + offset
            self._add_slot(FIRST_TEST_SLOT + k, TEST_GPA + offset, self.slot_size, hva, options.backing, "test")

        for state in self.vcpus:
            state.vcpu = vm.create_vcpu(state.index, self.ring_bytes)
            if self.ring_bytes:
                state.ring = DirtyRing(state.vcpu.ring_address, self.ring_bytes)
            backend.init_vcpu(state.vcpu, image, state.index, state.plan_gva, state.pages)
            state.rng = random.Random(options.seed * 1_000_003 + state.index)
        return spec, backend.guest_mode(spec)

    def _add_slot(self, slot: int, gpa: int, size: int, hva: int, backing: str, role: str) -> None:
        self.vm.set_user_memory_region(slot, 0, gpa, size, hva)
        self.memslots.append(
            {"slot": slot, "guest_phys_addr": gpa, "size": size, "userspace_addr": hva, "flags": 0,
             "backing": backing, "role": role}
        )  # fmt: skip

    def _set_logging(self, enabled: bool) -> None:
        flags = uapi.KVM_MEM_LOG_DIRTY_PAGES if enabled else 0
        for slot in self._test_slots():
            self.vm.set_user_memory_region(
                slot["slot"], flags, slot["guest_phys_addr"], slot["size"], slot["userspace_addr"]
            )
            slot["flags"] = flags

    # -- guest passes -------------------------------------------------------------------------

    def _write_plans(self, iteration: int) -> bytearray:
        """Write each vCPU's plan for ``iteration`` (0 = populate); return the expected dirty bitmap."""
        options = self.options
        expected = bytearray(self.total_pages // 8)
        populate = iteration == 0
        for state in self.vcpus:
            plan = pass_plan(
                TEST_GVA,
                state.first_page,
                state.pages,
                random_order=options.random_order and not populate,
                write_percent=100 if populate else options.write_percent,
                rng=state.rng,
                written=expected,
            )
            data = plan.tobytes()
            ctypes.memmove(self.system.address + state.plan_gpa, data, len(data))
        if iteration == 1 and self.initially_set:
            set_bits(expected, 0, self.total_pages)
        return expected

    def _run_pass(self) -> int:
        """Release every vCPU for one pass; return the time (ns) the last one had reported."""
        try:
            self.start_barrier.wait(timeout=self.pass_timeout_s)
            self.done_barrier.wait(timeout=self.pass_timeout_s)
            done_ns = time.monotonic_ns()
        except threading.BrokenBarrierError:
            self._abort()
            for state in self.vcpus:
                if state.error is not None:
                    if isinstance(state.error, WorkloadError):
                        raise state.error from None
                    raise WorkloadError(f"vCPU {state.index} failed: {state.error!r}") from None
            raise WorkloadError(f"a vCPU did not finish its pass within {self.pass_timeout_s:.0f} s") from None
        # Let every vCPU thread park at the start barrier before the next timed phase, so host-side
        # phases are not measured while vCPU threads still run Python (they share the GIL).
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while self.start_barrier.n_waiting < len(self.vcpus) and time.monotonic() < deadline:
            time.sleep(_PARK_POLL_S)
        return done_ns

    def _vcpu_main(self, state: _VcpuState) -> None:
        try:
            libc.set_thread_name(vcpu_thread_name(state.index))
            state.tid = threading.get_native_id()
            while True:
                self.start_barrier.wait()
                if self.stop:
                    return
                start = time.monotonic_ns()
                cpu_before = time.thread_time_ns()
                run_before = state.vcpu.run_ns
                self._guest_pass(state)
                state.pass_ns.append(time.monotonic_ns() - start)
                state.pass_cpu_ns.append(time.thread_time_ns() - cpu_before)
                state.pass_run_ns.append(state.vcpu.run_ns - run_before)
                self.done_barrier.wait()
        except threading.BrokenBarrierError:
            return
        except BaseException as error:  # handed to the main thread through state.error
            state.error = error
            self._abort()

    def _guest_pass(self, state: _VcpuState) -> None:
        vcpu = state.vcpu
        expected = (state.passes + 1) & 0xFF
        while True:
            reason = vcpu.run()
            if reason == uapi.KVM_EXIT_DIRTY_RING_FULL and state.ring is not None:
                state.ring_full_exits += 1
                state.pending_ring += state.ring.harvest()
                self.vm.reset_dirty_rings()
                continue
            reported = self.backend.guest_report(vcpu, reason)
            if reported != expected:
                raise WorkloadError(f"vCPU {state.index}: guest reported pass {reported}, expected {expected}")
            state.passes += 1
            return

    def _abort(self) -> None:
        self.start_barrier.abort()
        self.done_barrier.abort()

    def _stop_threads(self, graceful: bool = True) -> None:
        """End the vCPU threads: through the start barrier after a complete run, by breaking the
        barriers after a failure or an interrupt (a thread inside KVM_RUN ends after its pass)."""
        threads = [s.thread for s in self.vcpus if s.thread is not None and s.thread.is_alive()]
        if not threads:
            return
        self.stop = True
        try:
            if not graceful:
                raise threading.BrokenBarrierError
            self.start_barrier.wait(timeout=_STOP_TIMEOUT_S)
        except threading.BrokenBarrierError:
            self._abort()
        for thread in threads:
            thread.join(timeout=_STOP_TIMEOUT_S)

    # -- dirty log ----------------------------------------------------------------------------

    def _test_slots(self) -> list[dict]:
        return [slot for slot in self.memslots if slot["role"] == "test"]

    def _collect(self, iteration: int) -> tuple[int, Optional[int], bytes]:
        """Read (and re-arm) the dirty log; returns (get ns, clear ns or None, bitmap of the test region)."""
        bitmap_address = ctypes.addressof(self.bitmap)
        slot_bytes = self.slot_pages // 8
        if self.log_mode == "ring":
            start = self._begin("get_dirty_log", iteration)
            entries: list[tuple[int, int]] = []
            for state in self.vcpus:
                entries += state.pending_ring
                state.pending_ring = []
                entries += state.ring.harvest()
            get_ns = self._phase("get_dirty_log", start, time.monotonic_ns(), iteration)
            start = self._begin("clear_dirty_log", iteration)
            self.vm.reset_dirty_rings()
            clear_ns = self._phase("clear_dirty_log", start, time.monotonic_ns(), iteration)
            return get_ns, clear_ns, self._ring_bitmap(entries)
        start = self._begin("get_dirty_log", iteration)
        for k, slot in enumerate(self._test_slots()):
            self.vm.get_dirty_log(slot["slot"], bitmap_address + k * slot_bytes)
        get_ns = self._phase("get_dirty_log", start, time.monotonic_ns(), iteration)
        actual = bytes(self.bitmap)
        clear_ns = None
        if self.log_mode == "clear":
            start = self._begin("clear_dirty_log", iteration)
            for k, slot in enumerate(self._test_slots()):
                self.vm.clear_dirty_log(slot["slot"], 0, self.slot_pages, bitmap_address + k * slot_bytes)
            clear_ns = self._phase("clear_dirty_log", start, time.monotonic_ns(), iteration)
        return get_ns, clear_ns, actual

    def _harvest_rings(self) -> None:
        if self.log_mode != "ring":
            return
        for state in self.vcpus:
            state.ring.harvest()
            state.pending_ring = []
        self.vm.reset_dirty_rings()

    def _ring_bitmap(self, entries: list[tuple[int, int]]) -> bytes:
        bitmap = bytearray(self.total_pages // 8)
        foreign = 0
        for slot, offset in entries:
            index = (slot & 0xFFFF) - FIRST_TEST_SLOT
            if slot >> 16 or not 0 <= index < self.options.memslots or offset >= self.slot_pages:
                foreign += 1
                continue
            bit = index * self.slot_pages + offset
            bitmap[bit >> 3] |= 1 << (bit & 7)
        self.foreign_ring_entries += foreign
        return bytes(bitmap)

    def _verify(
        self, iteration: int, dirty_ns: int, get_ns: int, clear_ns: Optional[int], actual: bytes, expected: bytearray
    ) -> IterationResult:
        got = int.from_bytes(actual, "little")
        want = int.from_bytes(expected, "little")
        return IterationResult(
            iteration=iteration,
            dirty_memory_ns=dirty_ns,
            get_dirty_log_ns=get_ns,
            clear_dirty_log_ns=clear_ns,
            dirty_pages=got.bit_count(),
            expected_dirty_pages=want.bit_count(),
            missing_pages=(want & ~got).bit_count(),
            unexpected_pages=(got & ~want).bit_count(),
        )

    # -- record and teardown ------------------------------------------------------------------

    def layout(self) -> dict:
        """The structured record of this run (keys documented in docs/workload.md)."""
        options = self.options
        return {
            "schema": LAYOUT_SCHEMA,
            "workload": "dirty-log",
            "arch": self.backend.arch,
            "pid": os.getpid(),
            "main_tid": self.main_tid,
            "clock": "CLOCK_MONOTONIC",
            "kvm_fd": self.kvm.fd if self.kvm else None,
            "vm_fd": self.vm.fd if self.vm else None,
            "start_ns": self.start_ns,
            "end_ns": time.monotonic_ns(),
            "options": options.as_dict(),
            "log_mode": self.log_mode,
            "initially_set": self.initially_set,
            "ring_bytes": self.ring_bytes or None,
            "eager_split_chunk": self.eager_split_chunk,
            "ring_foreign_entries": self.foreign_ring_entries,
            "kvm_caps": dict(self.caps),
            "memslots": [dict(slot) for slot in self.memslots],
            "test_region": {
                "gva": TEST_GVA,
                "gpa": TEST_GPA,
                "size": options.total_bytes,
                "pages": self.total_pages,
                "access_stride": ACCESS_STRIDE,
                "slot_pages": self.slot_pages,
            },
            "guest_paging": dict(self.paging),
            "vcpus": [
                {
                    "index": s.index,
                    "tid": s.tid,
                    "thread_name": vcpu_thread_name(s.index),
                    "fd": s.vcpu.fd if s.vcpu else None,
                    "gva_start": TEST_GVA + s.first_page * ACCESS_STRIDE,
                    "gva_end": TEST_GVA + (s.first_page + s.pages) * ACCESS_STRIDE,
                    "gpa_start": TEST_GPA + s.first_page * ACCESS_STRIDE,
                    "gpa_end": TEST_GPA + (s.first_page + s.pages) * ACCESS_STRIDE,
                    "pages": s.pages,
                    "plan_gva": s.plan_gva,
                    "passes": s.passes,
                    "pass_ns": list(s.pass_ns),
                    "pass_run_ns": list(s.pass_run_ns),
                    "pass_cpu_ns": list(s.pass_cpu_ns),
                    "kvm_run_count": s.vcpu.run_count if s.vcpu else 0,
                    "kvm_run_ns": s.vcpu.run_ns if s.vcpu else 0,
                    "ring_full_exits": s.ring_full_exits,
                }
                for s in self.vcpus
            ],
            "ioctls": [record.as_dict() for record in self.log.records()],
            "phases": list(self.phases),
            "iterations": [
                {
                    "iteration": r.iteration,
                    "dirty_pages": r.dirty_pages,
                    "expected_dirty_pages": r.expected_dirty_pages,
                    "missing_pages": r.missing_pages,
                    "unexpected_pages": r.unexpected_pages,
                }
                for r in self.results
            ],
            "verified": bool(self.results) and all(r.ok for r in self.results),
            "ground_truth": {
                "test_region_write_faults": _expected_write_faults(self.total_pages, self.initially_set, self.results),
                "assumes": "shadow paging (guest page-table walks traced) and 4 KiB host pages",
            },
        }

    def close(self) -> None:
        """Stop threads, then close vCPUs, the VM, /dev/kvm and the memory, whatever state we are in."""
        try:
            self._stop_threads(graceful=False)
        finally:
            for state in self.vcpus:
                if state.ring is not None:
                    state.ring.release()
                    state.ring = None
                if state.vcpu is not None and not (state.thread and state.thread.is_alive()):
                    state.vcpu.close()
            for resource in (self.vm, self.kvm, self.test, self.system):
                if resource is not None:
                    resource.close()


def _expected_write_faults(total_pages: int, initially_set: bool, iterations: list[IterationResult]) -> int:
    return total_pages + sum(
        it.expected_dirty_pages for it in iterations if not (initially_set and it.iteration == 1)
    )
