"""The architecture interface of the workload: what differs between x86-64 and arm64.

The driver (:mod:`tracekit.workload.dirtylog`) describes the guest it wants as a :class:`GuestSpec`
and asks a :class:`Backend` for the VM type, host checks, the eager-split chunk size, the guest image
(code and page tables) and the vCPU registers, and to decode the guest's exits. Every backend's guest
runs the same access plan: ``plan_entries`` little-endian u64 guest-virtual page addresses at
``plan_gva``, bit 0 (:data:`PLAN_WRITE_BIT`) set to write one word, clear to read one; after each pass
it reports ``pass & 0xff`` (the first pass is 1) and, resumed, runs the rewritten plan again.
Standard library only.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from tracekit.errors import WorkloadError

__all__ = ["GuestSpec", "GuestImage", "Backend", "ACCESS_STRIDE", "PLAN_WRITE_BIT"]

#: The guest touches one word in every 4 KiB page, whatever the guest page size.
ACCESS_STRIDE = 4096
#: Bit 0 of a plan entry: write (set) or read (clear).
PLAN_WRITE_BIT = 1


@dataclass(frozen=True)
class GuestSpec:
    """What the driver needs mapped.

    ``system_gpa``..``system_map_end``: identity-mapped area for code, descriptor tables, stack and
    plans (the backend may place its own pages in ``[system_gpa, reserved_end)``); page tables go
    from ``table_base_gpa`` up. ``test_gva``/``test_gpa``/``test_size``: the region the guest
    dirties, mapped with ``guest_page_size`` pages.
    """

    system_gpa: int
    reserved_end: int
    system_map_end: int
    table_base_gpa: int
    test_gva: int
    test_gpa: int
    test_size: int
    guest_page_size: int


@dataclass
class GuestImage:
    """Pages to copy into guest memory and what the vCPUs need to start."""

    pages: dict[int, bytes]
    entry_gva: int
    end_gpa: int
    paging: dict
    extra: dict = field(default_factory=dict)


class Backend(abc.ABC):
    """One architecture's VM, vCPU and guest construction (see the module contract)."""

    arch: str = ""
    #: Guest page sizes (bytes) the backend can map the test region with.
    guest_page_sizes: tuple[int, ...] = ()
    #: Pages at the bottom of the system area that the backend uses (code, tables, stack).
    reserved_bytes: int = 0
    #: The dirty-ring capability this architecture uses (x86: KVM_CAP_DIRTY_LOG_RING).
    dirty_ring_cap: int = 0
    #: Highest guest-physical address (exclusive) the test region may reach.
    max_gpa: int = 1 << 36

    @abc.abstractmethod
    def vm_type(self, kvm) -> int:
        """The ``KVM_CREATE_VM`` type (arm64: the IPA size in bits 7:0)."""

    def check_host(self, kvm, guest_page_size: int) -> None:
        """Raise WorkloadError if this host's KVM cannot give the guest what it needs (default: fine)."""

    def check_eager_split_chunk(self, kvm, chunk: int) -> dict:
        """Raise WorkloadError unless this backend can give the VM eager-split chunk ``chunk`` (bytes, 0 = off);
        return the capability values to record."""
        raise WorkloadError(f"--eager-split-chunk: the {self.arch} backend has no per-VM eager-split chunk size")

    def set_eager_split_chunk(self, vm, chunk: int) -> int:
        """Set the chunk size on a VM without memslots (KVM refuses it later); return the size KVM reports."""
        raise WorkloadError(f"--eager-split-chunk: the {self.arch} backend has no per-VM eager-split chunk size")

    def configure_vm(self, vm, spec: GuestSpec) -> None:
        """VM-wide setup after KVM_CREATE_VM and the capabilities, before any memslot (default: nothing)."""

    @abc.abstractmethod
    def build_guest(self, spec: GuestSpec) -> GuestImage:
        """Guest code and page tables ({gpa: bytes} for the system memslot) and a JSON-able paging description."""

    @abc.abstractmethod
    def init_vcpu(self, vcpu, image: GuestImage, index: int, plan_gva: int, plan_entries: int) -> None:
        """Registers so that the vCPU runs the guest code at user privilege with paging on."""

    @abc.abstractmethod
    def guest_report(self, vcpu, exit_reason: int) -> int:
        """The pass number (0-255) an exit reports, or WorkloadError describing an unexpected exit."""

    @abc.abstractmethod
    def guest_mode(self, spec: GuestSpec) -> str:
        """The ``Testing guest mode:`` text of dirty_log_perf_test for this guest."""

