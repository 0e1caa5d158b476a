"""KVM ioctl arguments for the tracefs backend: a uprobe on the C library's ``ioctl``.

``syscalls:sys_enter_ioctl`` gives only the argument pointer; the bcc backend copies the argument structs in
BPF, tracefs cannot. :class:`IoctlArgsProbe` reads the first 32 bytes at the pointer with a uprobe, and
:func:`decode_args` fills the enter records' decoded columns from it, as probes/ioctl.bpf.c does.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np

from tracekit import schema as S
from tracekit.funcprobes.kprobe_events import append_line
from tracekit.recorder.kvm_ioctls import (KVM_CLEAR_DIRTY_LOG, KVM_ENABLE_CAP, KVM_GET_DIRTY_LOG,
                                          KVM_SET_USER_MEMORY_REGION, KVM_SET_USER_MEMORY_REGION2)

__all__ = ["IoctlArgsProbe", "symbol_offset", "c_library", "decode_args", "remove_stale_probes", "DECODED_CMDS"]

#: Commands whose argument struct is decoded.
DECODED_CMDS = (KVM_SET_USER_MEMORY_REGION, KVM_SET_USER_MEMORY_REGION2, KVM_GET_DIRTY_LOG, KVM_CLEAR_DIRTY_LOG,
                KVM_ENABLE_CAP)
_FETCH = "cmd=%si:u32 arg=%dx:u64 a0=+0(%dx):u64 a1=+8(%dx):u64 a2=+16(%dx):u64 a3=+24(%dx):u64"
_CARRIED_PER_THREAD = 8
_GROUP_RE = re.compile(r"^p:tkio_(\d+)/(\S+) ", re.M)
_LIBC_RE = re.compile(r"\s(/\S*/libc(?:\.so\.6|-[\d.]+\.so))$")


def c_library(maps: str | None = None) -> Path | None:
    """The C library mapped by this process (from ``/proc/self/maps`` or the ``maps`` text)."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return None
    for line in maps.splitlines():
        match = _LIBC_RE.search(line)
        if match:
            return Path(match.group(1))
    return None


