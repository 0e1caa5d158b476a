"""Fetch and cache what a lab machine boots: a Debian cloud kernel and a minimal userland.

Contract
--------
Everything lives under :func:`cache_dir` (``$TRACEKIT_LAB_CACHE``, else ``~/.cache/tracekit/lab``).
Packages come from Debian ``trixie`` through apt with a PRIVATE configuration and state directory
(``CACHE/apt``): the host's apt sources, lists and keyrings are never modified (the Debian archive
keyring is only read). Kernels are downloaded as ``.deb`` and unpacked with ``dpkg-deb -x``, never
installed; xz-compressed modules are decompressed for busybox ``insmod``. The userland is
``mmdebstrap --variant=extract`` of python3 + busybox-static for the guest architecture. Each cache
entry is complete only when its ``.complete`` marker exists, so an interrupted fetch is redone;
concurrent processes sharing the cache take turns (``flock`` on ``CACHE/.lock``).

:func:`require_tool` raises :class:`tracekit.errors.MissingCapability` naming the package to
install; fetch failures (no route to the registry, too little disk) raise
:class:`tracekit.errors.LabError` with one line naming what to fix.
"""

from __future__ import annotations

import contextlib
import fcntl
import lzma
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tracekit.errors import LabError, MissingCapability

__all__ = [
    "cache_dir",
    "require_tool",
    "check_disk",
    "PrivateApt",
    "KernelFiles",
    "fetch_kernel",
    "fetch_userland",
    "DEB_ARCH",
    "QEMU_BINARY",
    "QEMU_PACKAGE",
    "SUITE",
    "MIRROR",
]

SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
#: Lab architecture -> Debian architecture.
DEB_ARCH = {"arm64": "arm64", "x86": "amd64"}
QEMU_BINARY = {"arm64": "qemu-system-aarch64", "x86": "qemu-system-x86_64"}
QEMU_PACKAGE = {"arm64": "qemu-system-arm", "x86": "qemu-system-x86"}
#: Free space a first fetch needs (two kernels, two userlands, apt lists, initramfs images).
_NEEDED_BYTES = 1536 << 20
_USERLAND = "python3-minimal,libpython3-stdlib,busybox-static"
_KVM_MODULES = ("irqbypass", "kvm", "kvm-amd", "kvm-intel")


def cache_dir() -> Path:
    """The lab cache directory (not created here)."""
    override = os.environ.get("TRACEKIT_LAB_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "tracekit" / "lab"


def require_tool(name: str, package: str) -> str:
    """Path of executable ``name``; MissingCapability naming the Debian ``package`` otherwise."""
    path = shutil.which(name)
    if path is None:
        raise MissingCapability(f"{name} is not installed (apt-get install {package})")
    return path


def check_disk(directory: Path, needed: int = _NEEDED_BYTES) -> None:
    """LabError when the file system of ``directory`` has less than ``needed`` bytes free."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise LabError(
            f"only {free >> 20} MiB free for the lab cache at {directory}; free {(needed - free) >> 20} MiB more "
            "or point TRACEKIT_LAB_CACHE elsewhere"
        )


def _run(argv: list[str], what: str, env: dict | None = None, timeout: int = 900) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LabError(f"{what} did not finish within {timeout} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise LabError(f"{what} failed: {last}", detail=done.stderr)
    return done.stdout


class PrivateApt:
    """apt-get/apt-cache with a configuration and state directory of their own under the cache."""

    def __init__(self, root: Path):
        self.root = root
        self.config = root / "apt.conf"

    def _env(self) -> dict:
        return {**os.environ, "APT_CONFIG": str(self.config), "DEBIAN_FRONTEND": "noninteractive"}

    def setup(self) -> None:
        for sub in ("etc/apt.conf.d", "etc/preferences.d", "etc/sources.list.d", "state/lists/partial",
                    "cache/archives/partial", "debs"):  # fmt: skip
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "state" / "status").touch()
        arches = sorted(set(DEB_ARCH.values()))
        (self.root / "etc" / "sources.list").write_text(
            f"deb [arch={','.join(arches)} signed-by={_KEYRING}] {MIRROR} {SUITE} main\n"
        )
        r = self.root
        self.config.write_text(
            "\n".join(
                [
                    f'Dir::Etc "{r}/etc";',
                    f'Dir::Etc::sourcelist "{r}/etc/sources.list";',
                    f'Dir::Etc::sourceparts "{r}/etc/sources.list.d";',
                    f'Dir::Etc::parts "{r}/etc/apt.conf.d";',
                    f'Dir::Etc::preferencesparts "{r}/etc/preferences.d";',
                    f'Dir::State "{r}/state";',
                    f'Dir::State::status "{r}/state/status";',
                    f'Dir::Cache "{r}/cache";',
                    'APT::Architecture "amd64";',
                    "APT::Architectures { " + " ".join(f'"{a}";' for a in arches) + " };",
                    'Acquire::Languages "none";',
                    'APT::Sandbox::User "root";',
                    "",
                ]
            )
        )

    def update(self) -> None:
        marker = self.root / ".updated"
        if marker.exists():
            return
        self.setup()
        try:
            _run(["apt-get", "update"], f"apt-get update of Debian {SUITE} (private state in {self.root})", self._env())
        except LabError as error:
            raise LabError(
                f"cannot read the Debian {SUITE} package lists from {MIRROR}: check the route to the mirror ({error})",
                detail=error.detail,
            ) from None
        marker.touch()

    def depends(self, package: str) -> list[str]:
        out = _run(["apt-cache", "depends", package], f"apt-cache depends {package}", self._env())
        return [line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("Depends:")]

    def download(self, package: str) -> Path:
        """Download ``package`` (``name:arch``) into ``ROOT/debs``; returns the .deb path."""
        folder = self.root / "debs"
        before = set(folder.iterdir())
        try:
            subprocess.run(["apt-get", "download", package], cwd=folder, env=self._env(), check=True,
                           capture_output=True, text=True, timeout=900)  # fmt: skip
        except subprocess.CalledProcessError as error:
            last = (error.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise LabError(f"apt-get download {package} failed: {last}", detail=error.stderr) from None
        except subprocess.TimeoutExpired:
            raise LabError(f"apt-get download {package} did not finish within 900 s") from None
        return _newest_deb(folder, before, package)


def _newest_deb(folder: Path, before: set[Path], package: str) -> Path:
    name = package.split(":")[0]
    candidates = [p for p in folder.iterdir() if p.name.startswith(name + "_") and p.suffix == ".deb"]
    if not candidates:
        raise LabError(f"apt-get download {package} produced no .deb file")
    fresh = [p for p in candidates if p not in before]
    return max(fresh or candidates, key=lambda p: p.stat().st_mtime)


@dataclass(frozen=True)
class KernelFiles:
    """An unpacked kernel: the boot image, its config, and decompressed KVM modules (x86)."""

    release: str
    image: Path
    config: Path
    modules: tuple[Path, ...]


@contextlib.contextmanager
def _cache_lock(cache: Path):
    """Serialise fetches of concurrent tracekit processes sharing one cache (an flock on CACHE/.lock)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_kernel(arch: str, cache: Path) -> KernelFiles:
    """Download (once) and unpack Debian trixie's cloud kernel for ``arch``."""
    with _cache_lock(cache):
        return _fetch_kernel(arch, cache)


def _fetch_kernel(arch: str, cache: Path) -> KernelFiles:
    deb_arch = DEB_ARCH[arch]
    apt = PrivateApt(cache / "apt")
    meta = f"linux-image-cloud-{deb_arch}:{deb_arch}"
    existing = sorted(cache.glob(f"kernel-*-cloud-{deb_arch}/.complete"))
    if existing:
        return _kernel_files(existing[-1].parent)
    check_disk(cache)
    apt.update()
    versioned = [d for d in apt.depends(meta) if d.startswith("linux-image-")]
    if not versioned:
        raise LabError(f"the Debian {SUITE} metapackage {meta} names no kernel package")
    package = versioned[0].split(":")[0]
    deb = apt.download(f"{package}:{deb_arch}")
    target = cache / f"kernel-{package[len('linux-image-'):]}"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(deb), str(target / "root")], f"dpkg-deb -x {deb.name}")
    _decompress_kvm_modules(target)
    (target / ".complete").write_text(deb.name + "\n")
    return _kernel_files(target)


