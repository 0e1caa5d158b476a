"""The traced command's stdout is shown and kept (tracekit.recorder.output)."""

from __future__ import annotations

import os
import sys

from tracekit.recorder.output import OutputTee
from tracekit.recorder.target import spawn_gated


def _run(code: str, dest: int, **tee_options) -> dict:
    tee = OutputTee(dest, **tee_options)
    child = spawn_gated([sys.executable, "-c", code], stdout_fd=tee.child_fd)
    tee.child_started()
    child.release()
    assert child.wait(30) == 0
    return tee.finish()


def test_the_command_output_is_copied_and_kept():
    read_fd, write_fd = os.pipe()
    try:
        record = _run("print('Iteration 1 get dirty log time: 0.000012982s'); print('\u00e9')", write_fd)
        shown = os.read(read_fd, 4096)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    text = "Iteration 1 get dirty log time: 0.000012982s\n\u00e9\n"
    assert shown == text.encode()
    assert record == {"stdout": text, "bytes": len(text.encode()), "dropped_bytes": 0}


def test_beyond_the_limit_bytes_are_counted_not_kept_and_a_closed_destination_stops_only_the_copy():
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # the user's pager went away: writes fail with EPIPE
    try:
        record = _run("import sys; sys.stdout.buffer.write(b'x' * 100000 + b'\\xff')", write_fd, limit=1000)
    finally:
        os.close(write_fd)
    assert record["bytes"] == 100001 and record["dropped_bytes"] == 99001 and record["stdout"] == "x" * 1000


def test_invalid_utf8_is_replaced():
    read_fd, write_fd = os.pipe()
    try:
        record = _run("import sys; sys.stdout.buffer.write(b'a\\xffb')", write_fd)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert record["stdout"] == "a\ufffdb" and record["bytes"] == 3
