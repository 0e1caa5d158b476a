"""The reference page-table model (KVM arm64 stage-2, x86 TDP and x86 guest tables).

Contract: importing this package imports nothing beyond the standard library, so
``tracekit.model.x86`` stays usable inside a minimal guest without numpy. Submodules:
``geometry`` (levels, sizes), ``accounting`` (per-level walk counters), ``stage2`` (sparse arm64
tables and the walker), ``stage2_ops`` (map, unmap, write-protect, relax), ``split`` (arm64 eager
split), ``dirty_memslot`` (dirty-log enable and CLEAR on a memslot), ``coalesce`` (block rebuild orders), ``x86`` (guest
tables and walks), ``tdp`` (x86 TDP split), ``analytic`` (closed-form split accounting for any
memslot size), ``cli`` (``tracekit model``). See docs/model.md.
"""
