"""Host problems become one-line WorkloadErrors (simulated, no KVM needed)."""

from __future__ import annotations

import os

import pytest

from tracekit.errors import WorkloadError
from tracekit.workload import backing
from tracekit.workload.kvm import Kvm, KvmUnavailable


def test_missing_device(tmp_path):
    with pytest.raises(KvmUnavailable, match="does not exist: this host has no KVM"):
        Kvm(device=str(tmp_path / "kvm"))


def test_device_without_permission(tmp_path, monkeypatch):
    device = tmp_path / "kvm"
    device.write_bytes(b"")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(KvmUnavailable, match="no permission to open .*group that owns it"):
        Kvm(device=str(device))


def test_hugetlb_not_reserved_names_the_command(monkeypatch):
    monkeypatch.setattr(backing, "hugetlb_pool", lambda page_size: (3, 1))
    with pytest.raises(WorkloadError) as error:
        backing.check_host("anonymous_hugetlb_2mb", 64 << 20)
    message = str(error.value)
    assert "needs 32 free 2 MiB hugetlb pages but 1 are free" in message
    assert "echo 34 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages" in message


def test_size_beyond_available_memory(monkeypatch):
    monkeypatch.setattr(backing, "_mem_available", lambda: 1 << 30)
    with pytest.raises(WorkloadError, match="exceeds the 1024 MiB this host has available"):
        backing.check_host("anonymous", 2 << 30)


def test_thp_disabled(monkeypatch, tmp_path):
    enabled = tmp_path / "enabled"
    enabled.write_text("always madvise [never]\n")
    monkeypatch.setattr(backing, "_THP_ENABLED", enabled)
    with pytest.raises(WorkloadError, match="transparent huge pages are disabled"):
        backing.check_host("anonymous_thp", 2 << 20)


def test_unknown_backing():
    with pytest.raises(WorkloadError, match="unknown backing source"):
        backing.backing_page_size("tmpfs")
