"""Table-to-block replacements and the faults that met their invalid window (analysis.coalescing)."""

from __future__ import annotations

import pandas as pd

from tracekit.analysis.coalescing import coalesce_summary, rebuilds, window_hits

MiB = 1 << 20


def _frames():
    # walk 0: tid 1 replaces the level-2 table of [2 MiB, 4 MiB) from t=100 to t=200
    # walk 1: tid 2 over the same block at t=150 finds the entry invalid (in the window)
    # walk 2: tid 2 at t=250 (after the window) finds the block; walk 3: tid 2 at t=160 on another block
    # walk 4: tid 2's own replacement attempt that lost the race (ret -EAGAIN): not a replacement
    walks = pd.DataFrame({"walk_id": [0, 1, 2, 3, 4], "tid": [1, 2, 2, 2, 2], "ts_ns": [100, 150, 250, 160, 120],
                          "duration_ns": [100, 5, 5, 5, 5], "addr": [2 * MiB, 2 * MiB + 4096, 2 * MiB, 6 * MiB, 2 * MiB],
                          "size": [2 * MiB] * 5, "ret": [0, -11, -11, -11, -11],
                          "initiator": ["stage2_map_walker"] * 5})  # fmt: skip
    visits = pd.DataFrame({"walk_id": [0, 1, 2, 3, 4], "visitor": ["stage2_map_walker"] * 5, "level": [2, 2, 2, 2, 2],
                           "kind": ["table_pre:table", "leaf:invalid", "leaf:block", "leaf:invalid", "table_pre:table"],
                           "count": [1] * 5})  # fmt: skip
    return walks, visits


def test_faults_in_the_invalid_window_are_counted_per_replacement():
    walks, visits = _frames()
    replaced = rebuilds(walks, visits)
    assert replaced[["walk_id", "tid", "level", "start", "end"]].values.tolist() == [[0, 1, 2, 2 * MiB, 4 * MiB]]
    assert window_hits(walks, visits, replaced).tolist() == [1]


def test_summary_puts_the_model_of_both_orders_beside_the_counts():
    walks, visits = _frames()
    summary = coalesce_summary(walks, visits)
    assert (summary["rebuilds"], summary["window_hits"], summary["rebuilds_hit"]) == (1, 1, 1)
    # a table of 512 pages: the old order clears it, TLBIs, puts 512 leaves and frees 1 table before the block
    assert summary["model"]["old"] == {"steps": 516, "unmapped_steps": 515, "leaves_put": 512}
    assert summary["model"]["new"] == {"steps": 516, "unmapped_steps": 2, "leaves_put": 512}
