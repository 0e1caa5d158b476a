"""Test tiers, said up front: the fast tier is ``pytest -m "not live and not slow" -n auto``; before running a
collection that holds lab tests (QEMU guests) or selftest tests (the kernel's KVM selftests, built once),
the session prints how many there are and about how long they take. Every test sees output at its natural
width: ``COLUMNS`` (set by a user's shell, or by pytest-xdist in its workers) is removed unless a test sets it."""

from __future__ import annotations

import pytest

LAB_FILES = ("tests/lab/", "tests/funcprobes/test_family_lab.py")  # their live tests boot QEMU


@pytest.fixture(autouse=True)
def _natural_width(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)


def _tier(item) -> str | None:
    path = item.path.as_posix()
    if any(part in path for part in LAB_FILES) and item.get_closest_marker("live"):
        return "lab"  # the live lab tests boot guests; the others check the lab's host side
    if "kvm_selftests" in getattr(item, "fixturenames", ()):
        return "selftest"
    return None


def pytest_collection_finish(session) -> None:
    tiers = [_tier(item) for item in session.items]
    lab, selftest = tiers.count("lab"), tiers.count("selftest")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not (lab or selftest):
        return
    if lab:
        reporter.write_line(f"tracekit: {lab} lab tests boot arm64/x86 guests under QEMU, about 20-45 s each "
                            f"({lab * 20 // 60}-{-(-lab * 45 // 60)} minutes); a first run downloads about 530 MB")
    if selftest:
        reporter.write_line(f"tracekit: {selftest} selftest tests build the kernel's KVM selftests (1-2 minutes "
                            "once, about 150 MB downloaded) and record them")
    reporter.write_line('tracekit: the fast tier (unit and property tests) is: pytest -m "not live and not slow" -n auto')