def _decompress_kvm_modules(target: Path) -> None:
    out = target / "modules"
    out.mkdir(exist_ok=True)
    found = [*(target / "root" / "lib" / "modules").glob("*/kernel/**/*.ko*"),
             *(target / "root" / "usr" / "lib" / "modules").glob("*/kernel/**/*.ko*")]  # fmt: skip
    for path in found:
        stem = path.name.split(".ko")[0]
        if stem not in _KVM_MODULES:
            continue
        data = path.read_bytes()
        if path.name.endswith(".xz"):
            data = lzma.decompress(data)
        elif path.name.endswith(".zst"):
            raise LabError(f"{path.name} is zstd-compressed; decompress it with zstd and pass the directory")
        (out / f"{stem}.ko").write_bytes(data)


def _kernel_files(target: Path) -> KernelFiles:
    boot = target / "root" / "boot"
    images = sorted(boot.glob("vmlinuz-*"))
    configs = sorted(boot.glob("config-*"))
    if not images:
        raise LabError(f"no vmlinuz in the unpacked kernel at {target}; delete it to fetch again")
    release = images[0].name[len("vmlinuz-") :]
    modules = tuple(sorted((target / "modules").glob("*.ko"))) if (target / "modules").is_dir() else ()
    return KernelFiles(release, images[0], configs[0] if configs else boot / "missing-config", modules)


def fetch_userland(arch: str, cache: Path) -> Path:
    """The extracted ``arch`` userland root (python3 + busybox), built once with mmdebstrap."""
    with _cache_lock(cache):
        return _fetch_userland(arch, cache)


def _fetch_userland(arch: str, cache: Path) -> Path:
    deb_arch = DEB_ARCH[arch]
    target = cache / f"userland-{SUITE}-{deb_arch}"
    if (target / ".complete").exists():
        return target / "root"
    require_tool("mmdebstrap", "mmdebstrap")
    check_disk(cache)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    root = target / "root"
    argv = [
        "mmdebstrap",
        "--variant=extract",
        f"--architectures={deb_arch}",
        f"--include={_USERLAND}",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        f"--keyring={_KEYRING}",
        SUITE,
        str(root),
        MIRROR,
    ]
    _run(argv, f"mmdebstrap of the {SUITE} {deb_arch} userland")
    for link, dest in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")):
        if not (root / link).exists():
            (root / link).symlink_to(dest)
    if deb_arch == "amd64" and not (root / "lib64").exists():
        (root / "lib64").symlink_to("usr/lib64")
    for sub in ("proc", "sys", "dev", "tmp", "run", "opt"):
        (root / sub).mkdir(exist_ok=True)
    (target / ".complete").write_text("ok\n")
    return root
