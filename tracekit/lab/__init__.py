"""Emulated lab machines: ``tracekit lab arm64|x86`` (see docs/lab.md).

Importing this package imports only the standard library. The guest-side modules
(:mod:`~tracekit.lab.guest_run`, :mod:`~tracekit.lab.scenarios`, :mod:`~tracekit.lab.arm64_vm`) run in
the emulated machines with the standard library alone, except :mod:`~tracekit.lab.guest_record`, which
runs the real ``tracekit record`` in the recorder userland; the others run on the host.
"""
