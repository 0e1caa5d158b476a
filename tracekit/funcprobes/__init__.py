"""Function-probe families of tracekit: ``stage2`` (arm64 KVM stage-2) and ``tdp`` (x86 TDP MMU).

Contract: importing this package imports nothing beyond the standard library (the lab guests import
it). Modules: :mod:`~tracekit.funcprobes.spec` (probe specifications, tracefs ``kprobe_events`` lines),
:mod:`~tracekit.funcprobes.stage2_probes` / :mod:`~tracekit.funcprobes.tdp_probes` (the families),
:mod:`~tracekit.funcprobes.kallsyms` (symbol resolution with compiler clones and inlined functions),
:mod:`~tracekit.funcprobes.availability` (capability detection and backend choice),
:mod:`~tracekit.funcprobes.btf_offsets` (struct members from BTF for the bcc programs); with pyarrow:
:mod:`~tracekit.funcprobes.capture_schemas` (capture schemas), :mod:`~tracekit.funcprobes.table_builders` (vectorised
table builders),
:mod:`~tracekit.funcprobes.bcc_programs` (source, attach, decode ring records; compiled by the
recorder's :mod:`tracekit.recorder.backend_bcc`) and
:mod:`~tracekit.funcprobes.funcprobe_families` (the ``stage2``/``tdp`` families of ``tracekit record`` and their
decoder, which the labs use too).
"""
