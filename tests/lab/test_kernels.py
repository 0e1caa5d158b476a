"""Lab kernels by name without the network: spec parsing, the host's apt sources, package resolution
(from recorded Debian ``Packages`` excerpts, 7.x split packaging included), module order, image releases."""

from __future__ import annotations

import gzip
import lzma
import struct
import subprocess
from pathlib import Path

import pytest

from tracekit.errors import LabError, UsageError
from tracekit.lab import aptsources, fetch, kernels
from tracekit.lab.kernels import KernelSpec

DATA = Path(__file__).parent / "data" / "apt"


def _stanzas(suite: str, deb_arch: str) -> dict:
    return kernels.parse_packages((DATA / f"{suite}_main_binary-{deb_arch}_Packages").read_text())


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize(
    "text, kind, value",
    [
        ("debian:bookworm", "suite", "bookworm"),
        ("debian:Trixie-Backports", "suite", "trixie-backports"),
        ("debian:sid", "suite", "sid"),
        ("debian:6.1", "version", "6.1"),
        ("debian:7.3.4", "version", "7.3.4"),
        ("/tmp/Image", "path", "/tmp/Image"),
        ("Image", "path", "Image"),
        (None, "suite", "trixie"),
        ("", "suite", "trixie"),
    ],
)
def test_kernel_specs(text, kind, value):
    spec = kernels.parse_spec(text)
    assert (spec.kind, spec.value) == (kind, value)


@pytest.mark.parametrize("text", ["debian:", "debian:nope", "debian:6", "debian:6.x", "debian:bookworm-security",
                                  "debian:../../etc"])  # fmt: skip
def test_unknown_kernel_specs_are_one_line_usage_errors(text):
    with pytest.raises(UsageError, match=r"unknown kernel .*choose debian:bullseye\|bookworm"):
        kernels.parse_spec(text)


def test_version_of_a_release():
    assert kernels.version_of("6.1.0-50-cloud-arm64") == (6, 1)
    assert kernels.version_of("7.3.4+deb13-cloud-amd64") == (7, 3)
    assert kernels.version_of("") == (0, 0)


# ---------------------------------------------------------------- apt sources


def _etc(tmp_path: Path, files: dict[str, bytes | str]) -> Path:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        path = etc / name
        if text is None:
            path.mkdir()
        else:
            path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return etc


def test_mirror_from_a_deb822_sources_file_not_security_nor_disabled_files(tmp_path, monkeypatch):
    monkeypatch.delenv(aptsources.MIRROR_ENV, raising=False)
    etc = _etc(tmp_path, {
        "sources.list.d/00-security.sources": "Types: deb\nURIs: http://security.example/debian-security\n"
                                              "Suites: bookworm-security\nComponents: main\n",
        "sources.list.d/01-off.sources": "Types: deb\nEnabled: no\nURIs: http://off.example/debian\nSuites: bookworm\n"
                                         "Components: main\n",
        "sources.list.d/02-node.sources.disabled": "Types: deb\nURIs: http://ignored.example/debian\nSuites: trixie\n"
                                                   "Components: main\n",
        "sources.list.d/debian.sources": "# a comment\nTypes: deb deb-src\n# http://snapshot.example/\n"
                                         "URIs: http://mirror.example/debian/\n  http://second.example/debian\n"
                                         "Suites: bookworm bookworm-updates\nComponents: main contrib\n"
                                         "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
    })  # fmt: skip
    assert aptsources.debian_mirror(etc) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources_with_options_and_comments(tmp_path, monkeypatch):
    monkeypatch.delenv(aptsources.MIRROR_ENV, raising=False)
    etc = _etc(tmp_path, {"sources.list": "# deb http://commented.example/debian bookworm main\n"
                                          "deb-src http://src.example/debian bookworm main\n"
                                          "deb cdrom:[Debian 12]/ bookworm main\n"
                                          "deb [arch=amd64 signed-by=/k.gpg] https://proxy.example:3142/debian trixie main # x\n"
                                          "deb http://late.example/debian trixie main\n"})  # fmt: skip
    assert aptsources.debian_mirror(etc) == "https://proxy.example:3142/debian"


