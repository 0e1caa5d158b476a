"""Fuzz: a few hundred seeded mutations of a recorded sample, through every command a user runs on a capture.

Each mutated copy (9 kinds, tests/capture/fuzz.py) goes through ``info`` and one more command in turn
(``info --json``, ``analyze``, ``analyze --json``, ``report``, ``compare``, ``export`` as CSV and JSON
Lines, ``export --perfetto``), all in-process. Every run must exit 0 or 1 without a traceback, an error being exactly one line.
"""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from tests.capture.fuzz import COMMANDS, SAMPLE, mutations, prepare_outside, run_command

SEED = 20261207
MUTATIONS = 240


@pytest.mark.slow
def test_mutated_captures_never_give_a_traceback(tmp_path):
    runner = CliRunner()
    outside = prepare_outside(tmp_path / "outside")
    others = [c for c in COMMANDS if c != ["info"]]
    failures, exits, kinds = [], {}, set()
    for i, (name, mutate) in enumerate(mutations(SEED, MUTATIONS, outside)):
        cap, work = tmp_path / f"m{i}.tkcap", tmp_path / f"w{i}"
        shutil.copytree(SAMPLE, cap)
        work.mkdir()
        what = mutate(cap)
        kinds.add(mutate.__name__)
        for command in (["info"], others[i % len(others)]):
            code, problems = run_command(runner, command, cap, work)
            exits[code] = exits.get(code, 0) + 1
            failures += [f"{name} ({what}) tracekit {' '.join(command)}: {p}" for p in problems]
        shutil.rmtree(cap, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    assert not failures, f"{len(failures)} bad runs:\n" + "\n".join(failures[:40])
    assert len(kinds) == 9 and exits.get(0, 0) > MUTATIONS // 4 and exits.get(1, 0) > MUTATIONS // 4, (kinds, exits)
