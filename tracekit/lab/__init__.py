"""Emulated lab machines: ``tracekit lab arm64|x86`` (see docs/lab.md).

Contract: importing this package imports nothing beyond the standard library; the guest-side modules
(:mod:`~tracekit.lab.guest_run`, :mod:`~tracekit.lab.scenarios`, :mod:`~tracekit.lab.arm64_vm`) run
inside the emulated machines with only the standard library, except :mod:`~tracekit.lab.guest_record`,
which runs the real ``tracekit record`` in the bigger recorder userland (``--recorder``). Host side:
:mod:`~tracekit.lab.fetch` (cache, private apt, the recorder userland), :mod:`~tracekit.lab.initramfs`,
:mod:`~tracekit.lab.machine` (QEMU), :mod:`~tracekit.lab.results`, :mod:`~tracekit.lab.recorded` (the
guest recorder's capture),
:mod:`~tracekit.lab.runner`, :mod:`~tracekit.lab.cli`.
"""
