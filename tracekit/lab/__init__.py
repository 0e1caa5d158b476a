"""Emulated lab machines: ``tracekit lab arm64|x86`` (see docs/lab.md).

Contract: importing this package imports nothing beyond the standard library; the guest-side modules
(:mod:`~tracekit.lab.guest_run`, :mod:`~tracekit.lab.scenarios`, :mod:`~tracekit.lab.arm64_vm`) run
inside the emulated machines with only the standard library. Host side: :mod:`~tracekit.lab.fetch`
(cache, private apt), :mod:`~tracekit.lab.initramfs`, :mod:`~tracekit.lab.machine` (QEMU),
:mod:`~tracekit.lab.results`,
:mod:`~tracekit.lab.runner`, :mod:`~tracekit.lab.cli`.
"""
