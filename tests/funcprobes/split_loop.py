"""The x86 eager-split loop of a live lab capture against the model, robust to the kernel's own yields.

:func:`check_split_loop` takes a capture of ``tdp_mmu_split_huge_pages_root`` over ``size`` bytes of
``page``-sized huge pages at GPA 4 GiB (the labs' x86 slot) and asserts, against
:class:`tracekit.model.tdp.TdpPageTable`:

- the splits per level exactly (``kvm_mmu_split_huge_page`` events, and ``split_huge_page`` spans when
  recorded): yields never change what is split;
- the ``tdp_iter_next`` steps per level inside the loop equal the model's plus whole root restarts. The
  model restarts from the root once per split (the lock drop to allocate a shadow page) but not on
  ``tdp_mmu_iter_cond_resched`` yields (need_resched or mmu_lock contention), which the kernel takes when
  it must. Such a yield makes the iterator restart from the root and walk down again to the position it
  stopped at, one step at each level from the root down to that position's level. So the excess over the
  model, per level, is a staircase: ``excess[root] >= excess[root - 1] >= ... >= excess[2] >= 0``, with
  ``excess[root]`` the number of extra restarts (each extra restart needs forward progress since the last
  yield, so there are at most as many as level-2 positions). A run that yields nowhere matches exactly.

Returns the number of extra restarts (0 in a run that yields nowhere).
"""

from __future__ import annotations

from tracekit.model.accounting import WalkStats
from tracekit.model.tdp import TdpPageTable

__all__ = ["check_split_loop", "restart_excess"]

GPA = 1 << 32


def restart_excess(measured: dict[int, int], model: dict[int, int], root_level: int, min_level: int = 2) -> int:
    """Extra whole root restarts that turn ``model`` steps per level into ``measured``; AssertionError when
    the difference is not such a sum (a step missing, or an excess not shaped like restarts)."""
    assert set(measured) <= set(range(min_level, root_level + 1)), f"steps below the loop's lowest level: {measured}"
    excess = [measured.get(level, 0) - model.get(level, 0) for level in range(root_level, min_level - 1, -1)]
    assert all(e >= 0 for e in excess), f"fewer steps than the model: {measured} vs {model}"
    assert all(a >= b for a, b in zip(excess, excess[1:])), f"not whole restarts from the root: {measured} vs {model}"
    assert excess[0] <= model.get(min_level, 0), f"more restarts than positions: {measured} vs {model}"
    return excess[0]


def check_split_loop(cap, size: int, page: int) -> int:
    """Assert the split loop of ``cap`` against the model (see the module docstring); extra restarts."""
    pgt, stats = TdpPageTable(), WalkStats()
    pgt.populate(GPA, size, page)
    pgt.split_huge_pages(GPA, GPA + size, stats)
    splits = cap.dataframe("split")
    model_splits = {level: stats.get("splits", level) for level in range(1, 6) if stats.get("splits", level)}
    for probe in ("kvm_mmu_split_huge_page", "split_huge_page"):
        rows = splits[splits["probe"] == probe]
        if len(rows):
            assert {int(k): int(n) for k, n in rows.groupby("level").size().items()} == model_splits, probe
    walks = cap.dataframe("stage2_walk")
    loop = walks[walks["initiator"] == "tdp_mmu_split_huge_pages_root"]
    assert len(loop) == stats.walks == 1
    visits = cap.dataframe("stage2_visit").merge(loop[["walk_id"]], on="walk_id")
    measured = {int(level): int(n) for level, n in visits.groupby("level")["count"].sum().items()}
    model = {level: stats.get("entries", level) for level in range(1, 6) if stats.get("entries", level)}
    return restart_excess(measured, model, pgt.geom.root_level)
