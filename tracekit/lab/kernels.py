"""Lab kernels by name: ``debian:CODENAME``, ``debian:VERSION`` or a path, resolved to a cached image.

:func:`resolve_kernel` returns a :class:`LabKernel` (boot image, config, release, version, the modules the
guest loads) from a Debian suite's ``linux-image-cloud-ARCH``, fetched once from the host's Debian mirror
through a private apt and reused without network. UsageError for a malformed spec, LabError for what the
mirror does not have.
"""

from __future__ import annotations

import gzip
import json
import lzma
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tracekit.errors import LabError, UsageError
from tracekit.lab import fetch
from tracekit.lab.aptsources import deb822_fields

__all__ = [
    "LabKernel",
    "KernelSpec",
    "KernelPackages",
    "SUITES",
    "VERSION_SEARCH",
    "DEFAULT_SPEC",
    "parse_spec",
    "resolve_kernel",
    "parse_packages",
    "kernel_packages",
    "guest_modules",
    "modinfo",
    "image_release",
    "version_of",
]

DEFAULT_SPEC = "debian:trixie"
#: The suites ``debian:NAME`` accepts.
SUITES = ("bullseye", "bookworm", "bookworm-backports", "trixie", "trixie-backports", "forky", "sid")
#: Where ``debian:VERSION`` looks, in order: released suites before backports before unstable.
VERSION_SEARCH = ("trixie", "bookworm", "bullseye", "trixie-backports", "bookworm-backports", "sid")
#: Modules the guest needs when the kernel builds them as modules: the result port (virtio console on
#: PCI) on both architectures, KVM on x86 (the lab CPU is AMD: SVM/NPT).
NEEDED_MODULES = {"arm64": ("virtio_pci", "virtio_console"), "x86": ("virtio_pci", "virtio_console", "kvm_amd")}


@dataclass(frozen=True)
class KernelSpec:
    """A parsed ``--kernel``: ``kind`` is ``suite``, ``version`` or ``path``."""

    kind: str
    value: str

    def __str__(self) -> str:
        return self.value if self.kind == "path" else f"debian:{self.value}"


@dataclass(frozen=True)
class LabKernel:
    """A kernel ready to boot (:func:`resolve_kernel`). ``modules`` are (name, decompressed .ko) in load
    order; ``kvm_params`` names the ``kvm`` module's parameters (None when KVM is built in or unknown)."""

    spec: str
    arch: str
    release: str
    image: Path
    config: Path | None
    modules: tuple[tuple[str, Path], ...] = ()
    kvm_params: tuple[str, ...] | None = None
    source: str = ""
    suite: str | None = None

    @property
    def version(self) -> tuple[int, int]:
        return version_of(self.release)

    def as_dict(self) -> dict:
        return {"spec": self.spec, "arch": self.arch, "release": self.release, "image": str(self.image),
                "config": str(self.config) if self.config else None, "modules": [name for name, _ in self.modules],
                "source": self.source}  # fmt: skip


def parse_spec(text: str | Path | None) -> KernelSpec:
    """``debian:trixie`` / ``debian:6.1`` / a path (UsageError for an unknown name)."""
    if text is None or str(text) == "":
        return parse_spec(DEFAULT_SPEC)
    text = str(text)
    if not text.startswith("debian:"):
        return KernelSpec("path", text)
    name = text[len("debian:") :].strip().lower()
    if name in SUITES:
        return KernelSpec("suite", name)
    if re.fullmatch(r"\d+\.\d+(\.\d+)?", name):
        return KernelSpec("version", name)
    raise UsageError(f"unknown kernel {text!r}; choose debian:{'|'.join(SUITES)}, debian:VERSION (e.g. debian:6.1) "
                     "or the path of a kernel image")  # fmt: skip


