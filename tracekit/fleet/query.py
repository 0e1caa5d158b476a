"""The fleet summary as one SQL text that DuckDB and Spark both run unchanged.

:func:`summary_sql` reads the family tables of :data:`INPUT_COLUMNS`, ``fleet_segments`` and
``captures``, and returns a row per (group, capture) and per group with the columns of :data:`FIGURES`;
the dialect both accept and what each figure means: docs/fleet.md.
"""

from __future__ import annotations

__all__ = ["INPUT_COLUMNS", "FILE_COLUMNS", "ANALYSIS_FIGURES", "FIGURES", "PERCENTILES", "SPLIT_EVENT", "summary_sql"]

#: Input columns named otherwise in the files (``index`` is a keyword in SQL dialects).
FILE_COLUMNS = {("walk_element", "element_index"): "index"}

#: Percentiles of every latency figure (as analyze reports them).
PERCENTILES = (50, 90, 99)

#: The mmu family's split tracepoint (one row per huge SPTE split), as analysis/splits.py counts it.
SPLIT_EVENT = "kvm_mmu_split_huge_page"

#: Input tables and the columns the query reads (after ``capture``); a column no file of a family has
#: is registered as NULL, so captures of older formats are summarised with what they have.
INPUT_COLUMNS: dict[str, tuple[str, ...]] = {
    "ioctl": ("ts_ns", "tid", "duration_ns", "cmd_name", "ret", "slot", "flags", "memory_size", "guest_phys_addr"),
    "split": ("ts_ns", "tid", "duration_ns"),
    "mmu": ("ts_ns", "tid", "event"),
    "lock": ("wait_ns",),
    "walk_element": ("element_index",),
    "stage2_walk": ("walk_id",),
    "stage2_visit": ("level", "count"),
}

_LATENCIES = {  # figure prefix -> (source CTE, value column, what it is)
    "ioctl": ("ioctl_calls_timed", "duration_ns", "every KVM ioctl whose exit was recorded"),
    "clear": ("clear_calls", "duration_ns", "KVM_CLEAR_DIRTY_LOG calls"),
    "split": ("split_timed", "duration_ns", "split calls with a duration (function probes)"),
    "lock_wait": ("lock_waits", "wait_ns", "lock contention waits"),
}


def _latency_figures(prefix: str) -> tuple[str, ...]:
    return (f"{prefix}_count", f"{prefix}_total_ns", *(f"{prefix}_p{q}_ns" for q in PERCENTILES), f"{prefix}_max_ns")


#: Captures per stored analysis verdict (``captures`` input columns ``analysed``, ``crosscheck``,
#: ``skip_levels``, ``mmu_lock``: :mod:`tracekit.fleet.verdicts`) -> the condition counted.
_VERDICT_COUNTS = {
    "analysed_captures": "g.analysed = 1",
    "crosscheck_match_captures": "g.crosscheck = 'match'",
    "crosscheck_mismatch_captures": "g.crosscheck = 'mismatch'",
    "skip_levels_yes_captures": "g.skip_levels = 'yes'",
    "skip_levels_no_captures": "g.skip_levels = 'no'",
    "mmu_lock_found_captures": "g.mmu_lock = 'found'",
}
ANALYSIS_FIGURES = tuple(_VERDICT_COUNTS)
#: Walks per cause (``analyze``'s ``walk_causes``), summed over the captures with stored verdicts.
_WALK_CAUSES = ("walks_fault", "walks_emulation", "walks_unknown")

#: Every figure of a summary row, in order (the group and capture columns come first).
FIGURES: tuple[str, ...] = (
    "captures", "clean_captures", "incomplete_captures", "lossy_captures", "lost_events",
    *ANALYSIS_FIGURES,
    *_latency_figures("ioctl"), *_latency_figures("clear"),
    "dirty_log_ops", "ops_splits", "splits_per_op",
    "splits", *_latency_figures("split"),
    "walks", "walks_depth_1", "walks_depth_2", "walks_depth_3", "walks_depth_4", "walks_depth_5",
    *_WALK_CAUSES,
    "stage2_walks", "stage2_visits", *(f"stage2_visits_l{lv}" for lv in range(5)),
    *_latency_figures("lock_wait"),
)

