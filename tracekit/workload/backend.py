"""The architecture interface of the workload: what differs between x86-64 and arm64.

Contract
--------
The driver (:mod:`tracekit.workload.dirtylog`) is architecture-neutral. It describes the guest it
wants as a :class:`GuestSpec` (where the system area and the test region live, which pages each
vCPU's access plan occupies) and asks a :class:`Backend` for the rest:

- ``vm_type(kvm)``: the ``KVM_CREATE_VM`` type (arm64: IPA size in bits 7:0);
- ``check_host(kvm, guest_page_size)``: refuse what this host's KVM does not offer;
- ``check_eager_split_chunk(kvm, chunk)``: before the VM exists, refuse a per-VM eager-split chunk
  size (bytes, 0 = off) this backend or host cannot set; returns capability values to record;
- ``set_eager_split_chunk(vm, chunk)``: set it, before the first memslot (KVM accepts the arm64
  chunk size only while every memslot is empty); returns the value KVM then reports;
- ``configure_vm(vm, spec)``: VM-wide setup after creation, also before the first memslot;
- ``build_guest(spec)``: guest code and page tables as a :class:`GuestImage` ({gpa: bytes} to copy
  into the system memslot, plus a JSON-able description of the guest paging);
- ``init_vcpu(vcpu, image, index, plan_gva, plan_entries)``: registers so that the vCPU runs the
  guest code at user privilege with paging on;
- ``guest_report(vcpu, exit_reason)``: decode an exit; return the pass number the guest reported
  (0-255) or raise :class:`tracekit.errors.WorkloadError` describing the unexpected exit.

The guest contract shared by all backends: the plan of a vCPU is an array of ``plan_entries``
little-endian 64-bit words at ``plan_gva``; each word is the guest-virtual address of a 4 KiB
page with bit 0 set for "write one word" and clear for "read one word". The guest runs the plan
once per pass, in array order, then reports ``pass & 0xff`` (the first pass is 1) and, when
resumed, starts the next pass over the same array (which the host rewrites in between).
:func:`tracekit.workload.dirtylog.backend_for` picks the backend of the running machine. Standard
library only.
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
    def vm_type(self, kvm) -> int: ...

    def check_host(self, kvm, guest_page_size: int) -> None:
        """Raise WorkloadError if this host's KVM cannot give the guest what it needs (default: fine)."""

    def check_eager_split_chunk(self, kvm, chunk: int) -> dict:
        """Raise WorkloadError unless this backend can give the VM eager-split chunk ``chunk`` (bytes)."""
        raise WorkloadError(f"--eager-split-chunk: the {self.arch} backend has no per-VM eager-split chunk size")

    def set_eager_split_chunk(self, vm, chunk: int) -> int:
        """Set the chunk size on a VM without memslots; return the size KVM reports afterwards."""
        raise WorkloadError(f"--eager-split-chunk: the {self.arch} backend has no per-VM eager-split chunk size")

    def configure_vm(self, vm, spec: GuestSpec) -> None:
        """VM-wide setup after KVM_CREATE_VM and the capabilities, before any memslot (default: nothing)."""

    @abc.abstractmethod
    def build_guest(self, spec: GuestSpec) -> GuestImage: ...

    @abc.abstractmethod
    def init_vcpu(self, vcpu, image: GuestImage, index: int, plan_gva: int, plan_entries: int) -> None: ...

    @abc.abstractmethod
    def guest_report(self, vcpu, exit_reason: int) -> int: ...

    @abc.abstractmethod
    def guest_mode(self, spec: GuestSpec) -> str:
        """The ``Testing guest mode:`` text of dirty_log_perf_test for this guest."""

