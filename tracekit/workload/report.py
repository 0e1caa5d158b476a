"""Output lines of the workload, in the format of KVM selftests' ``dirty_log_perf_test``.

Pure formatting, no I/O. Times are integer nanoseconds, printed as ``%ld.%09lds`` like the selftest's
``timespec`` output, so parsers written for ``dirty_log_perf_test`` (e.g. the regexes
``^Iteration (\\d+) (dirty memory|get dirty log|clear dirty log) time: (\\d+\\.\\d{9})s$`` and
``^(Get|Clear) dirty log over (\\d+) iterations took (\\S+)s\\. \\(Avg (\\S+)s/iteration\\)$``) read
ours unchanged. Standard library only.
"""

from __future__ import annotations

__all__ = [
    "seconds",
    "header_lines",
    "populate_line",
    "enable_lines",
    "iteration_lines",
    "disable_line",
    "total_lines",
]


def seconds(ns: int) -> str:
    """``1234567890`` -> ``'1.234567890s'`` (the selftest's ``%ld.%09lds``)."""
    if ns < 0:
        raise ValueError(f"negative duration {ns} ns")
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}s"


def header_lines(iterations: int, guest_mode: str, test_gpa: int, test_size: int) -> list[str]:
    return [
        f"Test iterations: {iterations}",
        f"Testing guest mode: {guest_mode}",
        f"guest physical test memory: [{test_gpa:#x}, {test_gpa + test_size:#x})",
    ]


def populate_line(ns: int) -> str:
    return f"Populate memory time: {seconds(ns)}"


def enable_lines(ns: int) -> list[str]:
    return [f"Enabling dirty logging time: {seconds(ns)}", ""]


def iteration_lines(iteration: int, dirty_ns: int, get_ns: int, clear_ns: int | None) -> list[str]:
    lines = [
        f"Iteration {iteration} dirty memory time: {seconds(dirty_ns)}",
        f"Iteration {iteration} get dirty log time: {seconds(get_ns)}",
    ]
    if clear_ns is not None:
        lines.append(f"Iteration {iteration} clear dirty log time: {seconds(clear_ns)}")
    return lines


def disable_line(ns: int) -> str:
    return f"Disabling dirty logging time: {seconds(ns)}"


def total_lines(get_ns: list[int], clear_ns: list[int] | None) -> list[str]:
    """The two summary lines (the Clear one only when ``clear_ns`` is given)."""
    lines = []
    for label, values in (("Get", get_ns), ("Clear", clear_ns)):
        if values is None:
            continue
        count = len(values)
        total = sum(values)
        average = total // count if count else 0
        lines.append(
            f"{label} dirty log over {count} iterations took {seconds(total)}. (Avg {seconds(average)}/iteration)"
        )
    return lines
