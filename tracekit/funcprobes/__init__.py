"""Function-probe families of tracekit: ``stage2`` (arm64 KVM stage-2) and ``tdp`` (x86 TDP MMU).

Contract: importing this package imports nothing beyond the standard library (the lab guests import
it). Modules: :mod:`~tracekit.funcprobes.spec` (probe specifications, tracefs ``kprobe_events`` lines),
:mod:`~tracekit.funcprobes.stage2` / :mod:`~tracekit.funcprobes.tdp` (the families),
:mod:`~tracekit.funcprobes.kallsyms` (symbol resolution with compiler clones and inlined functions),
:mod:`~tracekit.funcprobes.availability` (capability detection and backend choice),
:mod:`~tracekit.funcprobes.btf_offsets` (struct members from BTF for the bcc programs); with pyarrow:
:mod:`~tracekit.funcprobes.families` (capture schemas), :mod:`~tracekit.funcprobes.batch` (vectorised
table builders),
:mod:`~tracekit.funcprobes.bcc_backend` (source, attach, decode ring records; compiled by the
recorder's :mod:`tracekit.recorder.bccload`) and
:mod:`~tracekit.funcprobes.family` (the ``stage2``/``tdp`` families of ``tracekit record`` and their
decoder, which the labs use too).
"""
