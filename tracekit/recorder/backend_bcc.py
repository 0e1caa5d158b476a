"""The bcc backend of the recorder: compile the families' BPF programs, attach, drain, detach.

:class:`BccBackend` loads one program for the targets disarmed, arms one recording window for every
family, returns committed events as Arrow tables per family and disarms before detaching, so no
operation is split; the only module that imports bcc.
"""

from __future__ import annotations

import ctypes
import os
import re
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow as pa

from tracekit.capabilities import check_bcc, check_kernel_headers
from tracekit.errors import MissingCapability, ProbeLoadError
from tracekit.probes import PROBES_DIR
from tracekit.recorder.probe_family import ProbeFamily, ProbeStatus
from tracekit.recorder.ring_batch import RING_FAILURE_DTYPE, failure_rows
from tracekit.recorder.ringbuf import RingReader
from tracekit.schema import STRUCT_DTYPES

__all__ = ["BccBackend", "import_bcc", "struct_layouts", "map_declaration_order", "read_percpu"]

PAGE = 4096
TARGETS_MAP = "tk_targets"  # several target processes: their tgids (see probes/tk_bpf.h)
TARGETS_MAX = 1024
#: Declared before every family's source: the recording window every program checks (tk_bpf.h).
WINDOW_PRELUDE = """#define TK_WINDOW 1
BPF_ARRAY(tk_window, __u64, 2);
static __always_inline __u64 tk_window_get(__u32 k)
{
	__u64 *v = tk_window.lookup(&k);
	return v ? *v : 0;
}
"""
_MAP_DECL = re.compile(r"^[ \t]*BPF_[A-Z_]+\(\s*(\w+)", re.M)


def read_percpu(bpf: Any, map_name: str, size: int) -> np.ndarray:
    """A bcc per-CPU array of ``size`` integers as a (cpu, index) uint64 array."""
    table = bpf[map_name.encode()]
    columns = [np.asarray([int(v) for v in table.getvalue(table.Key(index))], dtype=np.uint64) for index in range(size)]
    return np.stack(columns, axis=1) if columns else np.empty((0, 0), np.uint64)


def map_declaration_order(text: str) -> list[str]:
    """Names of the maps declared at the start of a line in ``text`` (``BPF_HASH(name, ...``), in order.

    bcc numbers a program's maps -1, -2, ... in declaration order when it compiles (``bpf_pseudo_fd``);
    code shared through a header reaches a map by that number (``TK_MAP`` in ``probes/tk_bpf.h``), as
    does ``bpf_ringbuf_query``, which bcc 0.26 has no map method for. Only the ``BPF_<KIND>(name, ...)``
    macros are counted."""
    return [m.group(1) for m in _MAP_DECL.finditer(text)]


def import_bcc() -> Any:
    """The ``bcc`` module, or MissingCapability naming the fix."""
    check = check_bcc()
    if not check.ok:
        raise MissingCapability(f"bcc backend unavailable: {check.detail}; fix: {check.fix}")
    headers = check_kernel_headers()
    if not headers.ok:
        raise MissingCapability(f"bcc backend unavailable: {headers.detail}; fix: {headers.fix}")
    import bcc  # optional dependency: imported only when the bcc backend is used

    return bcc


def _load(bcc: Any, text: str, cflags: list[str]) -> Any:
    """``bcc.BPF(text=...)`` with the compiler/verifier output captured into the error."""
    log = tempfile.TemporaryFile(mode="w+b")
    saved = os.dup(2)
    try:
        os.dup2(log.fileno(), 2)
        try:
            return bcc.BPF(text=text.encode() if isinstance(text, str) else text, cflags=cflags)
        except Exception as error:  # bcc raises plain Exception for compile and load failures
            os.dup2(saved, 2)
            log.seek(0)
            detail = log.read().decode(errors="replace")[-20000:]
            raise ProbeLoadError(f"BPF program failed to compile or load: {error}", detail=detail) from None
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        log.close()


