"""The live labs' x86 split-loop check (tests/funcprobes/split_loop.py): exact splits, iterator steps equal
to the model's plus whole root restarts (kernel yields the model does not model), hand-counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.funcprobes.split_loop import check_split_loop, restart_excess
from tracekit.capture import open_capture

MODEL_64M = {2: 64, 3: 33, 4: 33}  # 32 positions of 2 MiB SPTEs, each seen twice (the split's restart) + the root's
SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def test_a_run_without_yields_matches_the_model_exactly():
    assert restart_excess(dict(MODEL_64M), MODEL_64M, root_level=4) == 0


def test_one_extra_restart_from_the_root_is_one_step_per_level_down_to_its_position():
    """The fresh run that gave 65/34/34: one cond_resched yield at a level-2 position."""
    assert restart_excess({2: 65, 3: 34, 4: 34}, MODEL_64M, root_level=4) == 1
    # two yields: at a level-3 position (a step at levels 4 and 3) and at a level-4 position (level 4 only)
    assert restart_excess({2: 64, 3: 34, 4: 35}, MODEL_64M, root_level=4) == 2


@pytest.mark.parametrize("measured,why", [
    ({2: 63, 3: 33, 4: 33}, "fewer steps"),
    ({2: 65, 3: 33, 4: 33}, "not whole restarts"),  # an extra level-2 step with no way down from the root
    ({2: 64, 3: 34, 4: 33}, "not whole restarts"),
    ({2: 64 + 65, 3: 33 + 65, 4: 33 + 65}, "more restarts than positions"),
    ({1: 1, 2: 64, 3: 33, 4: 33}, "below the loop's lowest level"),  # the loop never goes below level 2 when splitting to 4K
])  # fmt: skip
def test_what_restarts_cannot_explain_fails(measured, why):
    with pytest.raises(AssertionError, match=why):
        restart_excess(measured, MODEL_64M, root_level=4)


@pytest.mark.parametrize("name,size,page", [("lab-x86-tdp-eager", 64 << 20, 2 << 20), ("lab-x86-tdp-1g", 1 << 30, 1 << 30)])
def test_the_committed_lab_captures_yield_nowhere(name, size, page):
    path = SAMPLES / f"{name}.tkcap"
    if not path.exists():
        pytest.fail(f"sample {path.name} is missing from samples/")
    assert check_split_loop(open_capture(path), size, page) == 0