def version_of(release: str) -> tuple[int, int]:
    """``6.1.0-41-cloud-arm64`` -> (6, 1); (0, 0) when the text holds no version."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


# ---------------------------------------------------------------- package metadata (pure)

_KERNEL_STANZA = re.compile(r"^Package: linux-(?:image|binary|modules)-[^\n]*$", re.M)


def parse_packages(text: str) -> dict[str, dict[str, str]]:
    """The kernel stanzas (``linux-image-*``, ``linux-binary-*``, ``linux-modules-*``) of a ``Packages`` list:
    package name -> fields (continuation lines joined). The last stanza of a name wins."""
    stanzas: dict[str, dict[str, str]] = {}
    for match in _KERNEL_STANZA.finditer(text):
        end = text.find("\n\n", match.start())
        fields = deb822_fields(text[match.start() : end if end >= 0 else len(text)])
        stanzas[fields["Package"]] = fields
    return stanzas


def _depends(fields: dict[str, str]) -> list[str]:
    """Package names of ``Depends`` / ``Pre-Depends`` (first of each alternative, without versions)."""
    names = []
    for key in ("Pre-Depends", "Depends"):
        for item in fields.get(key, "").split(","):
            name = item.split("|")[0].split("(")[0].split(":")[0].strip()
            if name:
                names.append(name)
    return names


def _natural(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


@dataclass(frozen=True)
class KernelPackages:
    """What to download for one kernel: ``packages`` (the image package first), its ``release`` and Debian ``version``."""

    release: str
    version: str
    packages: tuple[str, ...]


def kernel_packages(stanzas: dict[str, dict[str, str]], deb_arch: str, spec: KernelSpec, suite: str) -> KernelPackages | None:
    """The cloud kernel ``spec`` names among ``stanzas`` (from :func:`parse_packages`), or None."""
    if spec.kind == "suite":
        meta = stanzas.get(f"linux-image-cloud-{deb_arch}")
        if meta is None:
            return None
        images = [n for n in _depends(meta) if n.startswith("linux-image-") and n in stanzas]
        if not images:
            raise LabError(f"the Debian {suite} metapackage linux-image-cloud-{deb_arch} names no kernel package")
        name = images[0]
    else:
        pattern = re.compile(rf"linux-image-({re.escape(spec.value)}(?![0-9])[^\s]*-cloud-{deb_arch})")
        found = [m.group(1) for n in stanzas if (m := pattern.fullmatch(n))]
        if not found:
            return None
        name = f"linux-image-{max(found, key=_natural)}"
    release = name[len("linux-image-") :]
    fields = stanzas[name]
    split = (f"linux-binary-{release}", f"linux-modules-{release}", f"linux-base-{release}")
    depends = _depends(fields)
    parts = [n for n in split if n in depends]  # 7.x: the image, the modules, the config and modules.builtin
    packages = tuple(parts) if f"linux-binary-{release}" in parts else (name,)
    return KernelPackages(release, fields.get("Version", ""), packages)


# ---------------------------------------------------------------- modules (pure)


def modinfo(data: bytes) -> dict[str, list[str]]:
    """The ``.modinfo`` section of a little-endian ELF64 module: key -> values (``depends``, ``parm``, ...)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise LabError("not a little-endian ELF64 kernel module")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = sections[shstrndx][4]
    info: dict[str, list[str]] = {}
    for name, _type, _flags, _addr, offset, size in sections:
        label = data[names_at + name : data.index(b"\0", names_at + name)]
        if label != b".modinfo":
            continue
        for entry in data[offset : offset + size].split(b"\0"):
            if b"=" in entry:
                key, value = entry.decode(errors="replace").split("=", 1)
                info.setdefault(key, []).append(value)
    return info


def _module_name(path: str) -> str:
    return Path(path).name.split(".ko")[0].replace("-", "_")


def guest_modules(moddir: Path, needed: tuple[str, ...], read=None) -> tuple[list[str], dict[str, Path]]:
    """The modules of ``needed`` that the kernel at ``moddir`` (``lib/modules/RELEASE``) builds as modules,
    with their dependencies (each module's ``depends``), in load order; and name -> file. Built-in ones
    (``modules.builtin``) are left out; a needed module that is neither raises LabError."""
    builtin_file = moddir / "modules.builtin"
    builtin = {_module_name(line) for line in builtin_file.read_text().split()} if builtin_file.exists() else set()
    files = {_module_name(p.name): p for p in moddir.rglob("*.ko*") if re.search(r"\.ko(\.xz|\.zst|\.gz)?$", p.name)}
    read = read or _read_module
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order or name in builtin:
            return
        if name not in files:
            raise LabError(f"module {name} (needed by {' <- '.join(chain) or 'the lab guest'}) is neither built in nor "
                           f"a module of the kernel at {moddir}")  # fmt: skip
        if name in chain:
            raise LabError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
        for dep in modinfo(read(files[name])).get("depends", [""])[0].split(","):
            if dep:
                visit(dep.replace("-", "_"), chain + (name,))
        order.append(name)

    for name in needed:
        visit(name, ())
    return order, {name: files[name] for name in order}


