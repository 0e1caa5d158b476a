"""The fleet summary as SQL that DuckDB and Spark both run unchanged, in two steps.

:func:`capture_sql` gives the per-capture tables (per-value counts of each latency, counts): each reads
the family tables of :data:`INPUT_COLUMNS` and ``fleet_segments``, and a capture's rows depend on its own
rows only, so an engine may build them over batches of captures and append. :func:`summary_sql` reads
them and ``captures`` and returns a row per (group, capture) and per group with the columns of
:data:`FIGURES`; the dialect both accept and what each figure means: docs/fleet.md.
"""

from __future__ import annotations

__all__ = ["INPUT_COLUMNS", "FILE_COLUMNS", "ANALYSIS_FIGURES", "FIGURES", "PERCENTILES", "SPLIT_EVENT", "capture_sql", "summary_sql"]

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
_BY_CAPTURE = "JOIN captures AS g ON g.capture = t.capture"


def _latency_cte(prefix: str) -> str:
    """Count, total, nearest-rank percentiles and max of one latency, per (group, capture) and group.

    The rows are first counted per capture and distinct value (:func:`capture_sql`, a grouped aggregate,
    which an engine can spill), summed per group, then a running count in value order gives each value's
    rank: the q-th percentile is the smallest value whose running count reaches ceil(q n / 100), i.e.
    ``100 * upto >= q * n`` in integers. No engine holds a group's values in one aggregate state, so
    memory stays bounded."""
    pcts = ",\n    ".join(f"min(CASE WHEN 100 * upto >= {q} * n THEN v END) AS {prefix}_p{q}_ns" for q in PERCENTILES)
    return f"""{prefix}_values AS (
  SELECT {_KEY}, t.v AS v, CAST(sum(t.c) AS BIGINT) AS c
  FROM {prefix}_capture_values AS t {_BY_CAPTURE}
  GROUP BY GROUPING SETS ((g.grp, g.capture, t.v), (g.grp, t.v))
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


#: The rows the per-capture tables read (a common table expression each; an engine plans only those used).
_INPUTS = f"""
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
)"""


#: The counts per capture :func:`capture_sql` gives (``kind`` of a ``capture_rows`` row, ``v`` null).
_COUNTS = ("dirty_log_ops", "ops_splits", "splits", *(f"reached_{d}" for d in range(1, 6)), "stage2_walks",
           "stage2_visits", *(f"stage2_visits_l{lv}" for lv in range(5)))


def capture_sql() -> dict[str, str]:
    """The per-capture table :func:`summary_sql` reads, ``capture_rows`` -> the query giving its rows (see
    the module docstring): ``capture``, ``kind``, ``v``, ``c``: ``c`` rows of latency ``kind`` (a prefix of
    :data:`_LATENCIES`) of value ``v``, or count ``kind`` (:data:`_COUNTS`) = ``c``. One query, so each
    family is read once; a capture's rows come from its own segments only."""
    # a walk of depth d has the elements 0 .. d-1: walks reaching depth d = elements of index d-1
    depth_reached = ", ".join(_count_if(f"element_index = {d - 1}", f"reached_{d}") for d in range(1, 6))
    levels = ", ".join(f"CAST(sum(CASE WHEN level {'>=' if lv == 4 else '='} {lv} THEN count END) AS BIGINT) "
                       f"AS stage2_visits_l{lv}" for lv in range(5))
    per_segment = {  # per segment first: the join to fleet_segments then reads a row per segment
        "segment_walks": f"SELECT segment, {depth_reached} FROM walk_element GROUP BY segment",
        "segment_stage2_walks": "SELECT segment, count(*) AS stage2_walks FROM stage2_walk GROUP BY segment",
        "segment_stage2_visits": f"SELECT segment, CAST(sum(count) AS BIGINT) AS stage2_visits, {levels} "
                                 "FROM stage2_visit GROUP BY segment",
        "segment_splits": "SELECT segment, count(*) AS splits FROM split_events GROUP BY segment",
    }
    counted = {"splits": "segment_splits", **{f"reached_{d}": "segment_walks" for d in range(1, 6)},
               "stage2_walks": "segment_stage2_walks", "stage2_visits": "segment_stage2_visits",
               **{f"stage2_visits_l{lv}": "segment_stage2_visits" for lv in range(5)}}
    parts = [f"SELECT g.capture AS capture, '{prefix}' AS kind, t.{value} AS v, count(*) AS c\n"
             f"FROM {source} AS t {_BY_SEGMENT}\nGROUP BY g.capture, t.{value}"
             for prefix, (source, value, _) in _LATENCIES.items()]
    parts.append("SELECT capture, 'dirty_log_ops' AS kind, CAST(NULL AS BIGINT) AS v, count(*) AS c\n"
                 "FROM dirty_log_ops GROUP BY capture")
    parts.append("SELECT t.capture AS capture, 'ops_splits' AS kind, CAST(NULL AS BIGINT) AS v, count(*) AS c\n"
                 "FROM dirty_log_ops AS t\nJOIN fleet_segments AS s ON s.capture = t.capture\n"
                 "JOIN split_events AS e ON e.segment = s.segment AND e.tid = t.tid AND e.ts_ns >= t.ts_ns "
                 "AND e.ts_ns < t.end_ns\nGROUP BY t.capture")
    for cte in per_segment:  # each read once: a row per (capture, kind) through a join with the kinds
        kinds = [kind for kind, source in counted.items() if source == cte]
        pick = " ".join(f"WHEN '{kind}' THEN t.{kind}" for kind in kinds)
        listed = ", ".join(f"('{kind}')" for kind in kinds)
        parts.append(f"SELECT g.capture AS capture, k.kind AS kind, CAST(NULL AS BIGINT) AS v, "
                     f"CAST(sum(CASE k.kind {pick} END) AS BIGINT) AS c\nFROM {cte} AS t {_BY_SEGMENT}\n"
                     f"CROSS JOIN (VALUES {listed}) AS k(kind)\nGROUP BY g.capture, k.kind")
    ctes = ",\n".join(f"{name} AS (\n  {query}\n)" for name, query in per_segment.items())
    return {"capture_rows": f"{_INPUTS},\n{ctes}\n" + "\nUNION ALL\n".join(parts)}


