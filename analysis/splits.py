"""Huge-page split latency: per dirty-log enable and per CLEAR ioctl, per chunk and per block.

:func:`split_ioctls` puts each enable and CLEAR ioctl beside the splits done inside it,
:func:`split_ioctl_summary` sums them per kind, :func:`split_call_summary` gives the split calls' own
latency. Inputs: ``ioctl``, optionally ``split`` (function probes: one row per split call, a chunk on
arm64's ``kvm_pgtable_stage2_split``, a block on x86; ``duration_ns`` -1 = return not seen) and ``mmu`` (the
x86 tracepoint ``kvm_mmu_split_huge_page``, one per huge SPTE split, no duration). All times in ns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracekit.analysis.common import count_by, latency_summary
from tracekit.analysis.ioctls import memslot_flag_changes

__all__ = ["SPLIT_EVENT", "split_ioctls", "split_ioctl_summary", "split_call_summary", "split_events"]

SPLIT_EVENT = "kvm_mmu_split_huge_page"
_IOCTL_COLUMNS = ["kind", "ts_ns", "duration_ns", "slot", "tid", "splits", "split_ns"]


def split_events(split: pd.DataFrame | None, mmu: pd.DataFrame | None) -> pd.DataFrame:
    """Split calls (with durations) and split tracepoint events (without) as one frame:
    ``source`` (``call`` / ``event``), ``ts_ns``, ``tid``, ``level``, ``duration_ns`` (NaN for events)."""
    frames = []
    if split is not None and len(split):
        frames.append(pd.DataFrame({"source": "call", "ts_ns": split["ts_ns"].to_numpy(np.int64),
                                    "tid": split["tid"].to_numpy(np.int64),
                                    "level": split["level"].to_numpy() if "level" in split else np.nan,
                                    "duration_ns": np.where(split["duration_ns"].to_numpy(np.float64) < 0, np.nan,
                                                            split["duration_ns"].to_numpy(np.float64))}))
    if mmu is not None and len(mmu):
        ev = mmu[mmu["event"] == SPLIT_EVENT]
        if len(ev):
            frames.append(pd.DataFrame({"source": "event", "ts_ns": ev["ts_ns"].to_numpy(np.int64),
                                        "tid": ev["tid"].to_numpy(np.int64),
                                        "level": ev["level"].to_numpy() if "level" in ev else np.nan,
                                        "duration_ns": np.nan}))
    if not frames:
        return pd.DataFrame({"source": pd.Series(dtype=object), "ts_ns": pd.Series(dtype="int64"),
                             "tid": pd.Series(dtype="int64"), "level": pd.Series(dtype="float64"),
                             "duration_ns": pd.Series(dtype="float64")})
    return pd.concat(frames, ignore_index=True).sort_values("ts_ns", kind="stable").reset_index(drop=True)


def split_ioctls(ioctl: pd.DataFrame, split: pd.DataFrame | None = None, mmu: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every dirty-log enable and CLEAR ioctl with the splits done inside it.

    One row per dirty-log enable (a KVM_SET_USER_MEMORY_REGION(2) that turns LOG_DIRTY on) and per
    KVM_CLEAR_DIRTY_LOG: ``kind`` (``enable`` / ``clear``), ``ts_ns``, ``duration_ns``, ``slot``, ``tid``,
    ``splits`` (split calls plus split events of the same thread inside the ioctl's span), ``split_ns`` (summed
    split-call durations; 0 without function probes).
    """
    changes = memslot_flag_changes(ioctl)
    enable = changes[changes["change"] == "log-dirty-on"]
    clear = ioctl[(ioctl["cmd_name"] == "KVM_CLEAR_DIRTY_LOG") & ioctl["duration_ns"].notna()]
    rows = pd.concat([
        pd.DataFrame({"kind": "enable", "ts_ns": enable["ts_ns"].to_numpy(np.int64),
                      "duration_ns": enable["duration_ns"].to_numpy(np.int64),
                      "slot": enable["slot"].to_numpy(np.int64), "tid": enable["tid"].to_numpy(np.int64)}),
        pd.DataFrame({"kind": "clear", "ts_ns": clear["ts_ns"].to_numpy(np.int64),
                      "duration_ns": clear["duration_ns"].to_numpy(np.int64),
                      "slot": (clear["slot"].fillna(-1) if "slot" in clear else pd.Series(-1, index=clear.index)
                               ).to_numpy(np.int64),
                      "tid": clear["tid"].to_numpy(np.int64)}),
    ], ignore_index=True).sort_values("ts_ns", kind="stable").reset_index(drop=True)
    events = split_events(split, mmu)
    splits = np.zeros(len(rows), np.int64)
    split_ns = np.zeros(len(rows), np.int64)
    row_tids = rows["tid"].to_numpy(np.int64)
    row_starts = rows["ts_ns"].to_numpy(np.int64)
    row_ends = row_starts + rows["duration_ns"].to_numpy(np.int64)
    for tid, group in events.groupby("tid"):
        ts = group["ts_ns"].to_numpy(np.int64)
        dur = np.nan_to_num(group["duration_ns"].to_numpy(np.float64)).astype(np.int64)
        cum = np.concatenate(([0], np.cumsum(dur)))
        mine = np.flatnonzero(row_tids == tid)
        lo = np.searchsorted(ts, row_starts[mine], side="left")
        hi = np.searchsorted(ts, row_ends[mine], side="left")
        splits[mine] += hi - lo
        split_ns[mine] += cum[hi] - cum[lo]
    rows["splits"] = splits
    rows["split_ns"] = split_ns
    return rows[_IOCTL_COLUMNS]


def split_ioctl_summary(per_ioctl: pd.DataFrame) -> pd.DataFrame:
    """Per kind: latency statistics, total splits and splits per ioctl.

    Per ``kind``: the latency statistics of :func:`tracekit.analysis.common.latency_summary` plus ``splits``
    (total) and ``splits_per_ioctl``.
    """
    table = latency_summary(per_ioctl, ["kind"])
    totals = per_ioctl.groupby("kind")["splits"].sum()
    table["splits"] = table["kind"].map(totals).fillna(0).astype(np.int64)
    table["splits_per_ioctl"] = table["splits"] / table["count"].where(table["count"] > 0)
    return table


def split_call_summary(events: pd.DataFrame) -> pd.DataFrame:
    """Per (source, level): count and duration statistics (durations only for calls).

    Per (``source``, ``level``) of the split calls / events: count and, for calls with durations, total, mean,
    p50/p90/p99, max.
    """
    if events.empty:
        return latency_summary(events.assign(level=pd.Series(dtype="int64")), ["source", "level"])
    frame = events.assign(level=events["level"].astype("float64"))
    counts = count_by(frame, ["source", "level"])
    timed = latency_summary(frame, ["source", "level"]).drop(columns="count")
    for part in (counts, timed):
        part["level"] = part["level"].astype("float64")
    out = counts.merge(timed, on=["source", "level"], how="left")
    out["level"] = out["level"].astype("Int64")
    return out
