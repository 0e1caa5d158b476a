"""``tracekit lab kernel build``: the config fragment and its check, the cache key, the project's patches.

Every run, on any machine: the patches are checked structurally and applied (``patch``, one by one and
in the order the samples' kernel was built) to the pristine files they touch, kept in
``tests/lab/data/linux-source-6.12.117`` (Debian's 6.12.117, the source they are written against; a test
checks the copies against the unpacked source when the cache has it). The slow tier generates the config from
Debian's ``linux-source-6.12``, downloading and unpacking it into the lab cache when it is not there (skip,
or failure under ``TRACEKIT_REQUIRE_LIVE=1``, only without a route to the mirror). Building: the build test
only confirms a cached build unless ``TRACEKIT_LAB_BUILD=1`` lets it build (7-15 minutes on 2 CPUs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests import livecheck
from tracekit.cli import app
from tracekit.errors import LabError, MissingCapability, UsageError
from tracekit.lab import fetch, kbuild

#: What the labs need (docs/lab.md, "Your own kernel"), each a Kconfig option the fragment must force.
REQUIRED = ["CONFIG_KVM", "CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_CONSOLE", "CONFIG_BLK_DEV_INITRD", "CONFIG_DEVTMPFS",
            "CONFIG_FTRACE", "CONFIG_KPROBES", "CONFIG_KPROBE_EVENTS", "CONFIG_HIST_TRIGGERS", "CONFIG_BPF_SYSCALL",
            "CONFIG_TRANSPARENT_HUGEPAGE", "CONFIG_HUGETLBFS", "CONFIG_DEBUG_KERNEL", "CONFIG_DEBUG_INFO_BTF",
            "CONFIG_PROBE_EVENTS_BTF_ARGS", "CONFIG_BINFMT_SCRIPT", "CONFIG_FUTEX"]  # fmt: skip
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
#: The files the project's patches touch, as Debian's linux-source-6.12 (6.12.117) ships them.
PRISTINE = Path(__file__).parent / "data" / "linux-source-6.12.117"
#: The patches in the order the patched samples' kernel applied them (samples/lab-arm64-*.tkcap).
SAMPLES_PATCHES = ("split-skip-level3", "coalesce-unmap-first")


def _source_tree() -> Path | None:
    found = [tree for tree in kbuild.cached_sources() if tree.name == "linux-source-6.12"]
    return found[-1] if found else None


@pytest.fixture(scope="module")
def source_tree() -> Path:
    """Debian's linux-source-6.12 unpacked in the lab cache, fetched and unpacked now when it is not (as
    ``tracekit lab kernel build`` does)."""
    tree = _source_tree()
    if tree is not None:
        return tree
    try:
        return kbuild.resolve_source(f"debian:{fetch.SUITE}", fetch.cache_dir(), lambda line: None).tree
    except LabError as error:
        livecheck.skip_or_fail(f"no route to Debian's linux-source-6.12: {error}")


@pytest.mark.parametrize("arch", sorted(kbuild.ARCHES))
def test_fragment_forces_what_the_labs_need(arch):
    options = kbuild.parse_config(kbuild.fragment_text(arch))
    assert {name: options.get(name) for name in REQUIRED} == {name: "y" for name in REQUIRED}
    console = "CONFIG_SERIAL_AMBA_PL011_CONSOLE" if arch == "arm64" else "CONFIG_SERIAL_8250_CONSOLE"
    assert options[console] == "y"


def test_missing_options_names_each_dropped_option(tmp_path):
    fragment = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=\"x\"\nCONFIG_B=m\n"
    resolved = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_D=\"x\"\n"
    assert kbuild.missing_options(fragment, resolved) == ["CONFIG_B=m (got n)", "CONFIG_C=n (got y)"]
    assert kbuild.missing_options(fragment, "CONFIG_A=y\nCONFIG_B=m\nCONFIG_D=\"x\"\n") == []
    extra = tmp_path / "extra.config"
    extra.write_text("# CONFIG_KVM is not set\n")
    assert kbuild.parse_config(kbuild.fragment_text("arm64", [extra]))["CONFIG_KVM"] == "n"  # later wins
    with pytest.raises(UsageError, match="cannot read the config fragment"):
        kbuild.fragment_text("arm64", [tmp_path / "absent.config"])


def test_cache_key_hashes_everything_that_decides_the_image():
    skip = kbuild.resolve_patch("split-skip-level3")
    key = kbuild.build_key("arm64", "debian:linux-source-6.12_6.12.117-1_all.deb", "CONFIG_KVM=y\n", [], "gcc 12")
    assert len({key,
                kbuild.build_key("x86", "debian:linux-source-6.12_6.12.117-1_all.deb", "CONFIG_KVM=y\n", [], "gcc 12"),
                kbuild.build_key("arm64", "debian:linux-source-6.12_6.12.118-1_all.deb", "CONFIG_KVM=y\n", [], "gcc 12"),
                kbuild.build_key("arm64", "debian:linux-source-6.12_6.12.117-1_all.deb", "CONFIG_KVM=m\n", [], "gcc 12"),
                kbuild.build_key("arm64", "debian:linux-source-6.12_6.12.117-1_all.deb", "CONFIG_KVM=y\n", [], "gcc 14"),
                kbuild.build_key("arm64", "debian:linux-source-6.12_6.12.117-1_all.deb", "CONFIG_KVM=y\n", [skip],
                                 "gcc 12")}) == 6  # fmt: skip
    assert key == kbuild.build_key("arm64", "debian:linux-source-6.12_6.12.117-1_all.deb", "CONFIG_KVM=y\n", [], "gcc 12")


def _check_hunks(text: str) -> int:
    """Every hunk's line counts agree with its header; the number of hunks."""
    lines = text.splitlines()
    hunks = 0
    i = 0
    while i < len(lines):
        match = _HUNK.match(lines[i])
        i += 1
        if not match:
            continue
        hunks += 1
        old = int(match.group(2) or 1)
        new = int(match.group(4) or 1)
        while old or new:
            line = lines[i]
            i += 1
            if line.startswith("\\"):
                continue
            tag = line[:1] or " "
            assert tag in " -+", f"hunk {hunks}: unexpected line {line!r}"
            old -= tag in " -"
            new -= tag in " +"
            assert old >= 0 and new >= 0, f"hunk {hunks} has more lines than its header says"
    return hunks