def summary_sql() -> str:
    """The fleet summary query over the tables of :func:`capture_sql` (see the module docstring)."""
    depth = ", ".join(f"CAST(sum(t.reached_{d}) - sum(t.reached_{d + 1}) AS BIGINT) AS walks_depth_{d}"
                      for d in range(1, 5)) + ", CAST(sum(t.reached_5) AS BIGINT) AS walks_depth_5"
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
    counts = ",\n    ".join(f"sum(CASE WHEN kind = '{kind}' THEN c END) AS {kind}" for kind in _COUNTS)
    values = ",\n".join(f"{prefix}_capture_values AS (\n  SELECT capture, v, c FROM capture_rows WHERE kind = '{prefix}'\n)"
                        for prefix in _LATENCIES)
    return f"""
WITH
{values},
capture_counts AS (
  SELECT capture,
    {counts}
  FROM capture_rows WHERE v IS NULL GROUP BY capture
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
  SELECT {_KEY}, CAST(sum(t.dirty_log_ops) AS BIGINT) AS dirty_log_ops
  FROM capture_counts AS t {_BY_CAPTURE}
  {_SETS}
),
op_split_figures AS (
  SELECT {_KEY}, CAST(sum(t.ops_splits) AS BIGINT) AS ops_splits
  FROM capture_counts AS t {_BY_CAPTURE}
  {_SETS}
),
split_count_figures AS (
  SELECT {_KEY}, CAST(sum(t.splits) AS BIGINT) AS splits
  FROM capture_counts AS t {_BY_CAPTURE}
  {_SETS}
),
walk_figures AS (
  SELECT {_KEY}, CAST(sum(t.reached_1) AS BIGINT) AS walks, {depth}
  FROM capture_counts AS t {_BY_CAPTURE}
  {_SETS}
),
stage2_walk_figures AS (
  SELECT {_KEY}, CAST(sum(t.stage2_walks) AS BIGINT) AS stage2_walks
  FROM capture_counts AS t {_BY_CAPTURE}
  {_SETS}
),
stage2_visit_figures AS (
  SELECT {_KEY}, CAST(sum(t.stage2_visits) AS BIGINT) AS stage2_visits, {level_sums}
  FROM capture_counts AS t {_BY_CAPTURE}
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
