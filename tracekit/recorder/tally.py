"""Rows recorded per VM, for the table ``tracekit record`` prints when it ends (like bcc's tools).

Contract: :class:`VmTally` counts, per process id, the rows of each recorded table it is given
(:meth:`VmTally.add`, any Arrow table with a ``pid`` column) and the KVM_RUN calls and time of the
``ioctl_summary`` tables (or of streamed ``ioctl`` rows); :meth:`VmTally.render` draws one line per
recorded VM (pid, process, guest name, then walks, walk elements, mmu events, ioctls, lock waits,
KVM_RUN calls and time). Counting uses Arrow's kernels only (no Python loop over rows).
"""

from __future__ import annotations

import sys
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tracekit.render import table_text

__all__ = ["VmTally"]

_COLUMNS = (("walk", "walks"), ("walk_element", "elements"), ("mmu", "mmu"), ("ioctl", "ioctls"), ("lock", "lock waits"))


class VmTally:
    """Rows per (pid, table) and KVM_RUN per pid (see the module docstring)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, str], int] = {}
        self.runs: dict[int, list[int]] = {}  # pid -> [calls, total ns]

    def add(self, name: str, table: pa.Table) -> None:
        if "pid" not in table.column_names or not table.num_rows:
            return
        if name == "ioctl_summary" or (name == "ioctl" and "cmd_name" in table.column_names):
            self._add_runs(name, table)
        if name == "ioctl_summary":
            return
        for item in pc.value_counts(table.column("pid")).to_pylist():
            key = (int(item["values"]), name)
            self.rows[key] = self.rows.get(key, 0) + int(item["counts"])

    def _add_runs(self, name: str, table: pa.Table) -> None:
        names = table.column("cmd_name")
        if pa.types.is_dictionary(names.type):
            names = names.cast(pa.string())
        runs = table.filter(pc.equal(names, "KVM_RUN"))
        if not runs.num_rows:
            return
        count = runs.column("count") if name == "ioctl_summary" else pa.array([1] * runs.num_rows)
        total = runs.column("total_ns" if name == "ioctl_summary" else "duration_ns")
        for pid, calls, ns in zip(runs.column("pid").to_pylist(), count.to_pylist(), total.to_pylist()):
            entry = self.runs.setdefault(int(pid), [0, 0])
            entry[0] += int(calls or 0)
            entry[1] += int(ns or 0)

    def render(self, vms: list[dict[str, Any]]) -> str:
        """One line per VM (``{"pid", "comm", "name"}``), aligned under a header."""
        header = ["VM", *(label for _, label in _COLUMNS), "KVM_RUN"]
        lines = []
        for vm in vms:
            pid = vm["pid"]
            run = self.runs.get(pid)
            label = f"{pid} {vm.get('comm') or ''}" + (f" ({vm['name']})" if vm.get("name") else "")
            lines.append([label, *(f"{self.rows.get((pid, name), 0):,}" for name, _ in _COLUMNS),
                          f"{run[0]:,} calls, {run[1] / 1e9:.2f} s" if run else "-"])
        return table_text(header, lines, align=["left", *("right" for _ in header[1:])], stream=sys.stderr)
