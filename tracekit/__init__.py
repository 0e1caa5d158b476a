"""tracekit: see what KVM's second-stage page-table code does.

Record KVM tracepoints (and, where the kernel allows, function probes) of a live VM into a
self-describing Parquet capture, then analyse it offline against a reference page-table model.
"""

__version__ = "0.1.0"
