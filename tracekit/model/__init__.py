"""The reference page-table model: KVM arm64 stage-2, x86 TDP and x86 guest tables.

Each module mirrors one piece of kernel code, named in docs/model.md, and counts what its walks do
(:mod:`~tracekit.model.accounting`). Importing the package imports only the standard library, so
:mod:`tracekit.model.x86` runs inside a minimal guest without numpy.
"""
