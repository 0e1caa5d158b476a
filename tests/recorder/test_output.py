"""The traced command's stdout is shown and kept (tracekit.recorder.output)."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

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


def test_the_copier_never_waits_on_the_pipe_so_the_commands_writes_wake_no_thread():
    """A reader blocked on the pipe is woken by every line the command prints (a selftest's timed passes
    stretched by the recorder's thread taking a CPU); the copier sleeps between drains instead. Its
    kernel wait channel, sampled while the command prints a line every few milliseconds, is never a
    pipe, poll or select wait."""
    import time

    wchan_of = lambda tid: open(f"/proc/self/task/{tid}/wchan").read().strip()  # noqa: E731
    tee = OutputTee(os.open(os.devnull, os.O_WRONLY))
    child = spawn_gated([sys.executable, "-c", "import time\nfor i in range(100): print(i, flush=True); time.sleep(0.003)"],
                        stdout_fd=tee.child_fd)
    tee.child_started()
    child.release()
    waits = []
    while child.poll() is None:
        waits.append(wchan_of(tee._thread.native_id))
        time.sleep(0.001)
    record = tee.finish()
    assert record["stdout"] == "".join(f"{i}\n" for i in range(100))
    named = [w for w in waits if w not in ("", "0")]
    if not named:
        pytest.skip("this kernel shows no wait channels in /proc/self/task/TID/wchan")
    assert not [w for w in named if any(k in w for k in ("pipe", "poll", "select"))], sorted(set(named))


def test_a_command_that_prints_fast_is_copied_whole():
    """16 MiB in one write, many times the pipe: every byte shown, in order, and counted."""
    read_fd, write_fd = os.pipe()
    shown = bytearray()

    def show():
        while data := os.read(read_fd, 1 << 20):
            shown.extend(data)

    reader = threading.Thread(target=show)
    reader.start()
    try:
        record = _run("import sys; sys.stdout.buffer.write(bytes(range(256)) * 65536)", write_fd, limit=1000)
    finally:
        os.close(write_fd)
        reader.join()
        os.close(read_fd)
    assert record["bytes"] == 1 << 24 and bytes(shown) == bytes(range(256)) * 65536