def test_hostile_and_foreign_sources_are_skipped(tmp_path, monkeypatch):
    """Binary garbage, invalid UTF-8, a directory named like a list, Ubuntu suites, a flat repository, a
    component-less entry: none is a Debian mirror, and the error names the override."""
    monkeypatch.delenv(aptsources.MIRROR_ENV, raising=False)
    etc = _etc(tmp_path, {
        "sources.list": b"\x00\xff\xfe binary \x00 deb http://x/ y z",
        "sources.list.d/a.list": b"deb http://bad.example/debian \xff\xfe main\n",
        "sources.list.d/dir.list": None,
        "sources.list.d/ubuntu.list": "deb http://archive.ubuntu.com/ubuntu jammy main universe\n",
        "sources.list.d/flat.list": "deb http://flat.example/repo ./\n",
        "sources.list.d/nocomp.sources": "Types: deb\nURIs: http://nocomp.example/debian\nSuites: trixie\n",
        "sources.list.d/junk.sources": "Types deb\n\n\n:::\nURIs:\nSuites: trixie\n",
    })  # fmt: skip
    with pytest.raises(LabError, match=f"name no Debian archive with a main component; set {aptsources.MIRROR_ENV}"):
        aptsources.debian_mirror(etc)


def test_mirror_override_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(aptsources.MIRROR_ENV, "http://local-mirror.example/debian/")
    assert aptsources.debian_mirror(_etc(tmp_path, {})) == "http://local-mirror.example/debian"
    monkeypatch.setenv(aptsources.MIRROR_ENV, "deb.debian.org")
    with pytest.raises(LabError, match="is not a mirror URL"):
        aptsources.debian_mirror(_etc(tmp_path / "b", {}))


def test_private_apt_of_a_suite_names_the_mirror_and_relaxes_valid_until_only_for_sid_and_forky(tmp_path):
    for suite, relaxed in (("sid", True), ("forky", True), ("bookworm-backports", False)):
        apt = fetch.PrivateApt.for_suite(tmp_path, suite)
        apt._mirror = "http://mirror.example/debian"
        apt.setup()
        assert apt.root == tmp_path / f"apt-{suite}"
        assert (apt.root / "etc" / "sources.list").read_text().endswith(f"http://mirror.example/debian {suite} main\n")
        assert ('Acquire::Check-Valid-Until "false";' in apt.config.read_text()) is relaxed


# ---------------------------------------------------------------- package resolution


@pytest.mark.parametrize(
    "suite, deb_arch, release, packages",
    [
        ("bullseye", "amd64", "5.10.0-32-cloud-amd64", ("linux-image-5.10.0-32-cloud-amd64",)),
        ("bookworm", "arm64", "6.1.0-50-cloud-arm64", ("linux-image-6.1.0-50-cloud-arm64",)),
        ("trixie", "amd64", "6.12.117+deb13-cloud-amd64", ("linux-image-6.12.117+deb13-cloud-amd64",)),
        ("trixie-backports", "arm64", "7.3.4+deb13-cloud-arm64",
         ("linux-binary-7.3.4+deb13-cloud-arm64", "linux-modules-7.3.4+deb13-cloud-arm64",
          "linux-base-7.3.4+deb13-cloud-arm64")),
        ("sid", "amd64", "7.2.13+deb14-cloud-amd64",
         ("linux-binary-7.2.13+deb14-cloud-amd64", "linux-modules-7.2.13+deb14-cloud-amd64",
          "linux-base-7.2.13+deb14-cloud-amd64")),
    ],
)  # fmt: skip
def test_suite_kernel_from_the_cloud_metapackage(suite, deb_arch, release, packages):
    """The metapackage names the kernel; from 7.x the linux-image package is a stub whose image, modules and
    config come from linux-binary, linux-modules and linux-base (recorded Debian Packages excerpts)."""
    chosen = kernels.kernel_packages(_stanzas(suite, deb_arch), deb_arch, KernelSpec("suite", suite), suite)
    assert (chosen.release, chosen.packages) == (release, packages)


