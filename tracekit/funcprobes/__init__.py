"""Function-probe families of tracekit: ``stage2`` (arm64 KVM stage-2) and ``tdp`` (x86 TDP MMU).

The probe lists are :mod:`~tracekit.funcprobes.stage2_probes` and :mod:`~tracekit.funcprobes.tdp_probes`;
:mod:`~tracekit.funcprobes.funcprobe_families` makes them recorder families (and the labs' decoder).
Importing this package imports only the standard library, as do the modules the lab guests use
(``spec``, the probe lists, ``kallsyms``, ``kprobe_events``).
"""
