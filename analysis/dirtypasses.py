"""A KVM selftest's dirty passes: the time it printed for each against the time tracekit measured.

dirty_log_perf_test times pass N on its main thread, from a clock read just before it releases the vCPUs
(``iteration++``) to one just after it has seen every vCPU report the pass done, busy-waiting in between
without a system call. The pass therefore lies between the end of the main thread's dirty-log call before
it (the enable, or iteration N-1's last CLEAR / GET) and the start of iteration N's first GET:
:func:`dirty_pass_times` measures that gap (``measured_ns``), which holds the printed time and only the
main thread's own printing and clock reads besides (``excess_ns``, never negative). Where the capture has
each KVM_RUN call (``--stream-ioctl KVM_RUN``), ``vcpu_ns`` spans the vCPUs' calls in the gap (each vCPU's
run of the pass, then its immediate-exit KVM_RUN after reading the ucall) and ``handover_ns`` is what the
printed time holds outside them: the vCPUs noticing the new iteration and the main thread noticing they
finished, two busy-waits that a thread waiting for a CPU stretches.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracekit.analysis.phases import anchor_bursts

__all__ = ["DIRTY_PASS_COLUMNS", "dirty_pass_times"]

DIRTY_PASS_COLUMNS = ["phase", "iteration", "printed_ns", "start_ns", "end_ns", "measured_ns", "excess_ns", "vcpus",
                      "vcpu_ns", "handover_ns"]


def dirty_pass_times(parsed: pd.DataFrame, ioctl: pd.DataFrame) -> pd.DataFrame:
    """One row per printed dirty pass whose two bounding dirty-log bursts the capture holds (see the module
    docstring); ``parsed`` as :func:`tracekit.analysis.phases.parse_selftest_output` returns it, ``ioctl``
    with ``ts_ns``, ``duration_ns``, ``cmd_name`` (and ``tid``, ``slot``, ``flags``, ``ret`` where known).
    ``vcpus``, ``vcpu_ns`` and ``handover_ns`` are null where no KVM_RUN call of the pass was recorded."""
    spans, _note = anchor_bursts(parsed, ioctl)
    names, iterations, printed = parsed["name"].tolist(), parsed["iteration"].tolist(), parsed["duration_ns"].tolist()
    runs = ioctl[(ioctl["cmd_name"] == "KVM_RUN") & ioctl["duration_ns"].notna()]
    run_start = runs["ts_ns"].to_numpy(np.int64)
    run_end = run_start + runs["duration_ns"].to_numpy(np.int64)
    run_tid = runs["tid"].to_numpy(np.int64) if "tid" in runs.columns else np.zeros(len(runs), np.int64)
    rows = []
    for i, name in enumerate(names):
        if name != "dirty-memory" or i == 0 or i + 1 == len(names):
            continue
        before, after = spans[i - 1], spans[i + 1]
        if before is None or after is None or names[i + 1] != "get-dirty-log":
            continue
        start, end = before[1], after[0]
        inside = (run_start >= start) & (run_start < end)
        row = {"phase": f"dirty-memory#{iterations[i]}", "iteration": iterations[i], "printed_ns": int(printed[i]),
               "start_ns": start, "end_ns": end, "measured_ns": end - start,
               "excess_ns": end - start - int(printed[i]), "vcpus": pd.NA, "vcpu_ns": pd.NA, "handover_ns": pd.NA}
        if inside.any():
            vcpu_ns = int(run_end[inside].max() - run_start[inside].min())
            row.update(vcpus=len(np.unique(run_tid[inside])), vcpu_ns=vcpu_ns, handover_ns=int(printed[i]) - vcpu_ns)
        rows.append(row)
    table = pd.DataFrame(rows, columns=DIRTY_PASS_COLUMNS)
    for column in DIRTY_PASS_COLUMNS[1:]:
        table[column] = table[column].astype("Int64")
    return table
