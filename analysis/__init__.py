"""Offline analyses of tracekit captures (installed as ``tracekit.analysis``).

Every module here is a pure function from a capture (or from its tables) to pandas DataFrames with
documented columns and units. Nothing in this package touches the kernel or imports bcc: analyses run
on any machine that can read the Parquet files. Modules:

- :mod:`~tracekit.analysis.common`: column loading, vCPU mapping, nearest-rank percentiles;
- :mod:`~tracekit.analysis.phases`: workload / selftest phases on CLOCK_MONOTONIC, cutting by phase;
- :mod:`~tracekit.analysis.walks`: x86 guest walks and arm64 stage-2 walks, depth distributions;
- :mod:`~tracekit.analysis.crosscheck`: observed walks against the reference model;
- :mod:`~tracekit.analysis.skiplevels`: does the split walker skip levels (yes / no / not enough data);
- :mod:`~tracekit.analysis.locks`: lock contention per lock, KVM operation, vCPU and mode;
- :mod:`~tracekit.analysis.ioctls` and :mod:`~tracekit.analysis.splits`: ioctl and split latency;
- :mod:`~tracekit.analysis.compare`: A/B comparison of repeated runs;
- :mod:`~tracekit.analysis.report`, :mod:`~tracekit.analysis.perfetto`: HTML report, Perfetto trace.
"""
