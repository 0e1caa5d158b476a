"""The live split-loop check's restart arithmetic (``restart_excess``) on the shapes the labs produced."""

from __future__ import annotations

import pytest

from tests.funcprobes.split_loop import restart_excess

MODEL_6_1 = {2: 32, 3: 1, 4: 1}  # 6.1's eager split of 64 MiB of 2 MiB pages: no restart per split


def test_a_run_that_never_yields_has_no_extra_restart():
    assert restart_excess(dict(MODEL_6_1), MODEL_6_1, root_level=4) == 0


def test_one_cond_resched_yield_is_one_whole_restart():
    # A stop CI's bookworm run: the loop yielded once at a level-2 position and walked down again from the root.
    assert restart_excess({2: 33, 3: 2, 4: 2}, MODEL_6_1, root_level=4) == 1


@pytest.mark.parametrize("measured, message", [
    ({2: 31, 3: 1, 4: 1}, "fewer steps"),
    ({2: 33, 3: 1, 4: 1}, "not whole restarts"),  # an extra level-2 step with no walk down to it
    ({2: 32, 3: 1, 4: 1, 1: 5}, "below the loop's lowest level"),
    ({2: 65, 3: 34, 4: 34}, "more restarts than positions"),
])
def test_anything_not_shaped_like_restarts_fails(measured, message):
    with pytest.raises(AssertionError, match=message):
        restart_excess(measured, MODEL_6_1, root_level=4)