@pytest.mark.parametrize(
    "version, release",
    [("7.3", "7.3.4+deb13-cloud-arm64"), ("7.2", "7.2.12+deb13-cloud-arm64"), ("6.18", "6.18.15+deb13-cloud-arm64"),
     ("6.1", None), ("7.2.6", "7.2.6+deb13-cloud-arm64")],
)  # fmt: skip
def test_version_kernel_is_the_newest_of_that_version_not_a_prefix_match(version, release):
    chosen = kernels.kernel_packages(_stanzas("trixie-backports", "arm64"), "arm64", KernelSpec("version", version),
                                     "trixie-backports")  # fmt: skip
    assert (chosen.release if chosen else None) == release


def test_version_6_1_is_not_6_12():
    stanzas = _stanzas("trixie", "amd64")
    assert kernels.kernel_packages(stanzas, "amd64", KernelSpec("version", "6.1"), "trixie") is None
    assert kernels.kernel_packages(stanzas, "amd64", KernelSpec("version", "6.12"), "trixie").release.startswith("6.12.117")


def test_a_suite_without_the_metapackage_or_with_an_empty_one():
    assert kernels.kernel_packages({}, "amd64", KernelSpec("suite", "trixie"), "trixie") is None
    broken = {"linux-image-cloud-amd64": {"Package": "linux-image-cloud-amd64", "Depends": "linux-base"}}
    with pytest.raises(LabError, match="names no kernel package"):
        kernels.kernel_packages(broken, "amd64", KernelSpec("suite", "trixie"), "trixie")


def test_parse_packages_keeps_kernel_stanzas_and_joins_continuations():
    text = ("Package: bash\nVersion: 5\n\nPackage: linux-image-1.0-cloud-amd64\nVersion: 1.0-1\nDepends: a,\n b (>= 2) | c\n"
            "\nPackage: linux-image-cloud-amd64\nDepends: linux-image-1.0-cloud-amd64 (= 1.0-1)")  # fmt: skip
    stanzas = kernels.parse_packages(text)
    assert sorted(stanzas) == ["linux-image-1.0-cloud-amd64", "linux-image-cloud-amd64"]
    assert kernels._depends(stanzas["linux-image-1.0-cloud-amd64"]) == ["a", "b"]


# ---------------------------------------------------------------- modules and images


def elf_module(**info: str | list[str]) -> bytes:
    """A minimal little-endian ELF64 relocatable object with a ``.modinfo`` section."""
    entries = []
    for key, values in info.items():
        for value in [values] if isinstance(values, str) else values:
            entries.append(f"{key}={value}".encode())
    modinfo = b"\0".join(entries) + b"\0"
    shstr = b"\0.modinfo\0.shstrtab\0"
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    data_at = 64
    shstr_at = data_at + len(modinfo)
    shoff = shstr_at + len(shstr)
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 2)
    sections = b"\0" * 64
    sections += struct.pack("<IIQQQQ", 1, 1, 0, 0, data_at, len(modinfo)) + b"\0" * 24
    sections += struct.pack("<IIQQQQ", 10, 3, 0, 0, shstr_at, len(shstr)) + b"\0" * 24
    return bytes(header) + modinfo + shstr + sections


def _moddir(tmp_path: Path, builtin: list[str], modules: dict[str, str], compress=lzma.compress) -> Path:
    moddir = tmp_path / "lib" / "modules" / "6.1.0-50-cloud-amd64"
    (moddir / "kernel").mkdir(parents=True)
    (moddir / "modules.builtin").write_text("".join(f"kernel/{name}.ko\n" for name in builtin))
    for name, depends in modules.items():
        (moddir / "kernel" / f"{name}.ko.xz").write_bytes(compress(elf_module(depends=depends, license="GPL")))
    return moddir