_SETS = "GROUP BY GROUPING SETS ((g.grp, g.capture), (g.grp))"
_BY_SEGMENT = "JOIN fleet_segments AS g ON g.segment = t.segment"
_KEY = "g.grp AS grp, coalesce(g.capture, -1) AS cap"


def _latency_cte(prefix: str) -> str:
    """Count, total, nearest-rank percentiles and max of one latency, per (group, capture) and group.

    The rows are first counted per distinct value (a grouped aggregate, which an engine can spill),
    then a running count in value order gives each value's rank: the q-th percentile is the smallest
    value whose running count reaches ceil(q n / 100), i.e. ``100 * upto >= q * n`` in integers. No
    engine holds a group's values in one aggregate state, so memory stays bounded."""
    source, value, _ = _LATENCIES[prefix]
    pcts = ",\n    ".join(f"min(CASE WHEN 100 * upto >= {q} * n THEN v END) AS {prefix}_p{q}_ns" for q in PERCENTILES)
    return f"""{prefix}_values AS (
  SELECT {_KEY}, t.{value} AS v, count(*) AS c
  FROM {source} AS t {_BY_SEGMENT}
  GROUP BY GROUPING SETS ((g.grp, g.capture, t.{value}), (g.grp, t.{value}))
),
{prefix}_ranked AS (
  SELECT grp, cap, v, c,
    sum(c) OVER (PARTITION BY grp, cap ORDER BY v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS upto,
    sum(c) OVER (PARTITION BY grp, cap) AS n
  FROM {prefix}_values
),
{prefix}_figures AS (
  SELECT grp, cap, CAST(sum(c) AS BIGINT) AS {prefix}_count, CAST(sum(v * c) AS BIGINT) AS {prefix}_total_ns,
    {pcts},
    max(v) AS {prefix}_max_ns
  FROM {prefix}_ranked
  GROUP BY grp, cap
)"""


def _count_if(condition: str, name: str) -> str:
    return f"count(CASE WHEN {condition} THEN 1 END) AS {name}"