@pytest.mark.parametrize("name", sorted(p.stem for p in kbuild.BUNDLED_PATCHES.glob("*.patch")))
def test_project_patch_is_well_formed(name):
    patch = kbuild.resolve_patch(name)
    assert "linux-source-6.12" in patch.text.split("\n---\n", 1)[0]  # the header names the source it targets
    assert all(path.startswith("arch/arm64/") for path in patch.files())
    assert _check_hunks(patch.text) >= 1


def test_project_patches_apply_to_the_pristine_files(tmp_path):
    """Each patch alone on the pristine files: clean (no offset, no fuzz), touching only files kept there; then
    all of them in the samples' order on a copy."""
    assert shutil.which("patch"), "patch is not installed (scripts/install.sh installs it)"
    names = sorted(p.stem for p in kbuild.BUNDLED_PATCHES.glob("*.patch"))
    assert sorted(SAMPLES_PATCHES) == names
    for name in names:
        patch = kbuild.resolve_patch(name)
        assert all((PRISTINE / path).is_file() for path in patch.files()), patch.files()
        assert kbuild.dry_run(patch, PRISTINE) is None
    tree = tmp_path / "tree"
    shutil.copytree(PRISTINE, tree)
    source = kbuild.KernelSource("dir:pristine", "6.12.117", tree)
    for name in SAMPLES_PATCHES:  # after the first, a later hunk may sit at an offset, never fuzzed or failed
        patch = kbuild.resolve_patch(name)
        complaint = kbuild.dry_run(patch, tree)
        assert complaint is None or ("offset" in complaint and "fuzz" not in complaint), (name, complaint)
        kbuild._apply(patch, tree, source)
    assert (tree / "arch/arm64/kvm/hyp/pgtable.c").read_text() != (PRISTINE / "arch/arm64/kvm/hyp/pgtable.c").read_text()


