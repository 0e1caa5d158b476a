"""The VMs (processes) of a capture: list them, pick one by ``--vm PID|NAME``, cut a capture to it.

:func:`capture_vms` lists the recorded processes (manifest ``target.vms``, or older ``target.pids``);
:func:`select_vm` picks the one a pid, name or unique prefix names (UsageError listing them otherwise);
:class:`VmCapture` shows an opened capture through that process's rows (filtering on the ``pid`` column
every event row carries; lost events stay the capture's, as they are counted per CPU); :func:`vm_rows`
counts each VM's rows per family for ``tracekit analyze``.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tracekit.analysis.common import rows_where
from tracekit.capture import Capture
from tracekit.errors import UsageError

__all__ = ["capture_vms", "select_vm", "VmCapture", "vm_rows"]


def capture_vms(manifest: dict) -> list[dict]:
    """``[{"pid", "comm", "name", "vcpus", "memory"}]`` of the recorded processes, by pid."""
    target = manifest.get("target") or {}
    vms = [vm for vm in target.get("vms") or [] if isinstance(vm, dict) and isinstance(vm.get("pid"), int)]
    if not vms:
        pids = [p for p in target.get("pids") or [] if isinstance(p, int)]
        vms = [{"pid": p, "comm": target.get("comm") if i == 0 else None, "name": target.get("name") if i == 0 else None,
                "vcpus": None, "memory": None} for i, p in enumerate(pids)]
    return sorted(vms, key=lambda vm: vm["pid"])


def _label(vm: dict) -> str:
    return f"pid {vm['pid']} {vm.get('comm') or '?'}" + (f" guest {vm['name']}" if vm.get("name") else "")


def select_vm(manifest: dict, spec: str) -> dict:
    """The recorded VM ``spec`` names (see the module docstring)."""
    vms = capture_vms(manifest)
    spec = spec.strip()
    if spec.isdigit():
        found = [vm for vm in vms if vm["pid"] == int(spec)]
    else:
        found = [vm for vm in vms if spec in (vm.get("comm"), vm.get("name"))]
        found = found or [vm for vm in vms if str(vm.get("comm") or "").startswith(spec)]
    if len(found) == 1:
        return found[0]
    listing = "; ".join(_label(vm) for vm in vms) or "none"
    what = "no recorded VM matches" if not found else f"{len(found)} recorded VMs match"
    raise UsageError(f"--vm {spec}: {what} (recorded: {listing}); give the pid")


class VmCapture:
    """A capture seen through one process's rows (see the module docstring)."""

    def __init__(self, cap: Any, vm: dict):
        self._cap = cap
        self.vm = vm
        self.path = cap.path

    def __getattr__(self, name: str) -> Any:  # families, schema, has, segments, lost_total, complete ...
        return getattr(self._cap, name)

    @property
    def manifest(self) -> dict:
        manifest = dict(self._cap.manifest)
        target = dict(manifest.get("target") or {})
        target.update(pids=[self.vm["pid"]], comm=self.vm.get("comm"), name=self.vm.get("name"), vms=[self.vm])
        manifest["target"] = target
        return manifest

    def _has_pid(self, family: str) -> bool:
        return "pid" in self._cap.schema(family).names

    def _read_columns(self, family: str, columns: Sequence[str] | None) -> list[str] | None:
        if columns is None or "pid" in columns or not self._has_pid(family):
            return None if columns is None else list(columns)
        return [*columns, "pid"]

    def _keep(self, data: Any, family: str, columns: Sequence[str] | None) -> Any:
        if "pid" not in data.schema.names:
            return data
        data = data.filter(pc.equal(data.column("pid"), pa.scalar(self.vm["pid"], data.schema.field("pid").type)))
        if columns is not None and "pid" not in columns:
            data = data.select(list(columns))
        return data

    def iter_tables(self, family: str, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        for table in self._cap.iter_tables(family, self._read_columns(family, columns)):
            kept = self._keep(table, family, columns)
            if kept.num_rows:
                yield kept

    def iter_batches(self, family: str, columns: Sequence[str] | None = None,
                     batch_rows: int = 1 << 20) -> Iterator[pa.RecordBatch]:
        for batch in self._cap.iter_batches(family, self._read_columns(family, columns), batch_rows=batch_rows):
            kept = self._keep(batch, family, columns)
            if kept.num_rows:
                yield kept

    # Capture's own, over this VM's iter_tables (the rest they use comes from the wrapped capture).
    table = Capture.table
    dataframe = Capture.dataframe

    def rows(self, family: str) -> int:
        if not self._has_pid(family):
            return self._cap.rows(family)
        return sum(t.num_rows for t in self.iter_tables(family, ["pid"]))

    def __repr__(self) -> str:
        return f"VmCapture({str(self.path)!r}, pid={self.vm['pid']})"


_COUNTED = (("walk", "walks"), ("walk_element", "walk_elements"), ("mmu", "mmu_events"), ("ioctl", "ioctls"),
            ("lock", "lock_waits"), ("stage2_walk", "stage2_walks"))
#: The families KVM_RUN time is read from, and their time column.
_RUN_TIME = {"ioctl_summary": "total_ns", "ioctl": "duration_ns"}


def _add(totals: dict[int, int], pids: np.ndarray, weights: np.ndarray | None = None) -> None:
    """Add to ``totals`` the rows (or the ``weights``) per pid."""
    if len(pids) == 0:
        return
    values, codes = np.unique(pids, return_inverse=True)
    sums = np.bincount(codes, weights=weights) if weights is not None else np.bincount(codes)
    for pid, total in zip(values.tolist(), sums.tolist()):
        totals[int(pid)] = totals.get(int(pid), 0) + int(total)


def vm_rows(cap: Any) -> pd.DataFrame:
    """Per recorded process: ``pid``, ``comm``, ``name`` and its rows of each event family the capture
    has (``walks``, ``walk_elements``, ``mmu_events``, ``ioctls``, ``lock_waits``, ``stage2_walks``),
    plus ``kvm_run_ns`` (KVM_RUN time from ``ioctl_summary`` and streamed ``ioctl`` rows); each family
    read once."""
    vms = capture_vms(cap.manifest)
    pids = [vm["pid"] for vm in vms]
    out = pd.DataFrame({"pid": pids, "comm": [vm.get("comm") or "" for vm in vms],
                        "name": [vm.get("name") or "" for vm in vms]})
    families = set(cap.families())
    counted = dict(_COUNTED)
    run: dict[int, int] = {}
    for family in [f for f, _ in _COUNTED] + ["ioctl_summary"]:
        names = cap.schema(family).names if family in families else ()
        count = family in counted and "pid" in names
        value = _RUN_TIME.get(family) if {"pid", "cmd_name", _RUN_TIME.get(family)} <= set(names) else None
        if not count and value is None:
            continue
        rows: dict[int, int] = {}
        for batch in cap.iter_batches(family, ["pid"] + (["cmd_name", value] if value else [])):
            if count:
                _add(rows, batch.column("pid").to_numpy())
            if value:
                runs = rows_where(batch, "cmd_name", ["KVM_RUN"])
                times = runs.column(value).to_numpy(zero_copy_only=False)
                known = ~np.isnan(times) if times.dtype.kind == "f" else np.ones(len(times), bool)
                _add(run, runs.column("pid").to_numpy()[known], times[known].astype(np.float64))
        if count:
            out[counted[family]] = [rows.get(pid, 0) for pid in pids]
    out["kvm_run_ns"] = [run.get(pid, 0) for pid in pids]
    return out
