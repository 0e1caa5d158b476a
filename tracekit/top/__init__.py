"""``tracekit top``: a live per-VM and per-vCPU view of KVM MMU activity, counted in the kernel.

Contract: :mod:`.counters` defines what one reading of the counters holds (per thread, per
dirty-log ioctl kind) and accumulates decoded events into it (the tracefs fallback);
:mod:`.view` turns two readings into the rows shown (rates over the interval, log2-histogram
percentiles, KVM_RUN share) and renders them as text or JSON; :mod:`.sources` reads the counters
from a bcc program (``probes/top.bpf.c``) or a tracefs instance; :mod:`.cli` is the command.
"""
