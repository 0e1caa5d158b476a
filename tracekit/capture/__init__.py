"""Capture format v1: a directory of Parquet segments per event family plus a JSON manifest.

See docs/capture-format.md. Public API: :class:`CaptureWriter`, :func:`open_capture`, :class:`Capture`,
:data:`COMMON_FIELDS`, :data:`FORMAT_VERSION`.
"""

from tracekit.capture.format import COMMON_FIELDS, FORMAT_VERSION, MANIFEST_NAME
from tracekit.capture.reader import Capture, open_capture
from tracekit.capture.writer import CaptureWriteError, CaptureWriter

__all__ = [
    "COMMON_FIELDS",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Capture",
    "CaptureWriter",
    "CaptureWriteError",
    "open_capture",
]
