"""Building the KVM selftests from Debian's kernel source (tracekit.lab.selftests), without the network."""

from __future__ import annotations

import pytest

from tracekit.errors import LabError, MissingCapability
from tracekit.lab import fetch, selftests


def test_only_the_parts_the_build_reads_are_unpacked():
    parts = selftests.source_parts("x86_64")
    assert "arch/x86" in parts and "tools" in parts
    assert not any("drivers" in m or "Documentation" in m for m in parts)
    assert "arch/arm64" in selftests.source_parts("aarch64")


def _no_apt(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(fetch.PrivateApt, "update", refuse)
    monkeypatch.setattr(fetch.PrivateApt, "download", refuse)


def test_a_complete_build_is_reused_without_the_network(tmp_path, monkeypatch):
    _no_apt(monkeypatch)
    old, new = tmp_path / "kvm-selftests-6.12.100-1", tmp_path / "kvm-selftests-6.12.117-1"
    for folder in (old, new):
        (folder / "bin").mkdir(parents=True)
        for name in selftests.DEFAULT_TESTS:
            (folder / "bin" / name).write_text("")
        (folder / ".complete").write_text("ok\n")
    assert selftests.build_kvm_selftests(tmp_path) == new / "bin"
    (new / "bin" / "memslot_perf_test").unlink()  # incomplete for what is asked: the older one serves
    assert selftests.build_kvm_selftests(tmp_path) == old / "bin"
    assert selftests.build_kvm_selftests(tmp_path, ("dirty_log_test",)) == new / "bin"


def test_a_missing_compiler_names_its_package(tmp_path, monkeypatch):
    _no_apt(monkeypatch)
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None if name == "gcc" else f"/usr/bin/{name}")
    with pytest.raises(MissingCapability, match=r"gcc is not installed \(apt-get install gcc\)"):
        selftests.build_kvm_selftests(tmp_path)


def test_an_unreachable_mirror_is_one_line(tmp_path, monkeypatch):
    def unreachable(self):
        raise LabError("cannot read the Debian trixie package lists from http://deb.debian.org/debian: check the route")

    monkeypatch.setattr(fetch.PrivateApt, "update", unreachable)
    with pytest.raises(LabError, match="cannot read the Debian"):
        selftests.build_kvm_selftests(tmp_path)
    assert not list(tmp_path.glob("kvm-selftests-*"))