def test_guest_modules_follow_modules_builtin_and_each_modules_depends(tmp_path):
    """bookworm 6.1 builds virtio as modules: they are loaded, dependencies first; 6.12 builds them in: only KVM."""
    modular = _moddir(tmp_path / "a", [], {"virtio_ring": "", "virtio": "virtio_ring", "virtio_pci": "virtio,virtio_ring",
                                           "virtio_console": "virtio,virtio_ring", "irqbypass": "",
                                           "kvm": "irqbypass", "kvm-amd": "kvm"})  # fmt: skip
    order, files = kernels.guest_modules(modular, kernels.NEEDED_MODULES["x86"])
    assert order == ["virtio_ring", "virtio", "virtio_pci", "virtio_console", "irqbypass", "kvm", "kvm_amd"]
    assert files["kvm_amd"].name == "kvm-amd.ko.xz"
    builtin = _moddir(tmp_path / "b", ["drivers/virtio/virtio_pci", "drivers/char/virtio_console"],
                      {"irqbypass": "", "kvm": "irqbypass", "kvm-amd": "kvm"})  # fmt: skip
    assert kernels.guest_modules(builtin, kernels.NEEDED_MODULES["x86"])[0] == ["irqbypass", "kvm", "kvm_amd"]
    assert kernels.guest_modules(builtin, kernels.NEEDED_MODULES["arm64"])[0] == []


def test_a_needed_module_that_is_neither_built_in_nor_shipped_and_cycles_are_errors(tmp_path):
    missing = _moddir(tmp_path / "a", [], {"virtio_pci": "virtio"})
    with pytest.raises(LabError, match="module virtio \\(needed by virtio_pci\\) is neither built in nor a module"):
        kernels.guest_modules(missing, ("virtio_pci",))
    cycle = _moddir(tmp_path / "b", [], {"a": "b", "b": "a"})
    with pytest.raises(LabError, match="module dependency cycle: a -> b -> a"):
        kernels.guest_modules(cycle, ("a",))


def test_modinfo_reads_depends_and_parameters_and_refuses_non_elf():
    info = kernels.modinfo(elf_module(depends="irqbypass", parmtype=["tdp_mmu:bool", "eager_page_split:bool"]))
    assert info == {"depends": ["irqbypass"], "parmtype": ["tdp_mmu:bool", "eager_page_split:bool"]}
    with pytest.raises(LabError, match="not a little-endian ELF64"):
        kernels.modinfo(b"MZ\0\0" + b"\0" * 64)


def test_kvm_arguments_follow_the_kvm_module_parameters():
    """5.10's kvm has no eager_page_split (5.17): insmod would refuse the unknown parameter."""
    from tracekit.lab import scenarios
    from tracekit.lab.runner import kvm_args

    lazy = scenarios.get("tdp-lazy", "x86")
    assert kvm_args(lazy, None) == "tdp_mmu=1,eager_page_split=0"
    assert kvm_args(lazy, ("nx_huge_pages", "tdp_mmu")) == "tdp_mmu=1"