def summary_sql() -> str:
    """The fleet summary query (see the module docstring)."""
    # a walk of depth d has the elements 0 .. d-1: walks reaching depth d = elements of index d-1
    depth_reached = ", ".join(_count_if(f"element_index = {d - 1}", f"reached_{d}") for d in range(1, 6))
    depth = ", ".join(f"CAST(sum(t.reached_{d}) - sum(t.reached_{d + 1}) AS BIGINT) AS walks_depth_{d}"
                      for d in range(1, 5)) + ", CAST(sum(t.reached_5) AS BIGINT) AS walks_depth_5"
    levels = ", ".join(f"CAST(sum(CASE WHEN level {'>=' if lv == 4 else '='} {lv} THEN count END) AS BIGINT) "
                       f"AS stage2_visits_l{lv}" for lv in range(5))
    level_sums = ", ".join(f"CAST(sum(t.stage2_visits_l{lv}) AS BIGINT) AS stage2_visits_l{lv}" for lv in range(5))
    figures = ",\n  ".join(f"CAST(f.{name} AS BIGINT) AS {name}" if name != "splits_per_op" else
                           "CASE WHEN f.dirty_log_ops > 0 THEN CAST(coalesce(f.ops_splits, 0) AS DOUBLE) "
                           "/ CAST(f.dirty_log_ops AS DOUBLE) END AS splits_per_op"
                           for name in FIGURES)
    verdicts = ",\n    ".join(_count_if(condition, name) for name, condition in _VERDICT_COUNTS.items())
    causes = ", ".join(f"CAST(sum(g.{name}) AS BIGINT) AS {name}" for name in _WALK_CAUSES)
    joins = "\n".join(f"  LEFT JOIN {cte} AS {alias} ON {alias}.grp = s.grp AND {alias}.cap = s.cap"
                      for cte, alias in _FIGURE_CTES)
    columns = {name: alias for cte, alias in _FIGURE_CTES for name in _CTE_FIGURES[cte]}
    select = ",\n  ".join(
        f"coalesce({columns[n]}.{n}, 0) AS {n}" if n in _ZERO_WHEN_ABSENT else f"{columns[n]}.{n} AS {n}"
        for n in FIGURES if n != "splits_per_op")
    return f"""
WITH
ioctl_calls_timed AS (
  SELECT * FROM ioctl WHERE duration_ns IS NOT NULL
),
clear_calls AS (
  SELECT * FROM ioctl_calls_timed WHERE cmd_name = 'KVM_CLEAR_DIRTY_LOG'
),
memslot_calls AS (
  SELECT g.capture, t.tid, t.ts_ns, t.duration_ns, t.flags, t.memory_size, t.guest_phys_addr,
    LAG(t.flags) OVER (PARTITION BY g.capture, t.slot ORDER BY t.ts_ns) AS prev_flags,
    LAG(t.memory_size) OVER (PARTITION BY g.capture, t.slot ORDER BY t.ts_ns) AS prev_size,
    LAG(t.guest_phys_addr) OVER (PARTITION BY g.capture, t.slot ORDER BY t.ts_ns) AS prev_base,
    row_number() OVER (PARTITION BY g.capture, t.slot ORDER BY t.ts_ns) AS nth
  FROM ioctl_calls_timed AS t {_BY_SEGMENT}
  WHERE t.cmd_name IN ('KVM_SET_USER_MEMORY_REGION', 'KVM_SET_USER_MEMORY_REGION2')
    AND t.slot IS NOT NULL AND coalesce(t.ret, 0) >= 0
),
dirty_log_ops AS (
  SELECT capture, tid, ts_ns, ts_ns + duration_ns AS end_ns FROM memslot_calls
  WHERE nth > 1 AND coalesce(prev_size, 1) <> 0 AND coalesce(memory_size, 1) <> 0
    AND (prev_base IS NULL OR guest_phys_addr IS NULL OR prev_base = guest_phys_addr)
    AND (coalesce(prev_flags, 0) & 1) = 0 AND (coalesce(flags, 0) & 1) = 1
  UNION ALL
  SELECT g.capture, t.tid, t.ts_ns, t.ts_ns + t.duration_ns AS end_ns FROM clear_calls AS t {_BY_SEGMENT}
),
split_events AS (
  SELECT segment, tid, ts_ns FROM split
  UNION ALL
  SELECT segment, tid, ts_ns FROM mmu WHERE event = '{SPLIT_EVENT}'
),
split_timed AS (
  SELECT * FROM split WHERE duration_ns >= 0
),
lock_waits AS (
  SELECT * FROM lock WHERE wait_ns IS NOT NULL
),
segment_splits AS (
  SELECT segment, count(*) AS splits FROM split_events GROUP BY segment
),
segment_walks AS (
  SELECT segment, {depth_reached}
  FROM walk_element GROUP BY segment
),
segment_stage2_walks AS (
  SELECT segment, count(*) AS stage2_walks FROM stage2_walk GROUP BY segment
),
segment_stage2_visits AS (
  SELECT segment, CAST(sum(count) AS BIGINT) AS stage2_visits, {levels}
  FROM stage2_visit GROUP BY segment
),
spine AS (
  SELECT {_KEY} FROM captures AS g {_SETS}
),
capture_figures AS (
  SELECT {_KEY}, count(*) AS captures,
    {_count_if("g.status = 'complete' AND coalesce(g.lost_events, 0) = 0", "clean_captures")},
    {_count_if("coalesce(g.status, '') <> 'complete'", "incomplete_captures")},
    {_count_if("coalesce(g.lost_events, 0) > 0", "lossy_captures")},
    CAST(sum(coalesce(g.lost_events, 0)) AS BIGINT) AS lost_events,
    {verdicts},
    {causes}
  FROM captures AS g
  {_SETS}
),
{_latency_cte("ioctl")},
{_latency_cte("clear")},
{_latency_cte("split")},
{_latency_cte("lock_wait")},
op_figures AS (
  SELECT {_KEY}, count(*) AS dirty_log_ops
  FROM dirty_log_ops AS t JOIN captures AS g ON g.capture = t.capture
  {_SETS}
),
op_split_figures AS (
  SELECT {_KEY}, count(*) AS ops_splits
  FROM dirty_log_ops AS t
  JOIN captures AS g ON g.capture = t.capture
  JOIN fleet_segments AS s ON s.capture = t.capture
  JOIN split_events AS e ON e.segment = s.segment AND e.tid = t.tid AND e.ts_ns >= t.ts_ns AND e.ts_ns < t.end_ns
  {_SETS}
),
split_count_figures AS (
  SELECT {_KEY}, CAST(sum(t.splits) AS BIGINT) AS splits
  FROM segment_splits AS t {_BY_SEGMENT}
  {_SETS}
),
walk_figures AS (
  SELECT {_KEY}, CAST(sum(t.reached_1) AS BIGINT) AS walks, {depth}
  FROM segment_walks AS t {_BY_SEGMENT}
  {_SETS}
),
stage2_walk_figures AS (
  SELECT {_KEY}, CAST(sum(t.stage2_walks) AS BIGINT) AS stage2_walks
  FROM segment_stage2_walks AS t {_BY_SEGMENT}
  {_SETS}
),
stage2_visit_figures AS (
  SELECT {_KEY}, CAST(sum(t.stage2_visits) AS BIGINT) AS stage2_visits, {level_sums}
  FROM segment_stage2_visits AS t {_BY_SEGMENT}
  {_SETS}
),
figures AS (
  SELECT s.grp AS grp, s.cap AS capture,
  {select}
  FROM spine AS s
{joins}
)
SELECT f.grp AS grp, f.capture AS capture,
  {figures}
FROM figures AS f
"""


