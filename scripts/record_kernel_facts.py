#!/usr/bin/env python3
"""Record what the function probes need to know about one kernel, for offline tests.

From a kernel image (a Debian ``vmlinuz``: decompressed here the way the kernel's
``scripts/extract-vmlinux`` does, by trying each compressor's magic), the KVM modules' ``.ko``
files (x86: split BTF and symbol tables) or a kallsyms text (arm64, whose KVM is built in: e.g.
``kallsyms-finder`` of vmlinux-to-elf), write a small JSON file: the kernel's kprobe configuration,
the kallsyms lines of the probed functions and their clones, their BTF prototypes and the struct
members the probes' expressions reach. ``tests/funcprobes/data/kernels/`` holds one per kernel.

    scripts/record_kernel_facts.py --kernel debian:bookworm --arch x86_64 -o tests/funcprobes/data/kernels/
    scripts/record_kernel_facts.py --kernel debian:bookworm --arch arm64 --kallsyms kallsyms.txt -o tests/...
    scripts/record_kernel_facts.py --image vmlinuz --config config --module kvm-intel.ko ... --arch x86_64 --release R -o F

(``--kernel`` adds the KVM modules the lab loads; give the others, such as ``kvm-intel.ko``, with ``--module``.)
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracekit.errors import MissingCapability  # noqa: E402
from tracekit.funcprobes.btf_offsets import STAGE2_FIELDS, TDP_FIELDS, BtfTypes, elf_section, image_btf  # noqa: E402
from tracekit.funcprobes.fetchargs import TypeSources  # noqa: E402
from tracekit.host import parse_kallsyms  # noqa: E402
from tracekit.funcprobes.stage2_probes import STAGE2_PROBES  # noqa: E402
from tracekit.funcprobes.tdp_probes import TDP_PROBES  # noqa: E402

#: Compressed payload magics of a kernel image, with the command that decompresses from there on.
_PAYLOADS = ((b"\x1f\x8b\x08", ["gzip", "-dc"]), (b"\xfd7zXZ\x00", ["xz", "-dc"]), (b"\x28\xb5\x2f\xfd", ["zstd", "-dc"]),
             (b"\x02\x21\x4c\x18", ["lz4", "-dc"]), (b"BZh", ["bzip2", "-dc"]))  # fmt: skip
_CONFIG = ("PROBE_EVENTS_BTF_ARGS", "KPROBE_EVENTS", "HAVE_FUNCTION_ARG_ACCESS_API", "DEBUG_INFO_BTF",
           "DEBUG_INFO_BTF_MODULES", "KVM")  # fmt: skip


def uncompressed(image: bytes) -> bytes:
    """The kernel inside ``image``: itself when it already holds BTF, else the first payload that
    decompresses to something holding BTF (the ``extract-vmlinux`` approach)."""
    if image[0x38:0x3C] == b"ARM\x64" or image[:4] == b"\x7fELF":  # an arm64 Image, a vmlinux
        return image
    for magic, command in _PAYLOADS:
        pos = image.find(magic)
        while 0 <= pos < (4 << 20):
            out = subprocess.run(command, input=image[pos:], capture_output=True).stdout
            if len(out) > (4 << 20) and b"\x9f\xeb\x01\x00" in out:
                return out
            pos = image.find(magic, pos + 1)
    raise SystemExit("no compressed kernel with BTF found in the image")


def module_symbols(ko: Path) -> str:
    """kallsyms lines of a module's text symbols, from its ELF ``.symtab``."""
    data = ko.read_bytes()
    symtab, strtab = elf_section(data, ".symtab"), elf_section(data, ".strtab")
    module = ko.name.split(".ko")[0].replace("-", "_")
    lines = []
    for pos in range(0, len(symtab or b""), 24):
        name_off, info, _other, _shndx, value, _size = struct.unpack_from("<IBBHQQ", symtab, pos)
        if info & 0xF == 2:  # STT_FUNC
            name = strtab[name_off : strtab.index(b"\0", name_off)].decode()
            lines.append(f"{value:016x} {'T' if info >> 4 == 1 else 't'} {name} [{module}]")
    return "\n".join(lines) + "\n"


