"""Build the kernel's KVM selftests from Debian's kernel source, once, into the lab cache.

:func:`build_kvm_selftests` returns the directory of the :data:`DEFAULT_TESTS` binaries built for this host
from Debian's ``linux-source`` (downloaded by :func:`tracekit.lab.kbuild.linux_source_deb`, only the parts the
build reads unpacked, deleted after), kept in ``CACHE/kvm-selftests-VERSION/bin`` and reused without the
network. Missing tools raise :class:`tracekit.errors.MissingCapability`, an unreachable mirror or a failed
build :class:`tracekit.errors.LabError`.
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

from tracekit.errors import LabError
from tracekit.lab.fetch import PrivateApt, cache_lock, check_disk, require_tool, run_tool
from tracekit.lab.kbuild import linux_source_deb, unpack_linux_source

__all__ = ["DEFAULT_TESTS", "build_kvm_selftests", "source_parts"]

DEFAULT_TESTS = ("dirty_log_perf_test", "dirty_log_test", "kvm_page_table_test", "memslot_perf_test")
#: Free space for the unpacked source parts (about 170 MB) and the build.
_NEEDED_BYTES = 512 << 20
#: ``uname -m`` -> the kernel's source architecture directory.
_SRCARCH = {"x86_64": "x86", "aarch64": "arm64", "i686": "x86", "riscv64": "riscv", "s390x": "s390"}


def source_parts(machine: str) -> list[str]:
    """The parts of the source tree that ``make headers`` and the KVM selftests read."""
    srcarch = _SRCARCH.get(machine, machine)
    return ["Makefile", "Kbuild", "Kconfig", "scripts", "include", f"arch/{srcarch}", "tools", "usr", "lib"]


def build_kvm_selftests(cache: Path, tests: tuple[str, ...] = DEFAULT_TESTS) -> Path:
    """The directory of the built ``tests`` (see the module docstring)."""
    with cache_lock(cache):
        for done in sorted(cache.glob("kvm-selftests-*/.complete"), reverse=True):
            folder = done.parent / "bin"
            if all((folder / name).is_file() for name in tests):
                return folder
        return _build(cache, tests)


def _build(cache: Path, tests: tuple[str, ...]) -> Path:
    make = require_tool("make", "make")
    require_tool("tar", "tar")
    require_tool("gcc", "gcc")
    check_disk(cache, _NEEDED_BYTES)
    deb = linux_source_deb(PrivateApt.for_suite(cache))
    version = deb.name.split("_")[1]
    target = cache / f"kvm-selftests-{version}"
    if target.exists():
        shutil.rmtree(target)
    work = target / "src"
    work.mkdir(parents=True)
    try:
        tree = unpack_linux_source(deb, work, source_parts(platform.machine()))
        top = tree.name
        jobs = str(max(1, len(os.sched_getaffinity(0))))
        run_tool([make, "-C", str(tree), "-s", "headers"], f"make headers in {top}")
        out = target / "bin"
        kvm = tree / "tools" / "testing" / "selftests" / "kvm"
        run_tool([make, "-C", str(kvm), f"-j{jobs}", f"OUTPUT={out}", f"KHDR_INCLUDES=-isystem {tree / 'usr' / 'include'}",
                  *(str(out / name) for name in tests)], f"building the KVM selftests ({', '.join(tests)}) of {top}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    missing = [name for name in tests if not (out / name).is_file()]
    if missing:
        raise LabError(f"the KVM selftest build made no {', '.join(missing)} in {out}")
    (target / ".complete").write_text(f"{deb.name}\n" + "".join(f"{name}\n" for name in tests))
    return out
