"""The one table renderer and error line: widths, pieces, colour only on a terminal without NO_COLOR (also
end to end, the console script on a pseudo-terminal)."""

from __future__ import annotations

import io
import os
import pty
import re
import struct
import subprocess
import sys
from fcntl import ioctl
from pathlib import Path
from termios import TIOCSWINSZ

from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from tracekit.cli import app
from tracekit.render import colour_wanted, column_groups, error_line, output_width, table_text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert colour_wanted(_Terminal()) and not colour_wanted(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not colour_wanted(_Terminal())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not colour_wanted(_Terminal())


def test_width_from_columns_else_the_terminal_else_natural(monkeypatch):
    monkeypatch.setenv("COLUMNS", "93")
    assert output_width(io.StringIO()) == 93
    monkeypatch.delenv("COLUMNS")
    assert output_width(io.StringIO()) is None and output_width(_Terminal()) >= 1


def test_plain_and_coloured_tables():
    rows = [["mmu_lock", "559", "1.65ms"], ["0xffff8881003c35ec", "14", "489.0us"]]
    plain = table_text(["lock", "count", "total"], rows, width=None, colour=False)
    assert plain.splitlines() == ["lock                count    total",
                                  "mmu_lock              559   1.65ms",
                                  "0xffff8881003c35ec     14  489.0us"]
    coloured = table_text(["lock", "count", "total"], rows, width=None, colour=True, styles=[["bad", None, None]] * 2)
    assert "\x1b[" in coloured and "\x1b[" not in plain


@given(st.lists(st.integers(1, 40), min_size=1, max_size=12), st.integers(10, 120))
def test_column_groups_keep_every_column_once_after_the_key(widths, width):
    """Every column but the key is in exactly one group, in order; each group starts with the key and
    fits ``width`` unless it holds a single column beside the key."""
    groups = column_groups(widths, width)
    assert all(group[0] == 0 for group in groups)
    assert [i for group in groups for i in group[1:]] == list(range(1, len(widths)))
    for group in groups:
        assert len(group) <= 2 or sum(widths[i] for i in group) + 2 * (len(group) - 1) <= width


def test_every_error_is_one_line():
    """Usage errors (unknown option, missing argument, unknown command) in the style of typed errors."""
    assert error_line("bad\nthing") == "tracekit: error: bad / thing"
    for argv, text in ((["analyze"], "Missing argument 'capture' (see 'tracekit analyze -h')"),
                       (["analyze", "x.tkcap", "--bogus"], "No such option: --bogus"),
                       (["nosuch"], "No such command 'nosuch'"),
                       (["analyze", "missing.tkcap"], "missing.tkcap: no such capture")):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code != 0
        assert result.output.count("\n") == 1 and result.output.startswith("tracekit: error: "), result.output
        assert text in result.output


def _run_on(sample: str, terminal: bool, **env: str) -> str:
    """``tracekit compare`` of a sample with itself, its standard output a pseudo-terminal of 100 columns
    (``terminal``) or a pipe; what it wrote."""
    capture = str(Path(__file__).resolve().parents[1] / "samples" / sample)
    command = [sys.executable, "-m", "tracekit", "compare", capture, "--", capture, "--all"]
    environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "TERM")} | {"TERM": "xterm", **env}
    if not terminal:
        return subprocess.run(command, capture_output=True, text=True, env=environ, timeout=120, check=True).stdout
    leader, follower = pty.openpty()
    ioctl(follower, TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with subprocess.Popen(command, stdout=follower, stderr=subprocess.DEVNULL, env=environ) as child:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
        assert child.wait(timeout=120) == 0
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_the_command_line_colours_a_terminal_only_and_honours_no_color():
    """End to end, the console script as a user runs it: on a terminal, bold headers and styled cells
    (ANSI codes) and every line within the terminal's 100 columns; with NO_COLOR, or into a pipe, none."""
    sample = "lab-arm64-eager-enable.tkcap"
    coloured = _run_on(sample, terminal=True)
    assert "\x1b[" in coloured and "A mean ± stdev" in coloured
    plain = _run_on(sample, terminal=True, NO_COLOR="1")
    piped = _run_on(sample, terminal=False)
    assert "\x1b[" not in plain and "\x1b[" not in piped and "A mean ± stdev" in piped
    visible = [line.rstrip() for line in re.sub(r"\x1b\[[0-9;]*m", "", coloured).splitlines()]
    assert max(len(line) for line in visible) <= 100 and visible == plain.splitlines()