def test_image_release_from_an_x86_bzimage_header_and_an_arm64_gzip_image(tmp_path):
    bz = bytearray(0x600)
    bz[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", bz, 0x20E, 0x300)
    text = b"6.1.0-50-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\0"
    bz[0x500 : 0x500 + len(text)] = text
    (tmp_path / "bzImage").write_bytes(bytes(bz))
    assert kernels.image_release(tmp_path / "bzImage") == "6.1.0-50-cloud-amd64"
    image = b"\0" * 4096 + b"Linux version 7.3.4+deb13-cloud-arm64 (debian-kernel@lists.debian.org) (gcc)" + b"\0" * 64
    (tmp_path / "Image.gz").write_bytes(gzip.compress(image))
    assert kernels.image_release(tmp_path / "Image.gz") == "7.3.4+deb13-cloud-arm64"
    (tmp_path / "junk").write_bytes(b"\x1f\x8bnot gzip")
    assert kernels.image_release(tmp_path / "junk") == ""


# ---------------------------------------------------------------- resolution end to end, offline


def _deb(folder: Path, package: str, files: dict[str, bytes]) -> Path:
    root = folder / f"{package}-tree"
    (root / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (root / "DEBIAN" / "control").write_text(f"Package: {package}\nVersion: 7.3.4-1~bpo13+1\nArchitecture: arm64\n"
                                             "Maintainer: test <t@example>\nDescription: test\n")  # fmt: skip
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    deb = folder / f"{package}_7.3.4-1~bpo13+1_arm64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(root), str(deb)], check=True, capture_output=True)
    return deb


def test_a_7x_kernel_is_assembled_from_its_split_packages_and_reused_offline(tmp_path, monkeypatch):
    """debian:trixie-backports on arm64, from recorded lists: linux-binary (the image under /usr/lib/modules),
    linux-modules (virtio as modules here) and linux-base (config, modules.builtin) unpacked into one tree;
    the second resolution reads the cache only."""
    fetch.require_tool("dpkg-deb", "dpkg")
    release = "7.3.4+deb13-cloud-arm64"
    apt = fetch.PrivateApt.for_suite(tmp_path, "trixie-backports")
    apt._mirror = "http://mirror.example/debian"
    monkeypatch.setattr(fetch, "debian_mirror", lambda: "http://mirror.example/debian")
    apt.setup()
    lists = apt.root / "state" / "lists"
    (lists / "mirror.example_debian_dists_trixie-backports_main_binary-arm64_Packages").write_bytes(
        (DATA / "trixie-backports_main_binary-arm64_Packages").read_bytes())
    (apt.root / ".updated").write_text(apt.sources_line())
    mods = f"usr/lib/modules/{release}"
    debs = {
        f"linux-binary-{release}": {f"{mods}/vmlinuz": b"\0" * 64 + b"Linux version 7.3.4+deb13-cloud-arm64 (x)"},
        f"linux-modules-{release}": {
            f"{mods}/kernel/drivers/virtio/virtio.ko.xz": lzma.compress(elf_module(depends="")),
            f"{mods}/kernel/drivers/virtio/virtio_pci.ko.xz": lzma.compress(elf_module(depends="virtio")),
            f"{mods}/kernel/drivers/char/virtio_console.ko.xz": lzma.compress(elf_module(depends="virtio"))},
        f"linux-base-{release}": {f"{mods}/config": b"CONFIG_KVM=y\n", f"{mods}/modules.builtin": b"kernel/x/y.ko\n"},
    }
    asked = []

    def download(self, package):
        asked.append(package)
        name = package.split(":")[0]
        return _deb(tmp_path / "debs", name, debs[name])

    real_run_tool = fetch.run_tool

    def no_network(argv, what, env=None, timeout=900):
        assert argv[0] != "apt-get", "apt-get update must not run: the lists are recorded and current"
        return real_run_tool(argv, what, env, timeout)

    (tmp_path / "debs").mkdir()
    monkeypatch.setattr(fetch.PrivateApt, "download", download)
    monkeypatch.setattr(fetch, "run_tool", no_network)
    kernel = kernels.resolve_kernel("debian:trixie-backports", "arm64", tmp_path)
    assert asked == [f"linux-binary-{release}:arm64", f"linux-modules-{release}:arm64", f"linux-base-{release}:arm64"]
    assert kernel.release == release and kernel.image.name == "vmlinuz" and kernel.config.name == "config"
    assert [name for name, _ in kernel.modules] == ["virtio", "virtio_pci", "virtio_console"]
    assert kernel.modules[0][1].read_bytes()[:4] == b"\x7fELF"  # decompressed for busybox insmod
    assert kernel.suite == "trixie-backports" and kernel.version == (7, 3)
    assert kernel.source.startswith("debian trixie-backports linux-binary-")
    monkeypatch.setattr(fetch.PrivateApt, "download", lambda self, package: pytest.fail("downloaded again"))
    again = kernels.resolve_kernel("debian:trixie-backports", "arm64", tmp_path)
    assert again == kernel
    target = tmp_path / "kernels" / f"{release}_7.3.4-1~bpo13+1"
    (target / "kernel.json").write_text("{not json")  # a damaged cache entry is unpacked again
    monkeypatch.setattr(fetch.PrivateApt, "download", download)
    asked.clear()
    assert kernels.resolve_kernel("debian:trixie-backports", "arm64", tmp_path) == kernel
    assert len(asked) == 3
    updates = []
    monkeypatch.setattr(fetch.PrivateApt, "update", lambda self, force=False: updates.append((self.suite, force)))
    assert kernels.resolve_kernel("debian:trixie-backports", "arm64", tmp_path, refresh=True) == kernel
    assert updates == [("trixie-backports", True)]  # the lists read again; the same kernel is still unpacked


def test_a_path_kernel_with_a_module_directory(tmp_path):
    (tmp_path / "Image").write_bytes(b"\0" * 32 + b"Linux version 6.12.0-lab (me@host) #1")
    mods = tmp_path / "mods"
    mods.mkdir()
    for name, depends in (("kvm-amd", "kvm"), ("kvm-intel", "kvm"), ("kvm", "irqbypass"), ("irqbypass", "")):
        (mods / f"{name}.ko").write_bytes(elf_module(depends=depends, parmtype="tdp_mmu:bool"))
    kernel = kernels.resolve_kernel(str(tmp_path / "Image"), "x86", tmp_path, mods)
    assert kernel.release == "6.12.0-lab" and kernel.suite is None and kernel.config is None
    assert [name for name, _ in kernel.modules] == ["irqbypass", "kvm", "kvm_amd"]
    assert kernel.kvm_params == ("tdp_mmu",)
    with pytest.raises(UsageError, match="does not exist"):
        kernels.resolve_kernel(str(tmp_path / "nope"), "x86", tmp_path)


def test_lab_fetch_names_the_kernel_its_modules_and_what_it_cannot_run(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tracekit.cli import app

    image = tmp_path / "vmlinuz-6.1.0-50-cloud-arm64"
    image.write_bytes(b"")
    modules = (("virtio", tmp_path / "virtio.ko"), ("virtio_pci", tmp_path / "virtio_pci.ko"))
    bookworm = kernels.LabKernel("debian:bookworm", "arm64", "6.1.0-50-cloud-arm64", image, None, modules, None,
                                 "debian bookworm linux-image-6.1.0-50-cloud-arm64 6.1.176-1", "bookworm")  # fmt: skip
    asked = []
    monkeypatch.setattr(kernels, "resolve_kernel", lambda spec, arch, cache, refresh=False: asked.append(
        (spec, arch, refresh)) or bookworm)  # fmt: skip
    monkeypatch.setattr(fetch, "fetch_userland", lambda arch, cache: tmp_path / "userland")
    result = CliRunner().invoke(app, ["lab", "fetch", "arm64", "--kernel", "debian:bookworm", "--refresh"])
    assert result.exit_code == 0, result.output
    assert asked == [("debian:bookworm", "arm64", True)]
    lines = result.output.splitlines()
    assert lines[0].startswith("kernel 6.1.0-50-cloud-arm64 (debian bookworm linux-image-6.1.0-50-cloud-arm64")
    assert "modules loaded in the guest: virtio, virtio_pci" in lines
    refused = [line for line in lines if line.startswith("not applicable on 6.1.0-50-cloud-arm64: ")]
    assert "eager-enable" in refused[0] and "lazy" not in result.output and "arrived in 6.5" in refused[0]


def test_an_update_that_fetched_no_list_is_an_error_and_is_tried_again(tmp_path, monkeypatch):
    """apt-get update may exit 0 with warnings when the mirror is unreachable: the missing lists say so, and no
    marker is left that would skip the next update."""
    apt = fetch.PrivateApt.for_suite(tmp_path, "bookworm")
    apt._mirror = "http://mirror.invalid/debian"
    calls = []
    monkeypatch.setattr(fetch, "run_tool", lambda argv, what, env=None, timeout=900: calls.append(argv) or "")
    for _ in range(2):
        with pytest.raises(LabError, match="cannot read the Debian bookworm package lists from http://mirror.invalid"):
            apt.update()
    assert calls == [["apt-get", "update", "--error-on=any"]] * 2 and not (apt.root / ".updated").exists()
