"""Typed errors of tracekit.

Library code raises a subclass of :class:`TracekitError` for every expected failure
(bad input, a missing capability, a corrupt capture). Only the CLI edge (``tracekit.cli``) turns
them into one line on stderr and an exit code; nothing below it calls ``sys.exit``.
"""

from __future__ import annotations

__all__ = [
    "one_line",
    "error_line",
    "printable",
    "TracekitError",
    "UsageError",
    "CaptureFormatError",
    "MissingCapability",
    "ProbeLoadError",
    "ModelError",
    "WorkloadError",
    "RecorderError",
    "AnalysisError",
    "QueryError",
    "LabError",
    "NotApplicable",
]


def printable(text: str) -> str:
    """``text`` with the characters UTF-8 cannot encode (lone surrogates) escaped as ``\\udcNN``."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(text: str) -> str:
    """``text`` as one printable line: line breaks folded to ``" / "``, unencodable characters escaped."""
    return printable(" / ".join(line.strip() for line in str(text).splitlines() if line.strip()))


def error_line(message: str) -> str:
    """The one error style of every command: ``tracekit: error: MESSAGE`` (the message folded onto one line)."""
    return f"tracekit: error: {one_line(message)}"


class TracekitError(Exception):
    """Base of every expected tracekit failure.

    ``str(error)`` is the one-line message shown to the user; ``detail`` is an optional longer
    text (a verifier log, a child's stderr) shown only with ``--verbose``.
    """

    exit_code = 1

    def __init__(self, message: str, *, detail: str | None = None):
        super().__init__(message)
        self.detail = detail


class UsageError(TracekitError):
    """Arguments that cannot work together or name something that does not exist."""

    exit_code = 2


class CaptureFormatError(TracekitError):
    """A capture that is missing, truncated, corrupt, foreign or from a newer format version."""


class QueryError(TracekitError):
    """A SQL query the engine refused: its syntax, or a table, column or function it does not know."""

    exit_code = 2


class MissingCapability(TracekitError):
    """The host lacks something a command needs; the message names the exact fix."""


class ProbeLoadError(TracekitError):
    """A BPF program failed to compile, load or attach; ``detail`` holds the log."""


class ModelError(TracekitError):
    """An impossible request to the reference page-table model."""


class WorkloadError(TracekitError):
    """The built-in KVM workload could not run or failed its own verification."""


class RecorderError(TracekitError):
    """The recorder could not start, or failed while running."""


class AnalysisError(TracekitError):
    """A capture lacks what an analysis needs."""


class LabError(TracekitError):
    """An emulated lab machine could not be built, booted or driven."""


class NotApplicable(LabError):
    """A lab scenario that the chosen kernel cannot run (a KVM feature it predates); the message says which."""

    exit_code = 3
