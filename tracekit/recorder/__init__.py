"""The live recorder behind ``tracekit record`` (see docs/recorder.md).

Modules: :mod:`~tracekit.recorder.session` (one recording, end to end), :mod:`~tracekit.recorder.probe_family`
(the probe-family interface and registry), :mod:`~tracekit.recorder.tracepoint_families` (the built-in tracepoint
families), :mod:`~tracekit.recorder.backend_bcc` and :mod:`~tracekit.recorder.backend_tracefs` (the two backends),
:mod:`~tracekit.recorder.ringbuf` (batch reads of BPF ring buffers), :mod:`~tracekit.recorder.ring_batch`
(ring records holding a batch of events), :mod:`~tracekit.recorder.rawbuf`
(host-independent decoder of ftrace binary pages), :mod:`~tracekit.recorder.target` (process and vCPU
thread resolution), :mod:`~tracekit.recorder.kvm_ioctls` (ioctl names) and :mod:`~tracekit.recorder.cli`.
Importing this package loads none of them and never imports bcc.
"""