def _read_module(path: Path) -> bytes:
    """A module file's bytes, decompressed (``.ko.xz``, ``.ko.gz``, ``.ko.zst`` with the zstd tool)."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        zstd = fetch.require_tool("zstd", "zstd")
        return subprocess.run([zstd, "-dc"], input=data, capture_output=True, check=True).stdout
    return data


# ---------------------------------------------------------------- images


def image_release(image: Path) -> str:
    """The release a kernel image announces (``Linux version X ...``): an x86 bzImage's header string, or the
    banner inside an arm64 ``Image`` (gzip-compressed or not). Empty when none is found."""
    data = image.read_bytes()
    if data[0x202:0x206] == b"HdrS":  # x86 boot protocol: kernel_version at 0x20e, offset from 0x200
        offset, = struct.unpack_from("<H", data, 0x20E)
        text = data[offset + 0x200 : offset + 0x300].split(b"\0")[0].decode(errors="replace")
        return text.split()[0] if text.strip() else ""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            return ""
    match = re.search(rb"Linux version (\S+) \(", data)
    return match.group(1).decode(errors="replace") if match else ""


# ---------------------------------------------------------------- resolution


def resolve_kernel(spec: str | Path | None, arch: str, cache: Path | None = None, modules: Path | None = None,
                   refresh: bool = False) -> LabKernel:  # fmt: skip
    """The kernel ``spec`` names for lab ``arch``, fetched and unpacked once;
    ``refresh`` reads the suite's package lists again and takes the kernel they name now.
    ``modules``: for a path spec, a directory of that kernel's ``.ko`` files; the needed ones found there are
    loaded with their dependencies, the others are taken to be built in.

    ``debian:trixie`` (the default), ``bullseye``, ``bookworm``, ``bookworm-backports``, ``trixie-backports``,
    ``forky`` and ``sid`` take the suite's ``linux-image-cloud-ARCH``; ``debian:6.1`` the newest cloud kernel of
    that version in the first of :data:`VERSION_SEARCH` that has one. Packages come from the host's Debian
    mirror (:mod:`tracekit.lab.aptsources`) through a private apt per suite (:class:`tracekit.lab.fetch.PrivateApt`)
    and are unpacked once into ``CACHE/kernels/``. From 7.x ``linux-image-X`` is a stub: the image is in
    ``linux-binary-X``, the modules in ``linux-modules-X``, the config and ``modules.builtin`` in
    ``linux-base-X``.
    """
    parsed = parse_spec(spec)
    cache = cache or fetch.cache_dir()
    if parsed.kind == "path":
        return _path_kernel(parsed, arch, modules)
    with fetch.cache_lock(cache):
        return _debian_kernel(parsed, arch, cache, refresh)


def _path_kernel(spec: KernelSpec, arch: str, modules: Path | None) -> LabKernel:
    image = Path(spec.value).expanduser()
    if not image.is_file():
        raise UsageError(f"kernel image {image} does not exist")
    if modules is not None and not modules.is_dir():
        raise UsageError(f"module directory {modules} does not exist")
    release = image_release(image)
    order: tuple[tuple[str, Path], ...] = ()
    if modules is not None:
        present = {_module_name(p.name) for p in modules.rglob("*.ko*")}  # the others are taken to be built in
        names, files = guest_modules(modules, tuple(m for m in NEEDED_MODULES[arch] if m in present))
        order = tuple((name, files[name]) for name in names)
    return LabKernel(str(image), arch, release, image, None, order, _kvm_params(order), str(image))


def _debian_kernel(spec: KernelSpec, arch: str, cache: Path, refresh: bool) -> LabKernel:
    deb_arch = fetch.DEB_ARCH[arch]
    record = cache / "kernels" / f"debian-{spec.value}-{deb_arch}.json"
    if record.exists() and not refresh:
        try:
            known = json.loads(record.read_text())
            return _unpacked(cache / "kernels" / known["dir"], str(spec), arch, known["source"], known["suite"])
        except (OSError, ValueError, KeyError, LabError):
            record.unlink(missing_ok=True)
    suites = (spec.value,) if spec.kind == "suite" else VERSION_SEARCH
    for suite in suites:
        apt = fetch.PrivateApt.for_suite(cache, suite)
        apt.update(force=refresh)
        stanzas = parse_packages(apt.packages_file(deb_arch).read_text(errors="replace"))
        chosen = kernel_packages(stanzas, deb_arch, spec, suite)
        if chosen is not None:
            break
    else:
        raise LabError(f"no Debian cloud kernel {spec.value} for {deb_arch} in {', '.join(suites)} on {apt.mirror}")
    fetch.check_disk(cache, 512 << 20)
    folder = f"{chosen.release}_{chosen.version}"
    target = cache / "kernels" / folder
    source = f"debian {suite} {' '.join(chosen.packages)} {chosen.version}"
    if not (target / ".complete").exists():
        _unpack(apt, chosen, deb_arch, target, arch)
    try:
        _unpacked(target, str(spec), arch, source, suite)
    except LabError:  # a damaged cache entry: unpacked again
        _unpack(apt, chosen, deb_arch, target, arch)
    record.write_text(json.dumps({"dir": folder, "source": source, "suite": suite, "release": chosen.release}) + "\n")
    return _unpacked(target, str(spec), arch, source, suite)


def _download(apt: fetch.PrivateApt, package: str) -> Path:
    """``apt-get download``; once more after a fresh ``update`` when the cached lists name a removed version."""
    try:
        return apt.download(package)
    except LabError:
        apt.update(force=True)
        return apt.download(package)


def _unpack(apt: fetch.PrivateApt, chosen: KernelPackages, deb_arch: str, target: Path, arch: str) -> None:
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    debs = [_download(apt, f"{package}:{deb_arch}") for package in chosen.packages]
    for deb in debs:
        fetch.run_tool(["dpkg-deb", "-x", str(deb), str(target / "root")], f"dpkg-deb -x {deb.name}")
    moddir = _moddir(target / "root", chosen.release)
    out = target / "modules"
    out.mkdir()
    names, files = guest_modules(moddir, NEEDED_MODULES[arch]) if moddir else ([], {})
    for name in names:
        (out / f"{name}.ko").write_bytes(_read_module(files[name]))
    meta = {"release": chosen.release, "version": chosen.version, "packages": list(chosen.packages), "modules": names}
    (target / "kernel.json").write_text(json.dumps(meta, indent=1) + "\n")
    (target / ".complete").write_text("".join(d.name + "\n" for d in debs))


def _moddir(root: Path, release: str) -> Path | None:
    for base in (root / "usr" / "lib" / "modules", root / "lib" / "modules"):
        if (base / release).is_dir():
            return base / release
    return None


def _unpacked(target: Path, spec: str, arch: str, source: str, suite: str) -> LabKernel:
    try:
        (target / ".complete").stat()
        meta = json.loads((target / "kernel.json").read_text())
        release, packages, names = meta["release"], meta["packages"], meta["modules"]
    except (OSError, ValueError, KeyError, TypeError):
        raise LabError(f"the unpacked kernel at {target} is incomplete or damaged; delete it to fetch again") from None
    root = target / "root"
    candidates = [root / "boot" / f"vmlinuz-{release}", root / "usr" / "lib" / "modules" / release / "vmlinuz"]
    image = next((p for p in candidates if p.is_file()), None)
    if image is None:
        raise LabError(f"no vmlinuz in the unpacked kernel at {target} ({', '.join(packages)}); delete it to "
                       "fetch again")  # fmt: skip
    configs = [root / "boot" / f"config-{release}", root / "usr" / "lib" / "modules" / release / "config"]
    config = next((p for p in configs if p.is_file()), None)
    modules = tuple((name, target / "modules" / f"{name}.ko") for name in names)
    return LabKernel(spec, arch, release, image, config, modules, _kvm_params(modules), source, suite)


def _kvm_params(modules: tuple[tuple[str, Path], ...]) -> tuple[str, ...] | None:
    """The parameter names of the ``kvm`` module among ``modules`` (None when it is not one of them)."""
    for name, path in modules:
        if name == "kvm":
            info = modinfo(path.read_bytes())
            return tuple(sorted({p.split(":", 1)[0] for p in info.get("parmtype", []) + info.get("parm", [])}))
    return None