def _refusal(error: ProbeLoadError) -> str:
    """The kernel's own words for a refused program: the failed load and the verifier's last complaint."""
    tail: list[str] = []
    for line in reversed([line.strip() for line in (error.detail or "").splitlines() if line.strip()]):
        if line[:1].isdigit() or line.startswith(";"):  # an instruction or its source: the complaint is below
            break
        if not line.startswith(("processed ", "verification time", "stack depth")):
            tail.insert(0, line)
    complaint = "; ".join(tail[-3:])
    message = str(error).removeprefix("BPF program failed to compile or load: ")
    return f"{message} ({complaint})" if complaint and complaint not in message else message


def struct_layouts() -> dict[str, tuple[int, dict[str, int]]]:
    """Size and top-level field offsets of every struct of ``probes/*.h`` as bcc's clang lays it out."""
    bcc = import_bcc()
    headers = ["tk_common.h"] + sorted(p.name for p in PROBES_DIR.glob("*.h") if p.name != "tk_common.h")
    text = "".join(f'#include "{h}"\n' for h in headers)
    text += "".join(f"BPF_ARRAY(layout_{n}, struct {n}, 1);\n" for n in STRUCT_DTYPES)
    bpf = _load(bcc, text.encode(), [f"-I{PROBES_DIR}", "-w"])
    try:
        out = {}
        for n in STRUCT_DTYPES:
            leaf = bpf[f"layout_{n}".encode()].Leaf
            out[n] = (ctypes.sizeof(leaf),
                      {f[0]: getattr(leaf, f[0]).offset for f in leaf._fields_ if not f[0].startswith("__pad")})
        return out
    finally:
        bpf.cleanup()


