"""Build a minimal lab kernel from Debian's sources, cached by what went into it.

:func:`build` configures ``allnoconfig`` plus the lab's fragments (``kconfig/``) and the caller's,
checks every requested option survived ``olddefconfig``, applies the patches and cross-builds with
Debian's toolchain. A build lives in ``CACHE/kbuild/ARCH-VERSION-KEY`` where KEY hashes the source,
the fragments, the patches and the toolchain; a patched build starts from a copy of the unpatched
build of the same key, so ``make`` recompiles only what the patches touch. Failures raise
:class:`tracekit.errors.LabError` (or ``MissingCapability``) with one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from tracekit.errors import LabError, MissingCapability, UsageError
from tracekit.lab import fetch, kernels

__all__ = [
    "ARCHES",
    "TOOL_PACKAGES",
    "BUNDLED_PATCHES",
    "Patch",
    "KernelSource",
    "KernelBuild",
    "build",
    "lookup",
    "build_record",
    "cached_sources",
    "fragment_text",
    "parse_config",
    "missing_options",
    "patched_files",
    "resolve_patch",
    "build_key",
]

_HERE = Path(__file__).resolve().parent
BUNDLED_PATCHES = _HERE / "patches"
_KCONFIG = _HERE / "kconfig"
#: Bumped when the way a tree is configured or built changes (invalidates cached builds).
RECIPE = 1


@dataclass(frozen=True)
class _Arch:
    make_arch: str
    target: str
    image: str
    triplet: str
    gcc_package: str


ARCHES = {
    "arm64": _Arch("arm64", "Image", "arch/arm64/boot/Image", "aarch64-linux-gnu", "gcc-aarch64-linux-gnu"),
    "x86": _Arch("x86_64", "bzImage", "arch/x86/boot/bzImage", "x86_64-linux-gnu", "gcc-x86-64-linux-gnu"),
}
#: What a kernel build needs besides the compiler (Debian package names).
TOOL_PACKAGES = ("make", "bc", "bison", "flex", "libssl-dev", "dwarves", "libelf-dev", "patch", "xz-utils")
_TOOLS = {"make": "make", "bc": "bc", "bison": "bison", "flex": "flex", "pahole": "dwarves", "patch": "patch",
          "xz": "xz-utils", "gcc": "gcc"}  # fmt: skip
_HEADERS = {"/usr/include/openssl/opensslv.h": "libssl-dev", "/usr/include/libelf.h": "libelf-dev"}
#: Free space a build needs: the unpacked source (1.7 GB) and its objects with debug info.
_BUILD_BYTES = 4 << 30
_PATCH_TARGET = re.compile(r"^\+\+\+ (\S+)", re.M)


def cross_prefix(arch: str, machine: str | None = None) -> str:
    """``CROSS_COMPILE`` for ``arch`` on this machine (empty when it builds natively)."""
    native = {"x86_64": "x86", "aarch64": "arm64"}.get(machine or platform.machine())
    return "" if native == arch else ARCHES[arch].triplet + "-"


def install_hint(arch: str) -> str:
    """The one apt line that installs the toolchain of ``arch``."""
    gcc = ARCHES[arch].gcc_package if cross_prefix(arch) else "gcc"
    return "apt-get install " + " ".join([gcc, *TOOL_PACKAGES])


def require_toolchain(arch: str) -> str:
    """The toolchain's version line; MissingCapability naming the one apt line otherwise."""
    prefix = cross_prefix(arch)
    missing = [tool for tool in [*_TOOLS, prefix + "gcc"] if shutil.which(tool) is None]
    missing += [path.rsplit("/", 1)[1] for path in _HEADERS if not Path(path).exists()]
    if missing:
        raise MissingCapability(f"building a lab kernel needs {', '.join(missing)}: {install_hint(arch)}")
    gcc = subprocess.run([prefix + "gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    pahole = subprocess.run(["pahole", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{gcc}; pahole {pahole}"


# -- configuration -------------------------------------------------------------------------------


def fragment_text(arch: str, extra: Iterable[Path] = ()) -> str:
    """The lab's fragment for ``arch`` (common + arch) followed by the caller's fragments."""
    parts = [_KCONFIG / "common.config", _KCONFIG / f"{arch}.config", *extra]
    texts = []
    for path in parts:
        try:
            texts.append(f"# from {path.name}\n{path.read_text()}")
        except OSError as error:
            raise UsageError(f"cannot read the config fragment {path}: {error.strerror}") from None
    return "\n".join(texts)


def parse_config(text: str) -> dict[str, str]:
    """``CONFIG_X`` -> value (``y``, ``m``, a string or number; ``n`` for ``# CONFIG_X is not set``)."""
    options = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            name, value = line.split("=", 1)
            options[name] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            options[line[2:-len(" is not set")]] = "n"
    return options


def missing_options(fragment: str, config: str) -> list[str]:
    """The fragment's options that ``config`` (the resolved ``.config``) does not hold as asked,
    as ``CONFIG_X=want (got)``; a later line of the fragment overrides an earlier one."""
    wanted = parse_config(fragment)
    got = parse_config(config)
    return [f"{name}={value} (got {got.get(name, 'n')})" for name, value in wanted.items() if got.get(name, "n") != value]


# -- patches ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patch:
    """A unified diff against the kernel tree's root (``patch -p1``)."""

    path: Path
    text: str

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def files(self) -> list[str]:
        return patched_files(self.text)


def patched_files(text: str) -> list[str]:
    """The tree-relative paths a ``-p1`` unified diff changes (UsageError when it changes none)."""
    files = []
    for target in _PATCH_TARGET.findall(text):
        if target != "/dev/null":
            files.append(target.split("/", 1)[1] if "/" in target else target)
    if not files:
        raise UsageError("the patch holds no unified diff (no '+++ b/PATH' line)")
    return files


def resolve_patch(spec: str | Path) -> Patch:
    """A patch file, or the name of one of the project's own patches (``tracekit/lab/patches``)."""
    path = Path(spec)
    if not path.is_file():
        bundled = BUNDLED_PATCHES / (path.name if path.suffix == ".patch" else f"{path.name}.patch")
        if not bundled.is_file():
            own = ", ".join(sorted(p.stem for p in BUNDLED_PATCHES.glob("*.patch")))
            raise UsageError(f"no patch file {spec} (the project's own patches: {own})")
        path = bundled
    text = path.read_text()
    patched_files(text)
    return Patch(path, text)


# -- sources ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelSource:
    """An unpacked kernel tree: its identity (what the cache key hashes) and version."""

    identity: str
    version: str
    tree: Path


def kernel_version(tree: Path) -> str:
    """``VERSION.PATCHLEVEL.SUBLEVEL`` from the tree's top Makefile (UsageError if it is not a kernel tree)."""
    try:
        head = (tree / "Makefile").read_text(errors="replace")[:2000]
    except OSError:
        raise UsageError(f"{tree} is not a kernel source tree (no Makefile)") from None
    fields = dict(re.findall(r"^(VERSION|PATCHLEVEL|SUBLEVEL) = (\d+)", head, re.M))
    if len(fields) != 3:
        raise UsageError(f"{tree} is not a kernel source tree (its Makefile names no VERSION/PATCHLEVEL/SUBLEVEL)")
    return f"{fields['VERSION']}.{fields['PATCHLEVEL']}.{fields['SUBLEVEL']}"


def resolve_source(spec: str, cache: Path, progress: Callable[[str], None]) -> KernelSource:
    """``debian:CODENAME`` (the ``linux-source-X`` its ``linux-source`` names) or ``debian:X.Y``
    (``linux-source-X.Y`` from the first suite that has it), downloaded and unpacked once, or a kernel tree directory (identified by its files' names, sizes and modification times)."""
    if spec.startswith("debian:"):
        return _debian_source(spec[len("debian:"):], cache, progress)
    tree = Path(spec)
    if not tree.is_dir():
        raise UsageError(f"--source {spec}: neither debian:CODENAME, debian:X.Y nor a directory")
    version = kernel_version(tree)
    progress(f"fingerprinting the tree {tree}")
    return KernelSource(f"dir:{tree.resolve()}:{_tree_fingerprint(tree)}", version, tree)


def _tree_fingerprint(tree: Path) -> str:
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(tree):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(files):
            stat = os.lstat(os.path.join(root, name))
            digest.update(f"{os.path.relpath(os.path.join(root, name), tree)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def linux_source_deb(apt: fetch.PrivateApt) -> Path:
    """Download (apt's cache reuses it) the ``linux-source-X`` package the suite's ``linux-source`` names."""
    apt.update()
    names = [d.split(":")[0] for d in apt.depends("linux-source") if d.startswith("linux-source-")]
    if not names:
        raise LabError("the Debian metapackage linux-source names no linux-source-X package")
    return apt.download(names[0])


def unpack_linux_source(deb: Path, target: Path, parts: Iterable[str] = ()) -> Path:
    """Unpack the source tarball of ``deb`` (only ``parts``, tree-relative, when given) under ``target``;
    the tree's directory (``target/linux-source-X``)."""
    fetch.run_tool(["dpkg-deb", "-x", str(deb), str(target / "deb")], f"dpkg-deb -x {deb.name}")
    tarballs = sorted((target / "deb" / "usr" / "src").glob("linux-source-*.tar.*"))
    if not tarballs:
        raise LabError(f"{deb.name} holds no linux-source tarball under /usr/src")
    top = tarballs[0].name.split(".tar.")[0]
    fetch.run_tool(["tar", "-xf", str(tarballs[0]), "-C", str(target), *(f"{top}/{part}" for part in parts)],
                   f"unpacking {tarballs[0].name}")  # fmt: skip
    shutil.rmtree(target / "deb")
    return target / top


def _debian_source(name: str, cache: Path, progress: Callable[[str], None]) -> KernelSource:
    spec = kernels.parse_spec(f"debian:{name}")
    deb = None
    with fetch.cache_lock(cache):
        for suite in (spec.value,) if spec.kind == "suite" else kernels.VERSION_SEARCH:
            apt = fetch.PrivateApt.for_suite(cache, suite)
            try:
                apt.update()
                deb = linux_source_deb(apt) if spec.kind == "suite" else apt.download(f"linux-source-{spec.value}")
                break
            except LabError as error:
                failure = error
    if deb is None:
        raise LabError(f"no Debian kernel source for debian:{name}: {failure}")
    target = cache / "kbuild" / f"source-{deb.stem}"
    with _dir_lock(target):
        if not (target / ".complete").exists():
            fetch.check_disk(cache, _BUILD_BYTES)
            progress(f"unpacking {deb.name}")
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            tree = unpack_linux_source(deb, target)
            (target / ".complete").write_text(f"{tree.name}\n")
        tree = target / (target / ".complete").read_text().strip()
    return KernelSource(f"debian:{deb.name}", kernel_version(tree), tree)


def cached_sources(cache: Path | None = None) -> list[Path]:
    """The trees of the Debian sources already unpacked in the cache (no network), oldest first."""
    done = sorted(((cache or fetch.cache_dir()) / "kbuild").glob("source-*/.complete"))
    return [marker.parent / marker.read_text().strip() for marker in done]


@contextlib.contextmanager
def _dir_lock(directory: Path):
    """An flock beside ``directory`` (builds of other keys and lab runs go on meanwhile)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f"{directory.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- the build ---------------------------------------------------------------------------------------


def build_key(arch: str, source: str, fragment: str, patches: Iterable[Patch], toolchain: str) -> str:
    """The cache key: a hash of everything that decides the image."""
    digest = hashlib.sha256(f"recipe {RECIPE}\narch {arch}\nsource {source}\ntoolchain {toolchain}\n".encode())
    digest.update(b"fragment\n" + fragment.encode())
    for patch in patches:
        digest.update(f"patch {patch.sha256}\n".encode())
    return digest.hexdigest()[:16]


@dataclass
class KernelBuild:
    """A finished build (``build.json`` beside its tree)."""

    arch: str
    key: str
    directory: Path
    image: Path
    release: str
    source: str
    patches: list[dict]
    toolchain: str
    cached: bool = False
    reused: str | None = None
    seconds: float = 0.0
    compiled: int = 0
    options: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"arch": self.arch, "key": self.key, "directory": str(self.directory), "image": str(self.image),
                "release": self.release, "source": self.source, "patches": self.patches, "toolchain": self.toolchain,
                "cached": self.cached, "reused": self.reused, "seconds": round(self.seconds, 1),
                "compiled": self.compiled}  # fmt: skip

    @classmethod
    def load(cls, directory: Path) -> "KernelBuild":
        meta = json.loads((directory / "build.json").read_text())
        return cls(meta["arch"], meta["key"], directory, directory / "tree" / ARCHES[meta["arch"]].image,
                   meta["release"], meta["source"], meta["patches"], meta["toolchain"], cached=True,
                   reused=meta.get("reused"), seconds=meta.get("seconds", 0.0), compiled=meta.get("compiled", 0))  # fmt: skip


@dataclass(frozen=True)
class _Plan:
    arch: str
    source: KernelSource
    patches: list[Patch]
    fragment: str
    toolchain: str
    key: str
    directory: Path


def _plan(arch: str, source: str, patches: Iterable[str | Path], fragments: Iterable[Path],
          progress: Callable[[str], None]) -> _Plan:  # fmt: skip
    if arch not in ARCHES:
        raise UsageError(f"unknown lab kernel architecture {arch!r}; choose arm64 or x86")
    chosen = [resolve_patch(p) for p in patches]
    fragment = fragment_text(arch, fragments)
    toolchain = require_toolchain(arch)
    src = resolve_source(source, fetch.cache_dir(), progress)
    key = build_key(arch, src.identity, fragment, chosen, toolchain)
    return _Plan(arch, src, chosen, fragment, toolchain, key, _build_dir(arch, src, key))


def _build_dir(arch: str, src: KernelSource, key: str) -> Path:
    return fetch.cache_dir() / "kbuild" / f"{arch}-{src.version}-{key}"


def lookup(arch: str, source: str = f"debian:{fetch.SUITE}", patches: Iterable[str | Path] = (),
           fragments: Iterable[Path] = ()) -> KernelBuild | None:  # fmt: skip
    """The cached build :func:`build` would return, or None (nothing is built)."""
    plan = _plan(arch, source, patches, fragments, lambda line: None)
    return KernelBuild.load(plan.directory) if (plan.directory / ".complete").exists() else None


def build_record(image: Path) -> dict | None:
    """What built ``image`` when it is a lab kernel build's (key, source, patches, toolchain, release), or None."""
    image = Path(image).resolve()
    for folder in image.parents:
        record = folder / "build.json"
        if record.is_file():
            try:
                meta = json.loads(record.read_text())
            except (OSError, ValueError):
                return None
            if Path(meta.get("image", "")).resolve() != image:
                return None
            return {key: meta.get(key) for key in ("arch", "key", "release", "source", "patches", "toolchain")}
    return None


def build(
    arch: str,
    source: str = f"debian:{fetch.SUITE}",
    patches: Iterable[str | Path] = (),
    fragments: Iterable[Path] = (),
    *,
    jobs: int | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> KernelBuild:
    """Build (or find in the cache) the lab kernel of ``arch`` (see the module docstring)."""
    plan = _plan(arch, source, patches, fragments, progress)
    with _dir_lock(plan.directory):
        if (plan.directory / ".complete").exists():
            return KernelBuild.load(plan.directory)
        fetch.check_disk(fetch.cache_dir(), _BUILD_BYTES)
        base = _build_dir(arch, plan.source, build_key(arch, plan.source.identity, plan.fragment, (), plan.toolchain))
        reuse = plan.patches and (base / ".complete").exists()
        return _build(plan, base if reuse else None, jobs or os.cpu_count() or 1, progress)


def _build(plan: _Plan, base: Path | None, jobs: int, progress: Callable[[str], None]) -> KernelBuild:
    arch, src, patches, fragment, key, directory = plan.arch, plan.source, plan.patches, plan.fragment, plan.key, plan.directory
    started = time.monotonic()
    tree = directory / "tree"
    ready = directory / "tree.ready"  # copied and patched: an interrupted build resumes from here
    if ready.exists():
        progress(f"resuming the interrupted build in {directory.name}")
    else:
        shutil.rmtree(directory, ignore_errors=True)
        tree.mkdir(parents=True)
        origin = base / "tree" if base else src.tree
        progress(f"copying {'the unpatched build ' + base.name if base else 'the source'} to {directory.name}")
        entries = [str(p) for p in origin.iterdir() if p.name != ".git"]
        fetch.run_tool(["cp", "-a", *entries, str(tree)], f"copying {origin}", timeout=1800)
        for patch in patches:
            progress(f"applying {patch.name}")
            _apply(patch, tree, src)
        (directory / "fragment.config").write_text(fragment)
        ready.write_text("base\n" if base else "source\n")
    base_tree = ready.read_text().strip() == "base"
    make = _Make(arch, tree, key, directory / "build.log")
    if not base_tree:
        progress("configuring: allnoconfig + the lab fragment")
        make.run(["allnoconfig", f"KCONFIG_ALLCONFIG={directory / 'fragment.config'}"])
    make.run(["olddefconfig"])
    missing = missing_options(fragment, (tree / ".config").read_text())
    if missing:
        raise LabError(f"the kernel config lacks what the labs need after olddefconfig: {', '.join(missing)} "
                       f"(its dependencies are unmet in {src.version}; see {tree / '.config'})")  # fmt: skip
    shutil.copyfile(tree / ".config", directory / ".config")
    progress(f"compiling with make -j{jobs} ({'incremental, ' if base_tree else ''}log: {directory / 'build.log'})")
    compiled = make.run([f"-j{jobs}", ARCHES[arch].target], progress=progress)
    image = tree / ARCHES[arch].image
    if not image.is_file():
        raise LabError(f"make finished without {ARCHES[arch].image} (log: {directory / 'build.log'})")
    release = (tree / "include" / "config" / "kernel.release").read_text().strip()
    result = KernelBuild(arch, key, directory, image, release, src.identity,
                         [{"name": p.name, "sha256": p.sha256, "files": p.files()} for p in patches], plan.toolchain,
                         reused=base.name if base else None, seconds=time.monotonic() - started,
                         compiled=compiled)  # fmt: skip
    meta = result.as_dict()
    meta.pop("cached")
    (directory / "build.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    (directory / ".complete").write_text(key + "\n")
    return result


def _apply(patch: Patch, tree: Path, src: KernelSource) -> None:
    argv = ["patch", "-p1", "--forward", "--batch", "-s", "-d", str(tree), "-i", str(patch.path)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).strip().splitlines() or ["(no output)"]
        raise LabError(f"{patch.name} does not apply to {src.identity} ({src.version}): {lines[0]}",
                       detail=done.stdout + done.stderr)  # fmt: skip


def dry_run(patch: Patch, tree: Path) -> str | None:
    """None when ``patch`` applies cleanly to ``tree`` (``patch --dry-run``), else its first complaint."""
    argv = ["patch", "-p1", "--dry-run", "--forward", "--batch", "-d", str(tree), "-i", str(patch.path)]
    done = subprocess.run(argv, capture_output=True, text=True)
    output = (done.stdout + done.stderr).strip()
    if done.returncode == 0 and "offset" not in output and "fuzz" not in output:
        return None
    return next((line for line in output.splitlines() if "FAILED" in line or "fuzz" in line or "offset" in line),
                output.splitlines()[0] if output else f"patch exited {done.returncode}")  # fmt: skip


class _Make:
    """``make`` in a tree with the architecture's variables, its output appended to a log."""

    #: kbuild's short lines for a compiled object.
    _COMPILED = re.compile(r"^\s+(CC|AS)\s+(\S+\.o)$")

    def __init__(self, arch: str, tree: Path, key: str, log: Path):
        self.tree = tree
        self.log = log
        self.variables = [f"ARCH={ARCHES[arch].make_arch}", f"CROSS_COMPILE={cross_prefix(arch)}",
                          f"LOCALVERSION=-tk{key[:8]}", "KBUILD_BUILD_USER=tracekit", "KBUILD_BUILD_HOST=lab"]  # fmt: skip

    def run(self, args: list[str], progress: Callable[[str], None] | None = None) -> int:
        """Run ``make ARGS``; the number of objects it compiled. LabError with make's first error line."""
        argv = ["make", "-C", str(self.tree), *self.variables, *args]
        compiled, last_report, tail = 0, time.monotonic(), []
        with open(self.log, "a") as log:
            log.write("$ " + " ".join(argv) + "\n")
            child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
            assert child.stdout is not None
            for line in child.stdout:
                log.write(line)
                tail = (tail + [line.rstrip()])[-40:]
                if self._COMPILED.match(line):
                    compiled += 1
                    if progress and time.monotonic() - last_report >= 10:
                        last_report = time.monotonic()
                        progress(f"  {compiled} objects compiled, now {line.split()[-1]}")
            rc = child.wait()
        if rc != 0:
            error = next((l for l in tail if "error" in l.lower() and not l.startswith("make")), tail[-1] if tail else "")
            raise LabError(f"make {' '.join(args)} failed: {error.strip()} (log: {self.log})", detail="\n".join(tail))
        return compiled
