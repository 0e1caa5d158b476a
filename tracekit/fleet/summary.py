"""``tracekit fleet summary``: the headline figures of many captures, per capture and per group.

:func:`fleet_summary` opens the captures under the given paths (:class:`tracekit.dataset.Dataset`)
and their stored analysis verdicts (:mod:`.verdicts`; a capture that cannot be read, or whose verdicts
file is not one, is left out and named in ``problems``), registers the input tables on
the chosen engine (:mod:`.engines`), runs :func:`tracekit.fleet.query.summary_sql` (over its
:func:`~tracekit.fleet.query.capture_sql` tables) and returns a
:class:`FleetSummary`: one row per group (``--by``: capture facts such as the kernel release, host,
scenario, or a KVM parameter ``kvm.PARAM``), one row per capture, every value a plain int, float, str
or None so both engines' results compare equal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import pyarrow as pa

from tracekit.capture.remote import is_url
from tracekit.dataset import Dataset, capture_facts
from tracekit.errors import CaptureFormatError, QueryError, UsageError
from tracekit.fleet.engines import ENGINES, duckdb_engine, spark_engine
from tracekit.fleet.query import FIGURES, INPUT_COLUMNS, capture_sql, summary_sql
from tracekit.fleet.verdicts import VERDICT_COLUMNS, VERDICT_FAMILIES, stored_verdicts

__all__ = ["GROUP_KEYS", "CAPTURE_COLUMNS", "VERDICTS_SHOWN", "SUMMARY_FAMILIES", "summary_dataset", "listed_dataset",
           "FleetSummary", "fleet_summary", "group_columns"]

#: ``--by`` names -> the ``captures`` column each groups by (``kvm.PARAM`` groups by a KVM parameter).
GROUP_KEYS = {"kernel": "kernel_release", "host": "host", "scenario": "scenario", "arch": "arch",
              "backend": "backend", "source": "source_kind", "status": "status", "vcpus": "vcpus",
              "workload": "workload", "tracekit": "tracekit_version", "capture": "capture"}

#: Capture facts shown beside each capture's figures (columns of the ``captures`` table).
CAPTURE_COLUMNS = ("name", "path", "host", "kernel_release", "arch", "backend", "source_kind", "scenario", "status",
                   "vcpus")

#: The stored analysis verdicts shown beside each capture's figures (:mod:`tracekit.fleet.verdicts`).
VERDICTS_SHOWN = VERDICT_COLUMNS[:3]

#: The families whose segment footers the summary reads and checks: those its query reads and those the
#: stored verdicts come from (the others' segments are only checked to end as Parquet files).
SUMMARY_FAMILIES = frozenset(INPUT_COLUMNS) | VERDICT_FAMILIES


def summary_dataset(paths: Sequence[str]) -> Dataset:
    """The captures under ``paths`` opened for the summary, every footer it reads checked
    (:data:`SUMMARY_FAMILIES`), unreadable ones in ``problems``."""
    return Dataset.open(paths, skip_bad=True, families=SUMMARY_FAMILIES)


def listed_dataset(paths: Sequence[str]) -> Dataset:
    """The captures under ``paths`` opened for the summary on DuckDB, which reads the footers of the
    families its query reads: of those only the schema is read, the other families' segments are checked
    to end as Parquet files; unreadable ones in ``problems``."""
    return Dataset.open(paths, skip_bad=True, families=INPUT_COLUMNS, footers=False)


@dataclass
class FleetSummary:
    """Per-group and per-capture figures (:data:`tracekit.fleet.query.FIGURES`), in group order."""

    by: list[str]
    engine: str
    groups: list[dict] = field(default_factory=list)
    captures: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def group_columns(by: str | Sequence[str]) -> list[str]:
    """``--by`` as a list of names (``"kernel,arch"`` -> ``["kernel", "arch"]``); UsageError for an unknown one."""
    names = [n.strip() for part in ([by] if isinstance(by, str) else by) for n in part.split(",") if n.strip()]
    for name in names or ["?"]:
        if name not in GROUP_KEYS and not (name.startswith("kvm.") and len(name) > 4):
            raise UsageError(f"--by {name!r}: expected one of {', '.join(GROUP_KEYS)} or kvm.PARAM "
                             "(a KVM module parameter, e.g. kvm.tdp_mmu)")
    return names


def _group_value(fact: dict, name: str) -> str:
    if name.startswith("kvm."):
        params = dict(fact.get("kvm_params") or [])
        param = name[4:]
        value = params.get(param, next((v for k, v in params.items() if k.split(".", 1)[-1] == param), None))
    else:
        value = fact.get(GROUP_KEYS[name])
    return "?" if value is None or value == "" else str(value)


def _plain(value: Any) -> Any:
    """A result value as plain Python: integral numbers as int (engines differ in integer widths)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, float):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def fleet_summary(paths: Sequence[str], *, by: str | Sequence[str] = "kernel", engine: str = "duckdb",
                  master: str | None = None, dataset: Dataset | None = None, **engine_options: Any) -> FleetSummary:
    """The fleet summary of the captures under ``paths`` (see the module docstring)."""
    names = group_columns(by)
    if engine not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if master is not None and engine != "spark":
        raise UsageError("--master applies to --engine spark only")
    if dataset is None and engine == "duckdb":
        inputs, rows = _summarised_on_duckdb(paths, names, engine_options)
    else:
        inputs = _Inputs(*_with_verdicts(dataset or summary_dataset(paths)), names)
        rows = inputs.run(engine, master, engine_options)
    ids = list(inputs.groups)
    for row in rows:
        row["grp"] = inputs.group_names[row["grp"]]
        row["capture"] = ids[row["capture"]] if row["capture"] >= 0 else ""
    by_id = {f["capture"]: f for f in inputs.facts}
    labels = _labels(inputs.facts)
    result = FleetSummary(by=names, engine=engine, problems=list(inputs.dataset.problems))
    for row in sorted(rows, key=lambda r: (r["grp"], r["capture"] != "", _capture_order(by_id, r["capture"]))):
        out = {"group": row["grp"]}
        if row["capture"]:
            fact = by_id[row["capture"]]
            out["capture"] = row["capture"]
            out["label"] = labels[row["capture"]]
            out.update({c: fact.get(c) for c in CAPTURE_COLUMNS})
            out.update({c: (inputs.verdicts[row["capture"]] or {}).get(c) for c in VERDICTS_SHOWN})
        out.update({name: _plain(row[name]) for name in FIGURES})
        (result.captures if row["capture"] else result.groups).append(out)
    return result