class BccBackend:
    """Record families through one bcc program (see the module docstring)."""

    name = "bcc"

    def __init__(self, families: list[tuple[ProbeFamily, list[ProbeStatus]]], target_tgid: int | list[int]):
        self.families = families
        self.target_tgids = [target_tgid] if isinstance(target_tgid, int) else list(target_tgid)
        self.target_tgid = self.target_tgids[0] if len(self.target_tgids) == 1 else 0
        self.bpf: Any = None
        self.readers: list[tuple[ProbeFamily, str, RingReader]] = []
        self.attached: list[str] = []
        self.window: dict[str, int] = {}  # start_ns / stop_ns of the recording window (CLOCK_MONOTONIC)
        #: Families left out because the kernel refused their program (``probes.failed`` entries).
        self.refused: list[dict] = []

    def cflags(self, families: list[tuple[ProbeFamily, list[ProbeStatus]]] | None = None) -> list[str]:
        families = self.families if families is None else families
        flags = ["-w", f"-DTK_TARGET_TGID={self.target_tgid}"]
        order = map_declaration_order(self.program_text(families))
        if len(self.target_tgids) > 1:
            flags.append(f"-DTK_TARGETS_FAKE_FD=-{order.index(TARGETS_MAP) + 1}")
        dirs: list[str] = []
        for family, statuses in families:
            dirs += [str(d) for d in family.include_dirs() if str(d) not in dirs]
            flags += [f for f in family.cflags(statuses, self.target_tgid) if f not in flags]
        flags += [f"-DTK_FAKE_FD_{name}=-{rank}" for rank, name in enumerate(order, start=1)
                  if order.count(name) == 1]  # names shared code uses for maps (tk_bpf.h TK_MAP)
        return [f"-I{d}" for d in dirs] + flags

    def program_text(self, families: list[tuple[ProbeFamily, list[ProbeStatus]]] | None = None) -> str:
        prologue = f"BPF_HASH({TARGETS_MAP}, u32, u8, {TARGETS_MAX});\n" if len(self.target_tgids) > 1 else ""
        return prologue + WINDOW_PRELUDE + "\n".join(f"/* ---- family {f.name} ---- */\n{f.bpf_source()}"
                                                    for f, _ in (self.families if families is None else families))

    def _load_what_the_kernel_accepts(self, bcc: Any) -> Any:
        """The program of every family; when the kernel refuses it, each family is loaded alone and those
        refused are left out (:attr:`refused`: one entry per family, with the kernel's reason), the rest
        loaded together. ProbeLoadError when no family loads, or when each loads alone but not together."""
        try:
            return _load(bcc, self.program_text(), self.cflags())
        except ProbeLoadError as whole:
            if len(self.families) < 2:
                raise
            refused = {}
            for family, statuses in self.families:
                try:
                    _load(bcc, self.program_text([(family, statuses)]), self.cflags([(family, statuses)])).cleanup()
                except ProbeLoadError as error:
                    refused[family.name] = error
            if not refused or len(refused) == len(self.families):
                raise whole
        self.refused = [{"probe": f"family:{name}", "family": name,
                         "reason": f"the kernel refused its BPF program: {_refusal(error)}"}
                        for name, error in refused.items()]  # fmt: skip
        self.families = [(f, s) for f, s in self.families if f.name not in refused]
        return _load(bcc, self.program_text(), self.cflags())

    def start(self) -> None:
        bcc = import_bcc()
        if len(self.target_tgids) > TARGETS_MAX:
            raise ProbeLoadError(f"{len(self.target_tgids)} target processes: at most {TARGETS_MAX} at once")
        self.bpf = self._load_what_the_kernel_accepts(bcc)
        if len(self.target_tgids) > 1:
            targets = self.bpf[TARGETS_MAP.encode()]
            for tgid in self.target_tgids:
                targets[targets.Key(tgid)] = targets.Leaf(1)
        self.attached = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in self.bpf.tracepoint_fds)
        for family, statuses in self.families:
            self.attached += family.attach_bcc(self.bpf, statuses)
        for family, _ in self.families:
            for ring in family.rings():
                try:
                    fd = self.bpf[ring.map_name.encode()].map_fd
                except KeyError:
                    raise ProbeLoadError(f"family {family.name}: ring buffer map {ring.map_name} not in the program") from None
                self.readers.append((family, ring.map_name, RingReader(fd, ring.pages * PAGE, ring.dtype)))

    def _set_window(self, index: int, value: int) -> None:
        table = self.bpf[b"tk_window"]
        table[table.Key(index)] = table.Leaf(value)

    def arm(self) -> int:
        """Open the recording window of every program at once; return its start (CLOCK_MONOTONIC ns).
        Every event recorded is stamped at or after it."""
        start = time.monotonic_ns()
        self._set_window(1, start)
        self._set_window(0, 1)
        self.window = {"start_ns": start}
        return start

    def disarm(self) -> int:
        """Close the recording window (idempotent); return its end (CLOCK_MONOTONIC ns)."""
        if self.bpf is not None and "stop_ns" not in self.window:
            self._set_window(0, 0)
            self.window["stop_ns"] = time.monotonic_ns()
        return self.window.get("stop_ns", 0)

    def poll(self) -> list[tuple[ProbeFamily, dict[str, pa.Table]]]:
        """Every committed event of every ring, decoded."""
        out = []
        for family, map_name, reader in self.readers:
            while True:
                records = reader.drain()
                if not len(records):
                    break
                out.append((family, family.decode(map_name, records)))
                if len(records) < reader.max_batch:
                    break
        return out

    def bytes_read(self) -> int:
        return sum(r.bytes_read for _, _, r in self.readers)

    def lost(self) -> list[tuple[str, int, int]]:
        """(probe, cpu, count) for every non-zero reserve-failure counter, by probe then CPU."""
        out = []
        if self.bpf is None:
            return out
        for family, _ in self.families:
            for map_name, probes in family.lost_maps().items():
                counts = read_percpu(self.bpf, map_name, len(probes))
                for index, cpu in zip(*np.nonzero(counts.T)):
                    out.append((probes[index], int(cpu), int(counts[cpu, index])))
        return out

    def ring_failures(self) -> list[dict]:
        """The failed ring outputs the families recorded (the first ones of each family), oldest first,
        each with ``ring`` and ``ring_size_expected`` (the query names the ring by bcc's map number:
        a different size means it read another ring)."""
        out: list[dict] = []
        if self.bpf is None:
            return out
        for family, _ in self.families:
            sizes = {r.map_name: r.pages * PAGE for r in family.rings()}
            for map_name, (count_map, ring, probes) in family.failure_maps().items():
                table = self.bpf[map_name.encode()]
                kept = min(self._failure_count(count_map), len(table))
                raw = b"".join(bytes(table[table.Key(i)]) for i in range(kept))
                rows = failure_rows(np.frombuffer(raw, RING_FAILURE_DTYPE), probes)
                for row in rows:
                    row.update(ring=ring, ring_size_expected=sizes.get(ring, 0))
                out += rows
        return sorted(out, key=lambda r: r["ts_ns"])

    def ring_failure_total(self) -> int:
        """Failed ring outputs counted by every family (kept or not)."""
        if self.bpf is None:
            return 0
        return sum(self._failure_count(count_map) for family, _ in self.families
                   for count_map, _ring, _probes in family.failure_maps().values())

    def _failure_count(self, count_map: str) -> int:
        """The failed ring outputs a family's counter map (one u64 at index 0) has counted."""
        counter = self.bpf[count_map.encode()]
        return int(counter[counter.Key(0)].value)

    def staged(self) -> list[tuple[ProbeFamily, dict[str, pa.Table]]]:
        """The events still in each CPU's staging batches (and spares), decoded; call once the probes
        are detached. Batches are taken CPU by CPU, the batch before its spare."""
        out = []
        if self.bpf is None:
            return out
        for family, _ in self.families:
            dtypes = {r.map_name: r.dtype for r in family.rings()}
            for map_name, ring in family.staging_maps().items():
                table = self.bpf[map_name.encode()]
                per_index = [table.getvalue(table.Key(i)) for i in range(len(table))]
                raw = b"".join(bytes(per_index[i][cpu]) for cpu in range(len(per_index[0]))
                               for i in range(len(per_index)))
                records = np.frombuffer(raw, dtypes[ring])
                records = records[records["bh"]["count"] > 0]
                if len(records):
                    out.append((family, family.decode(ring, records.copy())))
        return out

    def stop(self) -> tuple[list[tuple[ProbeFamily, dict[str, pa.Table]]], list[tuple[ProbeFamily, dict[str, pa.Table]]]]:
        """Detach, drain the rings and the staging batches, and build the end-of-run tables:
        (last batches, final tables)."""
        if self.bpf is None:
            return [], []
        stop_ns = self.disarm()
        batches = self.poll()
        for family, _ in self.families:  # kprobes first: a kprobe may sit under a traced tracepoint
            family.detach_bcc(self.bpf)
            batches += self.poll()
        for tp in self.detach_order():  # each detach waits for RCU: keep draining meanwhile
            try:
                self.bpf.detach_tracepoint(tp.encode())
            except Exception:  # already gone; close() frees the rest
                pass
            batches += self.poll()
        batches += self.poll()
        batches += self.staged()
        finals = [(family, family.finish(self.bpf, stop_ns)) for family, _ in self.families]
        return batches, finals

    def detach_order(self) -> list[str]:
        """Attached tracepoints, each family's in reverse of its declared order: the events that
        continue an operation (a walk's elements) go before the one that opens it, which, outside
        the window, closes it."""
        attached = {k.decode() if isinstance(k, bytes) else str(k) for k in self.bpf.tracepoint_fds}
        order = [tp for family, _ in self.families for tp in reversed(family.tracepoints) if tp in attached]
        return order + sorted(attached - set(order))

    def close(self) -> None:
        for _, _, reader in self.readers:
            reader.close()
        self.readers = []
        if self.bpf is not None:
            bpf, self.bpf = self.bpf, None
            bpf.cleanup()
