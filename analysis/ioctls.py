"""KVM ioctl latency: per ioctl kind, per memslot and per memslot flag change.

:func:`ioctl_latency` (per kind), :func:`memslot_latency` (per memslot ioctl, slot and change) and
:func:`memslot_flag_changes` (what each memslot-setting call changed) read the ``ioctl`` family and
optionally ``ioctl_summary`` (commands aggregated in the kernel, KVM_RUN by default). Calls whose exit was
not recorded (null ``duration_ns``: still running when the recording stopped) are left out. Times in ns.
"""

from __future__ import annotations

import errno as errno_names

import numpy as np
import pandas as pd

from tracekit.analysis.common import PERCENTILES, latency_summary

__all__ = ["MEMSLOT_IOCTLS", "DIRTY_LOG_IOCTLS", "MEMSLOT_OPERATIONS", "memslot_flag_changes", "ioctl_latency", "memslot_latency"]

MEMSLOT_IOCTLS = ("KVM_SET_USER_MEMORY_REGION", "KVM_SET_USER_MEMORY_REGION2")
DIRTY_LOG_IOCTLS = ("KVM_GET_DIRTY_LOG", "KVM_CLEAR_DIRTY_LOG")
_LOG_DIRTY = 1
#: memslot change -> the KVM operation it is (lock waits inside the call are labelled with it).
MEMSLOT_OPERATIONS = {"create": "memslot-create", "delete": "memslot-delete", "move": "memslot-move",
                      "log-dirty-on": "dirty-log-enable", "log-dirty-off": "dirty-log-disable",
                      "flags": "memslot-flags", "same": "memslot-update"}
_CHANGE_COLUMNS = ["ts_ns", "tid", "duration_ns", "cmd_name", "slot", "old_flags", "flags", "change"]


def memslot_flag_changes(ioctl: pd.DataFrame) -> pd.DataFrame:
    """What each memslot-setting ioctl changed.

    Labels each KVM_SET_USER_MEMORY_REGION(2) call as KVM's ``kvm_set_memory_region`` decides it: ``create``
    (first call for the slot), ``delete`` (``memory_size == 0``), ``move`` (``guest_phys_addr`` differs:
    KVM_MR_MOVE), ``log-dirty-on`` / ``log-dirty-off`` (bit 0, KVM_MEM_LOG_DIRTY_PAGES, toggled), ``flags``
    (another flag changed), ``same``. Columns: ts_ns, tid, duration_ns, cmd_name, slot, old_flags, flags,
    change; the index is the call's index in ``ioctl``. :data:`MEMSLOT_OPERATIONS` names the operation of each
    change.
    """
    if "slot" not in ioctl.columns or "flags" not in ioctl.columns:
        return pd.DataFrame(columns=_CHANGE_COLUMNS)
    sel = ioctl[ioctl["cmd_name"].isin(MEMSLOT_IOCTLS) & ioctl["slot"].notna() & ioctl["duration_ns"].notna()]
    if "ret" in sel.columns:
        sel = sel[sel["ret"].fillna(0) >= 0]
    sel = sel.sort_values("ts_ns", kind="stable")
    sizes = _optional(sel, "memory_size")
    bases = _optional(sel, "guest_phys_addr")
    rows = []
    current: dict[int, tuple[int, int | None]] = {}  # slot -> (flags, guest_phys_addr)
    for ts, tid, dur, name, slot, flags, size, base in zip(sel["ts_ns"], sel.get("tid", [0] * len(sel)),
                                                           sel["duration_ns"], sel["cmd_name"], sel["slot"],
                                                           sel["flags"], sizes, bases):
        slot = int(slot)
        flags = 0 if flags is None or pd.isna(flags) else int(flags)
        base = None if base is None or pd.isna(base) else int(base)
        old, old_base = current.get(slot, (None, None))
        if size is not None and not pd.isna(size) and int(size) == 0:
            change = "delete"
            current.pop(slot, None)
        else:
            if old is None:
                change = "create"
            elif base is not None and old_base is not None and base != old_base:
                change = "move"
            elif (old ^ flags) & _LOG_DIRTY:
                change = "log-dirty-on" if flags & _LOG_DIRTY else "log-dirty-off"
            elif old != flags:
                change = "flags"
            else:
                change = "same"
            current[slot] = (flags, base)
        rows.append((int(ts), int(tid), int(dur), name, slot, old, flags, change))
    frame = pd.DataFrame(rows, columns=_CHANGE_COLUMNS, index=sel.index)
    frame["old_flags"] = frame["old_flags"].astype("Int64")
    return frame


def _optional(frame: pd.DataFrame, column: str) -> list:
    return frame[column].tolist() if column in frame.columns else [None] * len(frame)


def _errno_text(counts: dict) -> str:
    """``{4: 6, None: 1}`` -> ``"EINTR 6, ? 1"`` (most frequent first; None = errno not kept)."""
    parts = sorted(((n, code) for code, n in counts.items() if n),
                   key=lambda item: (-item[0], 1 << 30 if item[1] is None else item[1]))
    return ", ".join(f"{'?' if code is None else errno_names.errorcode.get(int(code), str(int(code)))} {int(n)}"
                     for n, code in parts)


