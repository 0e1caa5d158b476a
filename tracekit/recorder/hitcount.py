"""A count-only BPF program: the baseline the recorder is measured and checked against.

:class:`HitCounter` adds 1 to a per-CPU counter per tracepoint hit of one process and records nothing else:
the benchmark's "count-only" mode (the cost of attaching at all) and the live tests' check of a capture's
rows against the hits the kernel saw.
"""

from __future__ import annotations

from typing import Any, Collection, Sequence

from tracekit.recorder.backend_bcc import import_bcc

__all__ = ["HitCounter", "program_text"]


def program_text(tracepoints: Sequence[str], tgid: int, clocked: Collection[str] = ()) -> str:
    """The bcc source counting the hits of ``tracepoints`` by process ``tgid`` in ``hits[i]``; the
    programs of ``clocked`` ones also add a clock read to ``clock_sink`` (so it is not optimised out)."""
    text = (f"typedef __u64 gpa_t;\nBPF_PERCPU_ARRAY(hits, u64, {max(len(tracepoints), 1)});\n"
            "BPF_PERCPU_ARRAY(clock_sink, u64, 1);\n")
    for i, tracepoint in enumerate(tracepoints):
        system, event = tracepoint.split(":")
        clock = " u32 z = 0; u64 *s = clock_sink.lookup(&z); if (s) *s += bpf_ktime_get_ns();" \
            if tracepoint in clocked else ""
        text += (f"TRACEPOINT_PROBE({system}, {event}) {{ if ((bpf_get_current_pid_tgid() >> 32) != {tgid})"
                 f" return 0; u32 k = {i}; u64 *c = hits.lookup(&k); if (c) (*c)++;{clock} return 0; }}\n")
    return text


class HitCounter:
    """Hits of ``tracepoints`` by process ``tgid``, counted in the kernel from construction on.

    :meth:`hits` returns ``{tracepoint: hits summed over CPUs}``; :meth:`close` detaches it (also on leaving
    the ``with`` block). ``clocked`` names tracepoints whose program also reads ``bpf_ktime_get_ns()`` once per
    hit (into a per-CPU sink), as the recorder's programs do: the benchmark's "count+clock" mode. Raises
    :class:`tracekit.errors.MissingCapability` without bcc.
    """

    def __init__(self, tracepoints: Sequence[str], tgid: int, clocked: Collection[str] = ()):
        self.tracepoints = list(tracepoints)
        self.bpf: Any = import_bcc().BPF(text=program_text(self.tracepoints, tgid, clocked).encode(), cflags=["-w"])

    def hits(self) -> dict[str, int]:
        table = self.bpf[b"hits"]
        return {tp: int(sum(table.getvalue(table.Key(i)))) for i, tp in enumerate(self.tracepoints)}

    def close(self) -> None:
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None

    def __enter__(self) -> "HitCounter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
