"""Fetch and cache what a lab machine boots: Debian packages through a private apt, userlands, wheels.

Everything lives under :func:`cache_dir` (``$TRACEKIT_LAB_CACHE``, else ``~/.cache/tracekit/lab``).
:class:`PrivateApt` runs apt for one Debian suite with its own configuration and state
(``CACHE/apt-SUITE``) against the mirror of the host's apt sources (:mod:`tracekit.lab.aptsources`); the
host's apt is never modified. :func:`fetch_userland` extracts python3 + busybox with mmdebstrap;
:func:`fetch_recorder_userland` adds bcc, the kernel's headers and the host's pyarrow wheel. An entry is
complete once its ``.complete`` marker exists; concurrent processes take turns (:func:`cache_lock`).
Failures raise :class:`tracekit.errors.LabError` or ``MissingCapability`` with one line naming the fix.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, version as installed
from pathlib import Path

from tracekit.errors import LabError, MissingCapability
from tracekit.lab.aptsources import MIRROR_ENV, debian_mirror

__all__ = [
    "cache_dir",
    "require_tool",
    "run_tool",
    "cache_lock",
    "check_disk",
    "PrivateApt",
    "fetch_userland",
    "fetch_recorder_userland",
    "fetch_wheel",
    "select_wheel",
    "header_packages",
    "RECORDER_PACKAGES",
    "WHEEL_PLATFORM",
    "DEB_ARCH",
    "QEMU_BINARY",
    "QEMU_PACKAGE",
    "SUITE",
]

SUITE = "trixie"
#: Suites whose Release files the mirror serves past their Valid-Until date.
_UNDATED_SUITES = ("forky", "sid", "unstable", "experimental")
_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
#: Lab architecture -> Debian architecture.
DEB_ARCH = {"arm64": "arm64", "x86": "amd64"}
QEMU_BINARY = {"arm64": "qemu-system-aarch64", "x86": "qemu-system-x86_64"}
QEMU_PACKAGE = {"arm64": "qemu-system-arm", "x86": "qemu-system-x86"}
#: Free space a first fetch needs (two kernels, two userlands, apt lists, initramfs images).
_NEEDED_BYTES = 1536 << 20
_USERLAND = "python3-minimal,libpython3-stdlib,busybox-static"
#: The recorder userland: what the ``tracekit`` CLI imports (bcc with libbcc/LLVM, numpy, pandas, typer) plus busybox.
RECORDER_PACKAGES = ("python3", "python3-numpy", "python3-pandas", "python3-typer", "python3-bpfcc", "busybox-static")
#: Lab architecture -> manylinux platform tag of the wheels unpacked into the recorder userland.
WHEEL_PLATFORM = {"arm64": "manylinux_2_28_aarch64", "x86": "manylinux_2_28_x86_64"}
#: trixie's Python (the ABI tag of those wheels).
GUEST_PYTHON = "3.13"
#: Free space the recorder userland needs (LLVM, clang, kernel headers, pyarrow: about 500 MB unpacked).
_RECORDER_BYTES = 1024 << 20
#: Alternatives a maintainer script would set (``--variant=extract`` runs none): link -> target, under usr/lib/TRIPLET.
_ALTERNATIVES = {"libblas.so.3": "blas/libblas.so.3", "liblapack.so.3": "lapack/liblapack.so.3"}
_TRIPLET = {"arm64": "aarch64-linux-gnu", "amd64": "x86_64-linux-gnu"}


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


def run_tool(argv: list[str], what: str, env: dict | None = None, timeout: int = 900) -> str:
    """Run ``argv``; its stdout, or LabError naming ``what`` with the last line of its stderr."""
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

    def __init__(self, root: Path, suite: str = SUITE, mirror: str | None = None):
        self.root = root
        self.suite = suite
        self._mirror = mirror
        self.config = root / "apt.conf"

    @classmethod
    def for_suite(cls, cache: Path, suite: str = SUITE) -> "PrivateApt":
        """The private apt of Debian ``suite`` in the lab cache (``CACHE/apt-SUITE``)."""
        return cls(cache / f"apt-{suite}", suite)

    @property
    def mirror(self) -> str:
        if self._mirror is None:
            self._mirror = debian_mirror()
        return self._mirror

    def sources_line(self) -> str:
        arches = ",".join(sorted(set(DEB_ARCH.values())))
        return f"deb [arch={arches} signed-by={_KEYRING}] {self.mirror} {self.suite} main\n"

    def packages_file(self, deb_arch: str) -> Path:
        """The downloaded ``Packages`` list of ``deb_arch`` (LabError when ``update`` did not fetch one)."""
        found = sorted((self.root / "state" / "lists").glob(f"*_dists_{self.suite}_main_binary-{deb_arch}_Packages"))
        if not found:
            raise LabError(f"no {deb_arch} package list of Debian {self.suite} in {self.root}; delete it to fetch again")
        return found[0]

    def _env(self) -> dict:
        return {**os.environ, "APT_CONFIG": str(self.config), "DEBIAN_FRONTEND": "noninteractive"}

    def setup(self) -> None:
        for sub in ("etc/apt.conf.d", "etc/preferences.d", "etc/sources.list.d", "state/lists/partial",
                    "cache/archives/partial", "debs"):  # fmt: skip
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "state" / "status").touch()
        arches = sorted(set(DEB_ARCH.values()))
        (self.root / "etc" / "sources.list").write_text(self.sources_line())
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
                    # forky and sid Release files on the mirror are often past their Valid-Until date
                    *(['Acquire::Check-Valid-Until "false";'] if self.suite in _UNDATED_SUITES else []),
                    "",
                ]
            )
        )

    def update(self, force: bool = False) -> None:
        """``apt-get update`` once (again when the mirror changed, or with ``force``)."""
        marker = self.root / ".updated"
        if not force and marker.exists() and marker.read_text() == self.sources_line():
            return
        self.setup()
        marker.unlink(missing_ok=True)
        try:  # --error-on=any: a list that could not be fetched is an error, not a warning with exit status 0
            run_tool(["apt-get", "update", "--error-on=any"],
                     f"apt-get update of Debian {self.suite} (private state in {self.root})", self._env())  # fmt: skip
            for deb_arch in sorted(set(DEB_ARCH.values())):
                self.packages_file(deb_arch)
        except LabError as error:
            fetch_failed = [line for line in (error.detail or "").splitlines() if "Failed to fetch" in line]
            raise LabError(
                f"cannot read the Debian {self.suite} package lists from {self.mirror}: check the route to the mirror "
                f"or set {MIRROR_ENV} ({fetch_failed[0] if fetch_failed else error})",
                detail=error.detail,
            ) from None
        marker.write_text(self.sources_line())

    def depends(self, package: str) -> list[str]:
        out = run_tool(["apt-cache", "depends", package], f"apt-cache depends {package}", self._env())
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


@contextlib.contextmanager
def cache_lock(cache: Path):
    """Serialise fetches of concurrent tracekit processes sharing one cache (an flock on CACHE/.lock)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_userland(arch: str, cache: Path) -> Path:
    """The extracted ``arch`` userland root (python3 + busybox), built once with mmdebstrap."""
    with cache_lock(cache):
        return _fetch_userland(arch, cache)


