"""The live recorder behind ``tracekit record`` (see docs/recorder.md).

Modules: :mod:`~tracekit.recorder.session` (one recording, end to end), :mod:`~tracekit.recorder.family`
(the probe-family interface and registry), :mod:`~tracekit.recorder.families` (the built-in tracepoint
families), :mod:`~tracekit.recorder.bccload` and :mod:`~tracekit.recorder.tracefs` (the two backends),
:mod:`~tracekit.recorder.ringbuf` (batch reads of BPF ring buffers), :mod:`~tracekit.recorder.batch`
(ring records holding a batch of events), :mod:`~tracekit.recorder.rawbuf`
(host-independent decoder of ftrace binary pages), :mod:`~tracekit.recorder.target` (process and vCPU
thread resolution), :mod:`~tracekit.recorder.kvm_ioctls` (ioctl names) and :mod:`~tracekit.recorder.cli`.
Importing this package loads none of them and never imports bcc.
"""