#: Each figure CTE, the alias it is joined under, and the figures it gives.
_FIGURE_CTES = (("capture_figures", "c"), ("ioctl_figures", "io"), ("clear_figures", "cl"), ("op_figures", "op"),
                ("op_split_figures", "os"), ("split_count_figures", "sc"), ("split_figures", "sp"),
                ("walk_figures", "w"), ("stage2_walk_figures", "sw"), ("stage2_visit_figures", "sv"),
                ("lock_wait_figures", "lw"))
_CTE_FIGURES = {
    "capture_figures": ("captures", "clean_captures", "incomplete_captures", "lossy_captures", "lost_events",
                        *ANALYSIS_FIGURES, *_WALK_CAUSES),
    "ioctl_figures": _latency_figures("ioctl"), "clear_figures": _latency_figures("clear"),
    "op_figures": ("dirty_log_ops",), "op_split_figures": ("ops_splits",), "split_count_figures": ("splits",),
    "split_figures": _latency_figures("split"),
    "walk_figures": ("walks", *(f"walks_depth_{d}" for d in range(1, 6))), "stage2_walk_figures": ("stage2_walks",),
    "stage2_visit_figures": ("stage2_visits", *(f"stage2_visits_l{lv}" for lv in range(5))),
    "lock_wait_figures": _latency_figures("lock_wait"),
}
#: Counts that are 0 (not null) when a capture has no such rows; percentiles stay null.
_ZERO_WHEN_ABSENT = {name for name in FIGURES if name.endswith(("_count", "captures")) or name in (
    "lost_events", "dirty_log_ops", "ops_splits", "splits", "walks", "stage2_walks")
    or name.startswith("walks_depth_")}