def _fetch_userland(arch: str, cache: Path) -> Path:
    deb_arch = DEB_ARCH[arch]
    target = cache / f"userland-{SUITE}-{deb_arch}"
    if (target / ".complete").exists():
        return target / "root"
    require_tool("mmdebstrap", "mmdebstrap")
    check_disk(cache)
    root = _extract(target, deb_arch, _USERLAND.split(","))
    (target / ".complete").write_text("ok\n")
    return root


def _extract(target: Path, deb_arch: str, packages: list[str] | tuple[str, ...]) -> Path:
    """``mmdebstrap --variant=extract`` of ``packages`` (and their dependencies) into TARGET/root."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    root = target / "root"
    argv = [
        "mmdebstrap",
        "--variant=extract",
        f"--architectures={deb_arch}",
        f"--include={','.join(packages)}",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        f"--keyring={_KEYRING}",
        SUITE,
        str(root),
        debian_mirror(),
    ]
    run_tool(argv, f"mmdebstrap of the {SUITE} {deb_arch} userland ({', '.join(packages)})")
    for link, dest in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")):
        if not (root / link).exists():
            (root / link).symlink_to(dest)
    if deb_arch == "amd64" and not (root / "lib64").exists():
        (root / "lib64").symlink_to("usr/lib64")
    for sub in ("proc", "sys", "dev", "tmp", "run", "opt"):
        (root / sub).mkdir(exist_ok=True)
    return root


def header_packages(release: str, depends: list[str]) -> list[str]:
    """The headers of kernel ``release`` and the packages they need to be complete (the ``-common``
    sources and kbuild), from ``depends`` = ``apt-cache depends linux-headers-RELEASE``; the toolchain
    dependencies (gcc) are left out: bcc compiles with its own clang."""
    wanted = [f"linux-headers-{release}"]
    for name in depends:
        name = name.strip("<>").split(":")[0]
        if (name.startswith("linux-headers-") and name.endswith("-common")) or name.startswith("linux-kbuild-"):
            if name not in wanted:
                wanted.append(name)
    return wanted


def select_wheel(folder: Path, project: str, python: str, platform_tag: str) -> Path | None:
    """The newest ``project`` wheel in ``folder`` for CPython ``python`` (``3.13``) on ``platform_tag``
    (a ``manylinux_2_28_aarch64`` wheel also serves where ``manylinux_2_17`` is asked, not the reverse)."""
    tag = "cp" + python.replace(".", "")
    arch = platform_tag.split("_", 3)[-1]
    wanted_glibc = _glibc(platform_tag)
    best: tuple[tuple, Path] | None = None
    for path in folder.glob(f"{project}-*.whl") if folder.is_dir() else ():
        parts = path.name[: -len(".whl")].split("-")
        if len(parts) < 5:
            continue
        version, py_tag, abi_tag, plat = parts[1], parts[-3], parts[-2], parts[-1]
        if py_tag != tag or abi_tag not in (tag, "abi3"):
            continue
        platforms = plat.split(".")
        fits = [p for p in platforms if p.endswith("_" + arch) and p.startswith("manylinux") and _glibc(p) <= wanted_glibc]
        if not fits:
            continue
        key = (tuple(int(x) if x.isdigit() else 0 for x in version.split(".")), path.name)
        if best is None or key > best[0]:
            best = (key, path)
    return best[1] if best else None


def _glibc(platform_tag: str) -> tuple[int, int]:
    """``manylinux_2_28_aarch64`` -> (2, 28); ``manylinux2014_x86_64`` -> (2, 17)."""
    parts = platform_tag.split("_")
    if parts[0] == "manylinux2014":
        return (2, 17)
    if len(parts) >= 3 and parts[1].isdigit() and parts[2].isdigit():
        return (int(parts[1]), int(parts[2]))
    return (99, 99)


def fetch_wheel(arch: str, cache: Path, project: str = "pyarrow", version: str | None = None) -> Path:
    """The ``project`` wheel (``version``, default the host's own) for the guest's Python, downloaded once
    from PyPI with ``pip download --platform`` into CACHE/wheels."""
    folder = cache / "wheels"
    platform_tag = WHEEL_PLATFORM[arch]
    found = select_wheel(folder, project, GUEST_PYTHON, platform_tag)
    if version is None:
        try:
            version = installed(project)
        except PackageNotFoundError:
            version = None
    if found is not None and (version is None or found.name.split("-")[1] == version):
        return found
    folder.mkdir(parents=True, exist_ok=True)
    spec = f"{project}=={version}" if version else project
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform", platform_tag,
            "--python-version", GUEST_PYTHON, "--implementation", "cp", "--dest", str(folder), spec]  # fmt: skip
    try:
        run_tool(argv, f"pip download of the {spec} wheel for Python {GUEST_PYTHON} on {platform_tag}")
    except LabError as error:
        raise LabError(f"cannot download the {spec} wheel from PyPI for the lab guest ({error}); "
                       f"place it in {folder} by hand", detail=error.detail) from None  # fmt: skip
    found = select_wheel(folder, project, GUEST_PYTHON, platform_tag)
    if found is None:
        raise LabError(f"pip downloaded no {project} wheel for Python {GUEST_PYTHON} on {platform_tag} into {folder}")
    return found


def fetch_recorder_userland(arch: str, cache: Path, release: str, suite: str | None = None) -> Path:
    """The bigger userland that runs ``tracekit record`` in the guest of kernel ``release``: the
    :data:`RECORDER_PACKAGES`, the kernel headers of ``release`` (linked as ``/lib/modules/RELEASE/build``),
    the BLAS/LAPACK alternatives numpy loads, and the host's pyarrow version unpacked from its
    manylinux wheel into ``/usr/local/lib/python3.13/dist-packages`` (on the guest Python's path)."""
    with cache_lock(cache):
        return _fetch_recorder_userland(arch, cache, release, suite or SUITE)


def _fetch_recorder_userland(arch: str, cache: Path, release: str, suite: str) -> Path:
    deb_arch = DEB_ARCH[arch]
    target = cache / f"userland-recorder-{SUITE}-{release}"
    if (target / ".complete").exists():
        return target / "root"
    require_tool("mmdebstrap", "mmdebstrap")
    check_disk(cache, _RECORDER_BYTES)
    wheel = fetch_wheel(arch, cache)
    apt = PrivateApt.for_suite(cache, suite)  # the headers come from the kernel's own suite
    apt.update()
    headers = header_packages(release, apt.depends(f"linux-headers-{release}:{deb_arch}"))
    root = _extract(target, deb_arch, RECORDER_PACKAGES)
    for package in headers:
        qualified = package if package.endswith("-common") else f"{package}:{deb_arch}"
        deb = apt.download(qualified)
        run_tool(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}")
    assemble_recorder_root(root, deb_arch, release, wheel)
    (target / ".complete").write_text(f"{wheel.name}\n" + "".join(f"{p}\n" for p in headers))
    return root


def assemble_recorder_root(root: Path, deb_arch: str, release: str, wheel: Path) -> None:
    """What dpkg's maintainer scripts and pip would have done in an extracted root: the
    ``/lib/modules/RELEASE/build`` link to the unpacked headers, the BLAS/LAPACK alternatives, and
    ``wheel`` unpacked into ``/usr/local/lib/python3.13/dist-packages``. LabError when the headers of
    ``release`` are not there."""
    if not (root / "usr" / "src" / f"linux-headers-{release}").is_dir():
        raise LabError(f"the headers package of {release} did not unpack to /usr/src/linux-headers-{release}")
    build = root / "usr" / "lib" / "modules" / release / "build"
    if not build.is_symlink():
        build.parent.mkdir(parents=True, exist_ok=True)
        build.symlink_to(f"../../../src/linux-headers-{release}")
    libdir = root / "usr" / "lib" / _TRIPLET[deb_arch]
    for link, dest in _ALTERNATIVES.items():
        if (libdir / dest).exists() and not (libdir / link).exists():
            (libdir / link).symlink_to(dest)
    site = root / "usr" / "local" / "lib" / f"python{GUEST_PYTHON}" / "dist-packages"
    site.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    except zipfile.BadZipFile:
        wheel.unlink(missing_ok=True)
        raise LabError(f"{wheel.name} is not a valid wheel (deleted; the next run downloads it again)") from None