def symbol_offset(data: bytes, name: str) -> int | None:
    """File offset of the dynamic symbol ``name`` in a little-endian ELF64 image (None if absent)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    value = None
    for sh in sections:
        if sh[1] != 11:  # SHT_DYNSYM
            continue
        strtab = sections[sh[6]]
        for off in range(sh[4], sh[4] + sh[5], 24):
            st_name, st_info, _, shndx, st_value = struct.unpack_from("<IBBHQ", data, off)
            if shndx == 0 or st_info & 0xF != 2:  # undefined, or not STT_FUNC
                continue
            start = strtab[4] + st_name
            if data[start:data.index(b"\0", start)] == name.encode():
                value = st_value
                break
    if value is None:
        return None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1 and p_vaddr <= value < p_vaddr + p_filesz:  # PT_LOAD
            return value - p_vaddr + p_offset
    return None


class IoctlArgsProbe:
    """The ``ioctl`` uprobe of one recording.

    A uprobe (``uprobe_events``, group ``tkio_<pid>``, event ``ioctl_args``) at ``ioctl`` of the C library
    this process runs with (found in ``/proc/self/maps``; its offset from the ELF's ``.dynsym`` and program
    headers, :func:`symbol_offset`), fetching ``cmd`` (``%si``), ``arg`` (``%dx``) and the first 32 bytes at
    ``arg`` (``a0`` .. ``a3``, as user memory). Every process calling that library's ``ioctl`` takes the
    uprobe's trap while it is defined (the instance's pid filter keeps only the target's events);
    :meth:`remove` deletes it; :func:`remove_stale_probes` deletes those of recorders no longer running.
    """

    def __init__(self, tracefs: Path):
        self.tracefs = tracefs
        self.group = f"tkio_{os.getpid()}"
        self.event = f"{self.group}:ioctl_args"
        self.defined = False
        self.note = ""

    def define(self) -> bool:
        """Define the uprobe; False (reason in :attr:`note`) when this host or library does not allow it."""
        library = c_library()
        if library is None:
            self.note = "no C library mapped by the recorder"
            return False
        try:
            offset = symbol_offset(library.read_bytes(), "ioctl")
        except (OSError, struct.error, ValueError) as error:
            self.note = f"cannot read {library}: {error}"
            return False
        if offset is None:
            self.note = f"no ioctl symbol in {library}"
            return False
        try:
            append_line(self.tracefs / "uprobe_events", f"p:{self.group}/ioctl_args {library}:{offset:#x} {_FETCH}")
        except OSError as error:
            self.note = f"uprobe on {library}:{offset:#x} refused: {error.strerror or error}"
            return False
        self.defined = True
        self.note = f"uprobe on {library}:{offset:#x}"
        return True

    def remove(self) -> None:
        if not self.defined:
            return
        try:
            append_line(self.tracefs / "uprobe_events", f"-:{self.group}/ioctl_args")
            self.defined = False
        except OSError:
            pass


def decode_args(records: np.ndarray, hits: np.ndarray | None, carried: dict[int, list[tuple]]) -> None:
    """Fill the decoded argument fields of the enter ``records`` (IOCTL_EVENT_DTYPE, kind 0) from the
    uprobe ``hits`` (fields ``common_pid``, ``ts_ns``, ``cmd``, ``arg``, ``a0`` .. ``a3``); ``carried``
    (tid -> hits) holds the unmatched hits between batches and is updated.

    Decoded: KVM_SET_USER_MEMORY_REGION(2), KVM_GET/CLEAR_DIRTY_LOG and KVM_ENABLE_CAP, from the uprobe hit of
    the same thread, command and pointer just before the syscall (hits not yet matched are carried to the next
    batch, the latest few per thread). A process whose ``ioctl`` is another library's, or a raw syscall, gets
    no arguments (null columns, as without the uprobe).
    """
    if hits is not None and len(hits):
        keep = np.isin(hits["cmd"], np.asarray(DECODED_CMDS, np.uint32))
        for h in hits[keep][np.argsort(hits[keep]["ts_ns"], kind="stable")].tolist() if keep.any() else []:
            row = dict(zip(hits.dtype.names, h))
            queue = carried.setdefault(int(row["common_pid"]), [])
            queue.append((int(row["ts_ns"]), int(row["cmd"]), int(row["arg"]),
                          int(row["a0"]), int(row["a1"]), int(row["a2"]), int(row["a3"])))
            del queue[:-_CARRIED_PER_THREAD]
    if not carried:
        return
    enter = np.flatnonzero((records["hdr"]["kind"] == 0) & np.isin(records["cmd"], np.asarray(DECODED_CMDS, np.uint32)))
    for i in enter[np.argsort(records["hdr"]["ts_ns"][enter], kind="stable")].tolist():
        queue = carried.get(int(records["hdr"]["tid"][i]))
        if not queue:
            continue
        ts, cmd, arg = int(records["hdr"]["ts_ns"][i]), int(records["cmd"][i]), int(records["arg"][i])
        found = next((k for k in range(len(queue) - 1, -1, -1)
                      if queue[k][0] <= ts and queue[k][1] == cmd and queue[k][2] == arg), None)
        if found is None:
            continue
        _, _, _, a0, a1, a2, a3 = queue[found]
        del queue[found]
        _fill(records, i, cmd, a0, a1, a2, a3)


def _fill(records: np.ndarray, i: int, cmd: int, a0: int, a1: int, a2: int, a3: int) -> None:
    """The fields probes/ioctl.bpf.c decodes from the argument struct of ``cmd``."""
    r = records[i:i + 1]
    if cmd in (KVM_SET_USER_MEMORY_REGION, KVM_SET_USER_MEMORY_REGION2):
        r["slot"], r["flags"] = a0 & 0xFFFFFFFF, a0 >> 32
        r["guest_phys_addr"], r["memory_size"], r["userspace_addr"] = a1, a2, a3
        r["decoded"] = S.TK_IOCTL_HAS_REGION
    elif cmd == KVM_GET_DIRTY_LOG:
        r["slot"], r["decoded"] = a0 & 0xFFFFFFFF, S.TK_IOCTL_HAS_SLOT
    elif cmd == KVM_CLEAR_DIRTY_LOG:
        r["slot"], r["num_pages"], r["first_page"] = a0 & 0xFFFFFFFF, a0 >> 32, a1
        r["decoded"] = S.TK_IOCTL_HAS_CLEAR
    else:  # KVM_ENABLE_CAP
        r["cap"], r["flags"], r["cap_arg0"] = a0 & 0xFFFFFFFF, a0 >> 32, a1
        r["decoded"] = S.TK_IOCTL_HAS_CAP


def remove_stale_probes(tracefs: Path, alive) -> list[str]:
    """Delete the ``tkio_<pid>`` uprobes whose recorder pid is not ``alive(pid)``; return their names."""
    try:
        text = (tracefs / "uprobe_events").read_text()
    except OSError:
        return []
    removed = []
    for match in _GROUP_RE.finditer(text):
        if alive(int(match.group(1))):
            continue
        name = f"tkio_{match.group(1)}/{match.group(2)}"
        try:
            append_line(tracefs / "uprobe_events", f"-:{name}")
            removed.append(name)
        except OSError:
            pass
    return removed
