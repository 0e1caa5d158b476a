"""Ring records that hold a batch of events (the in-kernel batching of ``probes/tk_bpf.h``).

A batch record is ``struct tk_batch_header`` then ``TK_BATCH_EVENTS`` fixed-size events, of which
the first ``count`` are valid. :func:`batch_dtype` builds its dtype, :func:`unbatch` returns the valid
events of many records at once (a count out of range is a :class:`tracekit.errors.RecorderError`),
and :func:`failure_rows` turns ``struct tk_ring_failure`` records into plain dicts.
"""

from __future__ import annotations

import numpy as np

from tracekit import schema as S
from tracekit.errors import RecorderError

__all__ = ["BATCH_EVENTS", "BATCH_HEADER_DTYPE", "RING_FAILURE_DTYPE", "batch_dtype", "is_batched", "unbatch",
           "failure_rows"]

#: Events per batch unless the recorder passes another TK_BATCH_EVENTS.
BATCH_EVENTS = S.TK_BATCH_EVENTS
BATCH_HEADER_DTYPE = S.TK_BATCH_HEADER_DTYPE
RING_FAILURE_DTYPE = S.TK_RING_FAILURE_DTYPE


def batch_dtype(event: np.dtype, events: int = BATCH_EVENTS) -> np.dtype:
    """The ring-record dtype of a batch of ``events`` events of dtype ``event``."""
    if events <= 0 or events & (events - 1):
        raise RecorderError(f"batch size {events} is not a power of two")
    event = np.dtype(event)
    return np.dtype({"names": ["bh", "events"], "formats": [BATCH_HEADER_DTYPE, (event, (events,))],
                     "offsets": [0, BATCH_HEADER_DTYPE.itemsize],
                     "itemsize": BATCH_HEADER_DTYPE.itemsize + events * event.itemsize})


def is_batched(records: np.ndarray) -> bool:
    """True when ``records`` are batch records (a ``bh`` header and an ``events`` array field)."""
    names = records.dtype.names or ()
    return names == ("bh", "events")


def unbatch(records: np.ndarray) -> np.ndarray:
    """The valid events of batch records, record by record, each in slot order (a new array).

    The events are moved as bytes (one row copy per record, then one row gather when some batches are
    partial): numpy copies structured items one by one, several times slower."""
    records = np.ascontiguousarray(records)
    event = records.dtype.fields["events"][0].base
    per = records.dtype.fields["events"][0].shape[0]
    offset = records.dtype.fields["events"][1]
    counts = records["bh"]["count"].astype(np.int64)
    if len(counts) and (counts.min() < 0 or counts.max() > per):
        bad = int(counts[(counts < 0) | (counts > per)][0])
        raise RecorderError(f"batch record claims {bad} events where at most {per} fit")
    raw = records.view(np.uint8).reshape(len(records), records.dtype.itemsize)[:, offset:offset + per * event.itemsize]
    slots = np.ascontiguousarray(raw).reshape(len(records) * per, event.itemsize)
    if not len(counts) or int(counts.min()) != per:  # partial batches: keep each record's first count slots
        slots = slots[np.flatnonzero((np.arange(per) < counts[:, None]).ravel())]
    return slots.view(event).reshape(-1)


def failure_rows(records: np.ndarray, probes: tuple[str, ...]) -> list[dict]:
    """Plain dicts of ``RING_FAILURE_DTYPE`` records; ``probe`` named from ``probes`` by index."""
    out = []
    for r in records:
        probe = int(r["probe"])
        out.append({
            "ts_ns": int(r["ts_ns"]), "cpu": int(r["cpu"]), "tid": int(r["tid"]),
            "probe": probes[probe] if probe < len(probes) else str(probe),
            "events": int(r["events"]), "ret": int(r["ret"]), "nested": bool(r["nested"]),
            "avail_data": int(r["avail_data"]), "ring_size": int(r["ring_size"]),
            "cons_pos": int(r["cons_pos"]), "prod_pos": int(r["prod_pos"]),
        })
    return out