def _members(types, expr: str, function: str, structs: dict) -> None:
    """Record the struct members an expression's ``->`` chain reaches (where this kernel has them)."""
    prototype = dict(types.prototype(function) or ())
    match = re.match(r"^\*?(\w+)((?:->\w+)*)$", expr)
    ctype = prototype.get(match.group(1)) if match else None
    for member in [m for m in match.group(2).split("->") if m] if match else []:
        if ctype is None or ctype.kind != "ptr" or ctype.target is None or ctype.target.kind != "struct":
            return
        try:
            offset, member_type = types.field(ctype.target.name, member)
        except MissingCapability:
            return
        structs.setdefault(ctype.target.name, {})[member] = [offset, member_type.spelling]
        ctype = member_type


def record(image: Path, modules: list[Path], kallsyms_text: str, config: Path | None, arch: str) -> dict:
    blob = image_btf(uncompressed(image.read_bytes()))
    if blob is None:
        raise SystemExit(f"{image} holds no BTF")
    base = BtfTypes(blob)
    loaded, with_btf = [], []
    for ko in modules:
        try:
            loaded.append(base.with_module(ko.read_bytes()))
            with_btf.append(ko.name)
        except MissingCapability:
            continue  # no module BTF (5.10 x86): the functions have no prototype
    types = TypeSources(loaded or [base])
    probes, fields = (STAGE2_PROBES, STAGE2_FIELDS) if arch == "arm64" else (TDP_PROBES, TDP_FIELDS)
    table = parse_kallsyms(kallsyms_text)
    wanted = {p.symbol for p in probes}
    kept = [line for line in kallsyms_text.splitlines() if len(line.split()) > 2
            and re.sub(r"\.(isra|constprop|part|cold|llvm)\.\d+.*$", "", line.split()[2]) in wanted]  # fmt: skip
    functions, structs = {}, {}
    for probe in probes:
        prototype = types.prototype(probe.symbol)
        if prototype is not None:
            functions[probe.symbol] = [[name, ctype.spelling] for name, ctype in prototype]
        for _field, expr in probe.args:
            for alternative in expr.split("|"):
                _members(types, alternative, probe.symbol, structs)
    for _macro, struct_name, member in (*fields, ("MMU_LOCK", "kvm", "mmu_lock")):
        try:
            offset, ctype = types.field(struct_name, member)
            structs.setdefault(struct_name, {})[member] = [offset, ctype.spelling]
        except MissingCapability:
            pass
    options = {}
    if config is not None:
        text = config.read_text()
        for option in _CONFIG:
            found = re.search(rf"^CONFIG_{option}=(\w+)$", text, re.M)
            options[option] = found.group(1) if found else "n"
    return {"arch": arch, "config": options, "btf_modules": with_btf,
            "kallsyms": sorted(kept, key=lambda l: l.split()[2]), "kallsyms_symbols": len(table.by_name),
            "functions": functions, "structs": structs}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", help="a lab kernel (debian:CODENAME, debian:VERSION): fetched and cached as the "
                        "labs do, giving --image, --config, --module, --release and --debian")
    parser.add_argument("--image", type=Path, help="vmlinuz, Image or vmlinux")
    parser.add_argument("--module", type=Path, action="append", default=[], help="a KVM .ko (x86), repeatable")
    parser.add_argument("--kallsyms", type=Path, help="kallsyms text (arm64: built-in KVM)")
    parser.add_argument("--config", type=Path, help="the kernel's config file")
    parser.add_argument("--arch", choices=("arm64", "x86_64"), required=True)
    parser.add_argument("--release")
    parser.add_argument("--debian", default="", help="the Debian suite it comes from (bookworm, ...)")
    parser.add_argument("-o", "--output", required=True, help="the JSON file, or a directory (ending in /)")
    args = parser.parse_args()
    if args.kernel:
        from tracekit.lab.kernels import resolve_kernel  # --kernel only: the lab's kernel cache

        lab = resolve_kernel(args.kernel, "arm64" if args.arch == "arm64" else "x86")
        args.image, args.config, args.release = lab.image, args.config or lab.config, lab.release
        args.module += [path for name, path in lab.modules if name.startswith("kvm")]
        args.debian = args.debian or lab.suite or ""
    if args.image is None or args.release is None:
        parser.error("give --kernel, or --image and --release")
    output = Path(args.output)
    if args.output.endswith("/") or output.is_dir():
        output = output / f"{args.release}.json"
    text = args.kallsyms.read_text() if args.kallsyms else "".join(module_symbols(ko) for ko in args.module)
    facts = {"release": args.release, "debian": args.debian, **record(args.image, args.module, text, args.config, args.arch)}
    output.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(facts, indent=1, sort_keys=True)
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
