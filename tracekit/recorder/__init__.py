"""The live recorder behind ``tracekit record`` (see docs/recorder.md).

:mod:`~tracekit.recorder.session` runs one recording (plan, attach, poll, finish); :mod:`~tracekit.recorder.registry` names the
probe families (:mod:`~tracekit.recorder.probe_family` is their interface,
:mod:`~tracekit.recorder.tracepoint_families` the tracepoint ones); :mod:`~tracekit.recorder.backend_bcc`
and :mod:`~tracekit.recorder.backend_tracefs` are the two backends. Importing this package loads none
of them and never imports bcc.
"""