def ioctl_latency(ioctl: pd.DataFrame, summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """Latency per ioctl kind, streamed events first, then aggregated-only kinds.

    One row per ``cmd_name``: ``count``, ``errors`` (ret < 0), ``errnos`` (the failures by errno,
    ``"EINTR 6, EAGAIN 1"``; ``"? N"`` for aggregated failures of a capture that did not keep the errno),
    ``total_ns``, ``mean_ns``, ``p50_ns``, ``p90_ns``, ``p99_ns``, ``max_ns`` and ``source`` (``events`` or
    ``aggregated``: from ``ioctl_summary``, where percentiles are null). ``ioctl`` holds ``ts_ns`` (entry),
    ``duration_ns``, ``tid``, ``cmd_name``, ``ret`` and the nullable decoded ``slot``, ``flags``,
    ``memory_size``; ``partial`` (``began_before``, ``unfinished`` or empty) is optional.
    """
    events = ioctl.assign(cmd_name=ioctl["cmd_name"].fillna("?"))
    table = latency_summary(events, ["cmd_name"])
    texts: dict[str, str] = {}
    if "ret" in events.columns and len(table):
        failed = events[events["ret"].fillna(0) < 0]
        table.insert(2, "errors", table["cmd_name"].map(failed.groupby("cmd_name").size()).fillna(0).astype(np.int64))
        for name, rets in failed.groupby("cmd_name")["ret"]:
            texts[name] = _errno_text((-rets.astype(np.int64)).value_counts().to_dict())
    else:
        table.insert(2, "errors", pd.Series(np.zeros(len(table), np.int64)))
    table.insert(3, "errnos", [texts.get(name, "") for name in table["cmd_name"]])
    if "partial" in events.columns and len(table):
        cut = (events["partial"].fillna("").astype(str) != "").groupby(events["cmd_name"]).sum()
        table.insert(4, "partial", table["cmd_name"].map(cut).fillna(0).astype(np.int64))
    else:
        table.insert(4, "partial", pd.Series(np.zeros(len(table), np.int64)))
    table["source"] = "events"
    if summary is not None and len(summary):
        summary = summary.assign(cmd_name=summary["cmd_name"].fillna("?"))
        if "partial" not in summary.columns:
            summary = summary.assign(partial=0)
        agg = summary.groupby("cmd_name", sort=True).agg(
            count=("count", "sum"), errors=("errors", "sum"), partial=("partial", lambda v: v.fillna(0).sum()),
            total_ns=("total_ns", "sum"), max_ns=("max_ns", "max"))
        agg = agg.reset_index()
        agg = agg[~agg["cmd_name"].isin(table["cmd_name"])].copy()  # kinds streamed as events are in the table already
        agg["errnos"] = [_errno_text(_summary_errnos(summary[summary["cmd_name"] == name])) for name in agg["cmd_name"]]
        agg["mean_ns"] = agg["total_ns"] / agg["count"].where(agg["count"] > 0)
        for q in PERCENTILES:
            agg[f"p{q}_ns"] = np.nan
        agg["source"] = "aggregated"
        table = pd.concat([table, agg[table.columns]], ignore_index=True)
    return table.reset_index(drop=True)


def _summary_errnos(rows: pd.DataFrame) -> dict:
    """Failures by errno of ``ioctl_summary`` rows (rows without an ``errno`` count under None)."""
    if "errno" not in rows.columns:
        return {None: int(rows["errors"].fillna(0).sum())}
    known = rows[rows["errno"].notna()]
    out = {None: int(rows.loc[rows["errno"].isna(), "errors"].fillna(0).sum())}
    for code, n in known[known["errno"] != 0].groupby("errno")["count"].sum().items():
        out[int(code)] = int(n)
    return out


def memslot_latency(ioctl: pd.DataFrame) -> pd.DataFrame:
    """Latency of memslot and dirty-log ioctls per (cmd_name, slot, change).

    One row per (``cmd_name``, ``slot``, ``change``) for the memslot and dirty-log ioctls, with the statistics
    of :func:`ioctl_latency`.
    """
    changes = memslot_flag_changes(ioctl)[["cmd_name", "slot", "change", "duration_ns"]]
    dirty = ioctl[ioctl["cmd_name"].isin(DIRTY_LOG_IOCTLS)]
    if "slot" in dirty.columns:
        dirty = dirty.assign(slot=dirty["slot"].fillna(-1).astype(np.int64), change="")
    else:
        dirty = dirty.assign(slot=-1, change="")
    frame = pd.concat([changes.reset_index(drop=True), dirty[["cmd_name", "slot", "change", "duration_ns"]]],
                      ignore_index=True)
    frame["slot"] = frame["slot"].astype(np.int64)
    return latency_summary(frame, ["cmd_name", "slot", "change"])