def test_pristine_files_are_the_cached_debian_source():
    """The kept copies are byte for byte Debian's 6.12.117, where the lab cache has that source unpacked."""
    tree = _source_tree()
    if tree is None or kbuild.kernel_version(tree) != "6.12.117":
        pytest.skip("Debian's linux-source-6.12 (6.12.117) is not unpacked in the lab cache; the patches were "
                    "applied to the kept copies above")
    for path in sorted(p for p in PRISTINE.rglob("*") if p.is_file()):
        assert path.read_bytes() == (tree / path.relative_to(PRISTINE)).read_bytes(), path


def test_bad_patch_and_source_are_one_line(tmp_path):
    with pytest.raises(UsageError, match="the project's own patches: .*split-skip-level3"):
        kbuild.resolve_patch(tmp_path / "nope.patch")
    junk = tmp_path / "junk.patch"
    junk.write_text("not a diff\n")
    with pytest.raises(UsageError, match="no unified diff"):
        kbuild.resolve_patch(junk)
    with pytest.raises(UsageError, match="not a kernel source tree"):
        kbuild.resolve_source(str(tmp_path), tmp_path, lambda line: None)
    with pytest.raises(UsageError, match="neither debian:CODENAME, debian:X.Y nor a directory"):
        kbuild.resolve_source(str(tmp_path / "absent"), tmp_path, lambda line: None)


def test_cli_errors_are_one_line(monkeypatch):
    runner = CliRunner()
    bad = runner.invoke(app, ["lab", "kernel", "build", "--arch", "sparc"])
    assert bad.exit_code == 2 and "choose arm64 or x86" in bad.output and "Traceback" not in bad.output
    monkeypatch.setattr(kbuild.shutil, "which", lambda name: None)
    missing = runner.invoke(app, ["lab", "kernel", "build", "--arch", "arm64"])
    assert missing.exit_code == 1 and "apt-get install gcc-aarch64-linux-gnu" in missing.output
    assert len(missing.output.strip().splitlines()) == 1


def test_cross_prefix_and_install_hint():
    assert kbuild.cross_prefix("arm64", "x86_64") == "aarch64-linux-gnu-"
    assert kbuild.cross_prefix("x86", "x86_64") == ""
    assert kbuild.cross_prefix("x86", "aarch64") == "x86_64-linux-gnu-"
    assert "dwarves" in kbuild.install_hint("arm64") and "libelf-dev" in kbuild.install_hint("arm64")


def test_failed_patch_names_the_patch_and_source(tmp_path):
    if shutil.which("patch") is None:
        pytest.skip("patch is not installed (apt-get install patch)")
    (tmp_path / "arch" / "arm64" / "kvm" / "hyp").mkdir(parents=True)
    (tmp_path / "arch" / "arm64" / "kvm" / "hyp" / "pgtable.c").write_text("nothing alike\n")
    (tmp_path / "arch" / "arm64" / "include" / "asm").mkdir(parents=True)
    (tmp_path / "arch" / "arm64" / "include" / "asm" / "kvm_pgtable.h").write_text("nothing alike\n")
    source = kbuild.KernelSource("dir:test", "6.12.0", tmp_path)
    patch = kbuild.resolve_patch("split-skip-level3")
    assert kbuild.dry_run(patch, tmp_path) is not None
    with pytest.raises(LabError, match="split-skip-level3.patch does not apply to dir:test"):
        kbuild._apply(patch, tmp_path, source)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(kbuild.ARCHES))
