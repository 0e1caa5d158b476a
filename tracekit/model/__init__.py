"""The reference page-table model (KVM arm64 stage-2 and x86 guest/TDP tables).

Contract: importing this package imports nothing beyond the standard library, so
``tracekit.model.x86`` stays usable inside a minimal guest without numpy. Submodules:
``geometry`` (levels, sizes), ``stage2`` (sparse arm64 tables and the walker with its
accounting), ``split`` / ``dirtylog`` / ``coalesce`` (operations), ``x86`` (guest tables),
``tdp`` (x86 TDP split), ``analytic`` (closed-form accounting for large memslots).
"""
