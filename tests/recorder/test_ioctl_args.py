"""The tracefs backend's ioctl argument uprobe: libc symbol offset, pairing hits with syscalls, cleanup."""

from __future__ import annotations

import ctypes
import os

import numpy as np

from tracekit import schema as S
from tracekit.recorder.ioctl_args import c_library, decode_args, remove_stale_probes, symbol_offset
from tracekit.recorder.kvm_ioctls import (KVM_CLEAR_DIRTY_LOG, KVM_GET_DIRTY_LOG, KVM_RUN,
                                          KVM_SET_USER_MEMORY_REGION2)


def test_symbol_offset_is_where_the_loaded_ioctl_lies_in_the_file():
    """Ground truth from the dynamic loader: ioctl's address in this process, minus its mapping's start,
    plus that mapping's file offset."""
    library = c_library()
    assert library is not None and library.exists()
    address = ctypes.cast(ctypes.CDLL(str(library)).ioctl, ctypes.c_void_p).value
    for line in open("/proc/self/maps"):
        span, _, offset, _, _, *path = line.split()
        start, end = (int(x, 16) for x in span.split("-"))
        if start <= address < end and path and os.path.realpath(path[0]) == os.path.realpath(library):
            expected = address - start + int(offset, 16)
            break
    assert symbol_offset(library.read_bytes(), "ioctl") == expected
    assert symbol_offset(library.read_bytes(), "no_such_symbol_here") is None
    assert symbol_offset(b"not an elf", "ioctl") is None


def _hits(rows):
    dtype = np.dtype([("common_pid", "<i4"), ("ts_ns", "<i8"), ("cmd", "<u4"), ("arg", "<u8"),
                      ("a0", "<u8"), ("a1", "<u8"), ("a2", "<u8"), ("a3", "<u8")])
    return np.array(rows, dtype=dtype)


def _enters(rows):
    rec = np.zeros(len(rows), S.IOCTL_EVENT_DTYPE)
    for i, (tid, ts, cmd, arg) in enumerate(rows):
        rec[i]["hdr"]["tid"], rec[i]["hdr"]["ts_ns"], rec[i]["cmd"], rec[i]["arg"] = tid, ts, cmd, arg
    return rec


def test_hits_fill_the_fields_the_bpf_program_decodes_and_carry_across_batches():
    """A region call (slot 1, flags 1: dirty logging on), a CLEAR whose hit came in the previous batch,
    a GET whose pointer differs from its hit's (not paired) and a KVM_RUN (not decoded)."""
    carried: dict = {}
    decode_args(_enters([]), _hits([(7, 90, KVM_CLEAR_DIRTY_LOG, 0x5000, (64 << 32) | 1, 128, 0, 0)]), carried)
    enters = _enters([(7, 100, KVM_SET_USER_MEMORY_REGION2, 0x4000), (7, 110, KVM_CLEAR_DIRTY_LOG, 0x5000),
                      (7, 120, KVM_GET_DIRTY_LOG, 0x6000), (7, 130, KVM_RUN, 0)])
    hits = _hits([(7, 99, KVM_SET_USER_MEMORY_REGION2, 0x4000, (1 << 32) | 1, 1 << 32, 16 << 20, 0x7F0000),
                  (7, 119, KVM_GET_DIRTY_LOG, 0x6008, 1, 0, 0, 0), (7, 129, KVM_RUN, 0, 0, 0, 0, 0)])
    decode_args(enters, hits, carried)
    region, clear, get, run = enters
    assert (region["slot"], region["flags"], region["guest_phys_addr"], region["memory_size"],
            region["userspace_addr"], region["decoded"]) == (1, 1, 1 << 32, 16 << 20, 0x7F0000, S.TK_IOCTL_HAS_REGION)
    assert (clear["slot"], clear["num_pages"], clear["first_page"], clear["decoded"]) == (1, 64, 128, S.TK_IOCTL_HAS_CLEAR)
    assert get["decoded"] == 0 and run["decoded"] == 0


def test_stale_uprobes_of_dead_recorders_are_removed(tmp_path):
    (tmp_path / "uprobe_events").write_text("p:tkio_111/ioctl_args /lib/libc.so.6:0x1 cmd=%si:u32\n"
                                            "p:tkio_222/ioctl_args /lib/libc.so.6:0x1 cmd=%si:u32\n"
                                            "p:other/probe /bin/true:0x10\n")
    removed = remove_stale_probes(tmp_path, lambda pid: pid == 222)
    assert removed == ["tkio_111/ioctl_args"]
    assert (tmp_path / "uprobe_events").read_text().endswith("-:tkio_111/ioctl_args\n")