def test_config_generation_on_the_debian_source(arch, source_tree, tmp_path):
    """allnoconfig + the fragment + olddefconfig, out of tree: every option the labs need survives."""
    tree = source_tree
    try:
        kbuild.require_toolchain(arch)
    except MissingCapability as error:
        pytest.skip(str(error))
    fragment = tmp_path / "fragment.config"
    fragment.write_text(kbuild.fragment_text(arch))
    common = ["make", "-s", "-C", str(tree), f"O={tmp_path / 'out'}", f"ARCH={kbuild.ARCHES[arch].make_arch}",
              f"CROSS_COMPILE={kbuild.cross_prefix(arch)}"]  # fmt: skip
    subprocess.run([*common, f"KCONFIG_ALLCONFIG={fragment}", "allnoconfig"], check=True, capture_output=True)
    subprocess.run([*common, "olddefconfig"], check=True, capture_output=True)
    assert kbuild.missing_options(fragment.read_text(), (tmp_path / "out" / ".config").read_text()) == []


@pytest.mark.slow
@pytest.mark.parametrize("patches", [(), ("split-skip-level3", "coalesce-unmap-first")], ids=["unpatched", "samples"])
def test_arm64_build_is_cached_as_recorded(patches):
    """An arm64 build (unpatched, or the one the lab-arm64-skip3-* samples came from): found in the cache, or built
    with TRACEKIT_LAB_BUILD=1; its image, its release naming the key, every option the labs need."""
    try:
        kbuild.require_toolchain("arm64")
    except MissingCapability as error:
        pytest.skip(str(error))
    if _source_tree() is None or (kbuild.lookup("arm64", patches=patches) is None
                                  and os.environ.get("TRACEKIT_LAB_BUILD") != "1"):  # fmt: skip
        pytest.skip("no cached arm64 lab kernel build of these patches; run 'tracekit lab kernel build --arch arm64"
                    + "".join(f" --patch {p}" for p in patches) + "' (7-15 min on 2 CPUs) or set TRACEKIT_LAB_BUILD=1")
    result = kbuild.build("arm64", patches=patches, jobs=2)
    assert result.image.is_file() and result.image.stat().st_size > 4 << 20
    assert result.release.startswith("6.12.") and result.release.endswith(f"-tk{result.key[:8]}")
    assert [p["name"] for p in result.patches] == [f"{name}.patch" for name in patches]
    assert kbuild.missing_options(kbuild.fragment_text("arm64"), (result.directory / ".config").read_text()) == []
    assert kbuild.build("arm64", patches=patches, jobs=2).cached


def test_build_record_names_the_source_and_patches_of_a_built_image(tmp_path):
    image = tmp_path / "tree" / "arch" / "arm64" / "boot" / "Image"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\0")
    meta = {"arch": "arm64", "key": "k", "release": "6.12.117-tkk", "source": "debian:x.deb", "toolchain": "gcc",
            "patches": [{"name": "split-skip-level3.patch"}], "image": str(image), "directory": str(tmp_path)}
    (tmp_path / "build.json").write_text(json.dumps(meta))
    assert kbuild.build_record(image)["patches"] == [{"name": "split-skip-level3.patch"}]
    assert "directory" not in kbuild.build_record(image)  # machine paths stay out of a capture
    other = tmp_path / "tree" / "vmlinux"
    other.write_bytes(b"\0")
    assert kbuild.build_record(other) is None and kbuild.build_record(tmp_path / "elsewhere") is None


def test_install_script_installs_what_the_patch_and_config_tests_need():
    """scripts/install.sh installs the kernel-build tools and the other architecture's gcc, so a fresh machine
    runs the patch and config-generation tests instead of skipping them."""
    script = (Path(__file__).parents[2] / "scripts" / "install.sh").read_text()
    words = set(re.findall(r"[\w.+-]+", script.split("PACKAGES=(", 1)[1].split("\nmissing=", 1)[0]))
    assert set(kbuild.TOOL_PACKAGES) <= words, set(kbuild.TOOL_PACKAGES) - words
    assert {arch.gcc_package for arch in kbuild.ARCHES.values()} <= words