class _Inputs:
    """The query's input for ``dataset``: the ``captures`` table (each capture and group numbered) and
    the segments of the families it reads (``fleet_segments``)."""

    def __init__(self, dataset: Dataset, verdicts: dict[str, dict | None], names: list[str]):
        self.dataset, self.verdicts = dataset, verdicts
        self.facts = capture_facts(dataset, phases=False).to_pylist()
        self.groups = {f["capture"]: " / ".join(_group_value(f, n) for n in names) for f in self.facts}
        self.group_names = sorted(set(self.groups.values()))
        self.group_no = {name: number for number, name in enumerate(self.group_names)}
        facts = self.facts
        self.captures = pa.table({
            "capture": pa.array(range(len(facts)), pa.int64()),
            "grp": pa.array([self.group_no[self.groups[f["capture"]]] for f in facts], pa.int64()),
            "status": pa.array([f.get("status") for f in facts], pa.string()),
            "lost_events": pa.array([f.get("lost_events") for f in facts], pa.int64()),
            "analysed": pa.array([int(verdicts[f["capture"]] is not None) for f in facts], pa.int64()),
            **{name: pa.array([(verdicts[f["capture"]] or {}).get(name) for f in facts],
                              pa.int64() if name.startswith("walks_") else pa.string())
               for name in VERDICT_COLUMNS}})

    def run(self, engine: str, master: str | None, options: dict) -> list[dict]:
        """The query's rows on ``engine`` (numbered captures and groups)."""
        runner = (spark_engine(self.dataset, INPUT_COLUMNS, master=master) if engine == "spark"
                  else duckdb_engine(self.dataset, INPUT_COLUMNS, **options))
        try:
            capture_no = {capture: number for number, capture in enumerate(self.groups)}
            files = [(cap.capture_id, str(file)) for cap in self.dataset.captures for family in INPUT_COLUMNS
                     for file in cap.segments(family)]
            runner.register("captures", self.captures)
            runner.register("fleet_segments", pa.table({
                "segment": pa.array([runner.segment_name(file) for _, file in files]),
                "capture": pa.array([capture_no[c] for c, _ in files], pa.int64()),
                "grp": pa.array([self.group_no[self.groups[c]] for c, _ in files], pa.int64())}))
            return runner.summarise(capture_sql(), summary_sql()).to_pylist()
        finally:
            runner.close()


def _summarised_on_duckdb(paths: Sequence[str], names: list[str], options: dict) -> tuple[_Inputs, list[dict]]:
    """The query on DuckDB over the captures opened without the footers its scans read
    (:func:`listed_dataset`): DuckDB reads those footers, and a file it cannot read fails the query; then
    every footer the summary reads is checked (:func:`summary_dataset`), the captures found bad are left
    out (named in ``problems``) and the query runs again over the rest."""
    inputs = _Inputs(*_with_verdicts(listed_dataset(paths)), names)
    try:
        return inputs, inputs.run("duckdb", None, options)
    except (CaptureFormatError, QueryError):
        checked = _Inputs(*_with_verdicts(summary_dataset(paths)), names)
        if len(checked.dataset.captures) == len(inputs.dataset.captures):
            raise  # no capture found bad: DuckDB's own line
        return checked, checked.run("duckdb", None, options)


def _with_verdicts(ds: Dataset) -> tuple[Dataset, dict[str, dict | None]]:
    """``ds`` without the captures whose verdicts file is unreadable (named in its problems), and each
    capture's stored verdicts (None: not analysed, or analysed as other rows)."""
    kept, problems, verdicts = [], list(ds.problems), {}
    for cap in ds.captures:
        try:
            verdicts[cap.capture_id] = stored_verdicts(cap)
        except CaptureFormatError as error:
            problems.append(str(error))
            continue
        kept.append(cap)
    if not kept:
        raise CaptureFormatError(problems[-1] if len(problems) == 1 else f"no readable capture ({len(problems)} refused)")
    return (ds if len(kept) == len(ds.captures) else Dataset(kept, problems)), verdicts


def _labels(facts: list[dict]) -> dict[str, str]:
    """Each capture's path (or URL) below the directory all of them share, without ``.tkcap``."""
    parts = [(f["path"] if is_url(f["path"]) else os.path.abspath(f["path"])).rstrip("/").split("/") for f in facts]
    shared = 0
    while parts and shared < min(map(len, parts)) - 1 and len({p[shared] for p in parts}) == 1:
        shared += 1
    return {f["capture"]: "/".join(p[shared:]).removesuffix(".tkcap") for f, p in zip(facts, parts)}


def _capture_order(by_id: dict, capture: str) -> tuple:
    fact = by_id.get(capture) or {}
    return (fact.get("path") or "", capture)
