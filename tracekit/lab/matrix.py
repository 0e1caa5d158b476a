"""A kernel matrix: lab scenarios run on several kernels, compared in the shape of a kernel cover letter.

:func:`plan` expands columns (``KERNEL[,SETTING=VALUE...]``), scenarios, vCPU counts and repeats into cells, each
with its capture ``DIR/COLUMN/SCENARIO/RUN.tkcap``. :func:`run_matrix` runs them one at a time with
:func:`tracekit.lab.runner.run_lab`, writing each outcome beside its capture and reusing those already in DIR
(resume); a scenario the kernel feature table rules out is ``n/a``, never booted. :func:`build_tables` reads
the captures back into one :class:`Table` per scenario: measures as rows (probe counts per step, visits per
level, lock waits by mode and waiter, the checks judged with that kernel's semantics, step times), kernels as
columns. Counts are exact; times are the emulator's, marked as such and never compared.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from tracekit.analysis.compare import mean_stdev
from tracekit.analysis.locks import known_mmu_locks, lock_mode
from tracekit.capture import CaptureWriter, open_capture
from tracekit.errors import NotApplicable, TracekitError, UsageError, one_line
from tracekit.lab import runner, scenarios
from tracekit.lab.guest_run import probe_family

__all__ = ["Column", "Cell", "Table", "parse_column", "plan", "run_matrix", "build_tables", "render_markdown",
           "tables_json", "write_outputs", "copy_for_sample", "run_checks", "EMULATED", "TABLE_FAMILIES"]

#: Marks every time in the table: durations under TCG say nothing about hardware.
EMULATED = "emulated"
_OUTCOME = ".outcome.json"


@dataclass(frozen=True)
class Column:
    """One column of the matrix: a kernel (``debian:trixie``, a release, an image path) and scenario settings."""

    spec: str
    kernel: str
    settings: str = ""

    @property
    def dirname(self) -> str:
        """A file name that says which kernel and settings (stable, so a matrix resumes)."""
        name = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", self.spec.replace(":", "-")).strip("_")
        return name if name.strip(".") else f"_{name}"  # never "", "." or "..": a column stays inside DIR


@dataclass(frozen=True)
class Cell:
    column: Column
    scenario: str  # the scenario as run: NAME[@SETTING=VALUE,...] with the column's settings
    label: str  # the scenario as listed in the table (without the column's settings)
    run: int
    capture: Path

    @property
    def outcome_path(self) -> Path:
        return self.capture.with_name(self.capture.name.removesuffix(".tkcap") + _OUTCOME)


def parse_column(spec: str) -> Column:
    """``KERNEL[,SETTING=VALUE...]`` as a :class:`Column` (the settings are checked when the plan is made)."""
    kernel, _, settings = spec.partition(",")
    if not kernel:
        raise UsageError(f"--kernel {spec!r} names no kernel (debian:CODENAME, a release or an image path)")
    return Column(spec, kernel, settings)


def plan(arch: str, kernels: list[str], scenario_names: list[str], out: Path, vcpus: list[int] | None = None,
         repeat: int = 1) -> list[Cell]:  # fmt: skip
    """Every cell of the matrix, columns outermost (one kernel's runs follow each other)."""
    if arch not in ("arm64", "x86"):
        raise UsageError(f"unknown lab architecture {arch!r}; choose arm64 or x86")
    if repeat < 1:
        raise UsageError("--repeat must be at least 1")
    if not kernels or not scenario_names:
        raise UsageError("a matrix needs at least one --kernel and one --scenario")
    columns = [parse_column(k) for k in kernels]
    if len({c.dirname for c in columns}) != len(columns):
        raise UsageError("two --kernel columns are the same")
    labels = []
    for name in scenario_names:
        for count in vcpus or [None]:
            variant = f"vcpus={count}" if count is not None else ""
            base, _, own = name.partition("@")
            label = scenarios.get(f"{base}@{','.join(filter(None, (own, variant)))}", arch).name
            labels.append(label)
    cells = []
    for column in columns:
        for label in labels:
            base, _, own = label.partition("@")
            name = scenarios.get(f"{base}@{','.join(filter(None, (own, column.settings)))}", arch).name
            for run in range(1, repeat + 1):
                cells.append(Cell(column, name, label, run, out / column.dirname / label / f"{run}.tkcap"))
    return cells


def _reusable(cell: Cell, retry_failed: bool) -> dict | None:
    """The outcome of a cell already done in an earlier invocation, or None (and a half-written capture removed)."""
    try:
        outcome = json.loads(cell.outcome_path.read_text()) if cell.outcome_path.is_file() else None
        status = outcome["status"] if isinstance(outcome, dict) else None
        manifest = cell.capture / "capture.json"
        complete = manifest.is_file() and json.loads(manifest.read_text()).get("status") == "complete"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # a damaged record: run the cell again
        status, complete = None, False
    if status in ("failed", "n/a") and not retry_failed:
        return outcome
    if status in ("ok", "checks-failed") and complete:
        return outcome
    if cell.capture.exists():  # interrupted: a capture without its outcome, or one its writer never finished
        shutil.rmtree(cell.capture)
    return None


def run_matrix(arch: str, cells: list[Cell], *, timeout: float | None = None, retry_failed: bool = False,
               progress=None, run_lab=None) -> list[dict]:  # fmt: skip
    """Run (or reuse) every cell; returns their outcomes in order (see the module contract).

    ``progress(cell, outcome, reused)`` is called after each cell; ``run_lab`` defaults to
    :func:`tracekit.lab.runner.run_lab` (tests give their own)."""
    if run_lab is None:
        run_lab = runner.run_lab  # looked up now: tests replace it
    outcomes = []
    for cell in cells:
        outcome = _reusable(cell, retry_failed)
        reused = outcome is not None
        if outcome is None:
            outcome = _run_cell(arch, cell, timeout, run_lab)
            cell.outcome_path.parent.mkdir(parents=True, exist_ok=True)
            cell.outcome_path.write_text(json.dumps(outcome, indent=1, sort_keys=True))
        outcomes.append(outcome)
        if progress is not None:
            progress(cell, outcome, reused)
    return outcomes


def _run_cell(arch: str, cell: Cell, timeout, run_lab) -> dict:
    """One lab run; a scenario the kernel cannot run (the kernel feature table says so) is n/a, never booted."""
    base = {"kernel": cell.column.spec, "scenario": cell.scenario, "run": cell.run}
    cell.capture.parent.mkdir(parents=True, exist_ok=True)
    # the capture's own command: the one lab run that gives it again (no machine paths in the manifest)
    command_line = shlex.join(["tracekit", "lab", arch, "--kernel", cell.column.kernel, "-s", cell.scenario, "-o",
                               cell.capture.name])  # fmt: skip
    try:
        run = run_lab(arch, cell.scenario, cell.capture, kernel=cell.column.kernel, timeout=timeout,
                      command_line=command_line)  # fmt: skip
    except NotApplicable as error:
        return {**base, "status": "n/a", "reason": one_line(str(error))}
    except TracekitError as error:
        return {**base, "status": "failed", "reason": one_line(str(error))}
    failed = [c for c in run.checks if not c["ok"]]
    return {**base, "status": "ok" if not failed else "checks-failed", "kernel_release": run.kernel_release,
            "boot_seconds": round(run.boot_seconds, 1), "checks": run.checks}  # fmt: skip


# --- the table ---------------------------------------------------------------------------------------------


@dataclass
class Table:
    """One scenario's rows (``key``, ``label``, ``kind``: info, count, check or emulated) and a cell per column."""

    scenario: str
    arch: str
    description: str
    columns: list[str]
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: runs that failed, or whose checks were not met (a matrix with any is not a pass)
    problems: int = 0


def _probe_labels(arch: str) -> list[tuple[str, str, str | None]]:
    """(event name, label, tracepoint system or None) of every counted probe in the lab's family order; the
    per-entry visitor probes are left to the visits rows."""
    probes, tracepoints = probe_family(arch)
    rows = [(p.name, f"{p.name} (`{p.symbol}`)", None) for p in probes if not p.hot]
    return rows + [(event, f"`{system}:{event}`", system) for system, event in tracepoints]


def capture_measures(capture: Path, arch: str, checks: list[dict] | None = None) -> dict[str, tuple[str, str, object]]:
    """``{row key: (label, kind, value)}`` of one lab capture (see the module contract); ``checks`` are the run's
    (:func:`tracekit.lab.runner.scenario_checks`), else the scenario's expectations against the manifest's counts."""
    cap = open_capture(capture)
    manifest = cap.manifest
    lab = manifest.get("lab") or {}
    probes = manifest.get("probes") or {}
    out: dict[str, tuple[str, str, object]] = {}
    out["info:kernel"] = ("kernel", "info", manifest.get("kernel_release", "?"))
    params = manifest.get("kvm_params") or {}
    for name in ("kvm.tdp_mmu", "kvm.eager_page_split"):
        if arch == "x86":
            out[f"info:{name}"] = (name, "info", params.get(name, "absent"))
    lost = sum(int(entry.get("count", 0)) for entry in manifest.get("lost") or [])
    out["info:lost"] = ("events lost", "info", lost + int((lab.get("decode") or {}).get("missed", 0)))
    failed = {f["probe"]: f["reason"] for f in probes.get("failed", [])}
    out["info:failed"] = ("probes not attached", "info", ", ".join(sorted(failed)) or "none")
    modes: dict[str, int] = {}
    for entry in probes.get("resolution", []):
        if entry.get("mode") and entry["probe"] not in failed:
            modes[entry["mode"]] = modes.get(entry["mode"], 0) + 1
    if modes:  # how the arguments were fetched: BTF names (6.8+), registers and BTF offsets, or not at all
        out["info:args"] = ("probe arguments", "info", ", ".join(f"{mode} {n}" for mode, n in sorted(modes.items())))
    recorded = probes.get("tracepoints")  # None in captures older than the list
    steps = lab.get("steps", [])
    counted = _probe_labels(arch)
    for step in steps:  # step-major: the table reads phase by phase (ioctl by ioctl)
        for name, label, system in counted:
            absent = name in failed or (system is not None and recorded is not None and f"{system}:{name}" not in recorded)
            value = "n/a: not attached" if absent else step["counts"].get(name, 0)
            out[f"count:{step['op']}:{name}"] = (f"{step['op']}: {label}", "count", value)
    _visits(cap, manifest, arch, out)
    _locks(cap, manifest, steps, out)
    for check in checks if checks is not None else _checks_of(manifest):
        out[f"check:{check['count']}"] = _check_row(check)
    for step in steps:
        if "begin_ns" in step and "end_ns" in step:
            out[f"time:{step['op']}"] = (f"{step['op']} time, ms ({EMULATED})", "emulated",
                                         (step["end_ns"] - step["begin_ns"]) / 1e6)  # fmt: skip
    return out


def run_checks(arch: str, cell: Cell) -> list[dict]:
    """The scenario's checks of one capture, judged now (:func:`tracekit.lab.runner.scenario_checks`: that kernel's
    semantics, the model's counts, the evidence probes), so a table follows the scenario definitions it is made with."""
    manifest = json.loads((cell.capture / "capture.json").read_text())
    return runner.scenario_checks(scenarios.get(cell.scenario, arch), manifest.get("kernel_release", ""),
                                  (manifest.get("lab") or {}).get("counts") or {}, manifest.get("probes") or {},
                                  cell.capture)  # fmt: skip


def _check_row(check: dict) -> tuple[str, str, object]:
    """A scenario check as a row: the measured count and whether it met that kernel's expectation, or why there
    is none (n/a, not attached). The expectation is per column: a variant or an older kernel changes it."""
    kind = check.get("kind", "exact")
    label = f"check: {check['count']} " + ("fired (evidence)" if kind == "fired" else f"({kind})")
    if check.get("applicable", True) is False:
        return label, "check", f"n/a: {check.get('reason', '')}"
    if check.get("measured") is None:
        return label, "check", check.get("reason") or "not measured"
    if kind == "fired":
        return label, "check", check["measured"] if check.get("ok", True) else f"{check['measured']:,} (never fired)"
    verdict = "ok" if check.get("ok", True) else "not met"
    return label, "check", f"{check['measured']:,} ({verdict}: expected {check['expected']:,})"


def _checks_of(manifest: dict) -> list[dict]:
    expected = ((manifest.get("workload") or {}).get("scenario") or {}).get("expected") or {}
    counts = (manifest.get("lab") or {}).get("counts") or {}
    return [{"count": k, "expected": v, "measured": counts.get(k, 0)} for k, v in expected.items()]


def _visits(cap, manifest: dict, arch: str, out: dict) -> None:
    """Per-entry visits per visitor and level (and kind: block, page, table, step)."""
    failed = {f["probe"] for f in (manifest.get("probes") or {}).get("failed", [])}
    for probe in probe_family(arch)[0]:
        if probe.hot and probe.name in failed:  # its visitor's rows missing here are not 0 visits
            out[f"na:visit:{probe.symbol}"] = ("", "na", f"n/a: {probe.name} not attached")
    if not cap.has("stage2_visit"):
        return
    visits = cap.dataframe("stage2_visit")
    if visits.empty:
        return
    totals = visits.groupby(["visitor", "level", "kind"], observed=True)["count"].sum()
    for (visitor, level, kind), count in totals.items():
        where = f"level {level}" if level >= 0 or arch == "arm64" else "level not read (probe without arguments)"
        out[f"visit:{visitor}:{level}:{kind}"] = (f"visits: {visitor} {where} {kind}", "count", int(count))


def _locks(cap, manifest: dict, steps: list[dict], out: dict) -> None:
    """Lock waits by lock (``mmu_lock`` or other), mode and who waited (a vCPU, or the VMM in a step)."""
    scenario = (manifest.get("workload") or {}).get("scenario") or {}
    if not any(tp.startswith("lock:") for tp in scenario.get("tracepoints", [])):
        return
    probes = manifest.get("probes") or {}
    recorded = probes.get("tracepoints")
    standin = scenarios.LOCK_STANDIN.name in probes.get("attached", [])
    if recorded is not None and "lock:contention_begin" not in recorded and not standin:
        why = "n/a: this kernel has no lock:contention_* tracepoints (5.19+): no lock wait is measurable"
        out["lock:mmu_lock:_all"] = ("mmu_lock waits", "count", why)
        out["na:lock"] = out["na:locktime"] = ("", "na", why)
        return
    waits = cap.dataframe("lock") if cap.has("lock") else None
    mmu = set(known_mmu_locks(manifest))
    vmm = set((manifest.get("target") or {}).get("pids") or [])
    out["lock:mmu_lock:_all"] = ("mmu_lock waits", "count", 0)
    if waits is None or waits.empty:
        return
    bounds = [(s["begin_ns"], s["end_ns"], s["op"]) for s in steps if "begin_ns" in s and "end_ns" in s]

    def who(tid: int, pid: int, ts: int) -> str:
        if pid not in vmm:
            return "other process"
        if tid != pid:
            return "vCPU"
        return "VMM in " + next((op for begin, end, op in bounds if begin <= ts <= end), "no step")

    modes = lock_mode(waits["flags"].to_numpy())
    table: dict[tuple, list[int]] = {}
    for addr, mode, tid, pid, ts, wait in zip(waits["lock_addr"], modes, waits["tid"], waits["pid"],
                                             waits["ts_ns"], waits["wait_ns"]):  # fmt: skip
        lock = "mmu_lock" if int(addr) in mmu else "other locks"
        entry = table.setdefault((lock, mode, who(int(tid), int(pid), int(ts))), [0, 0])
        entry[0] += 1
        entry[1] += int(wait)
    out["lock:mmu_lock:_all"] = ("mmu_lock waits", "count", sum(n for (lock, _, _), (n, _) in table.items()
                                                                 if lock == "mmu_lock"))  # fmt: skip
    for (lock, mode, waiter), (count, wait_ns) in sorted(table.items()):
        out[f"lock:{lock}:{mode}:{waiter}"] = (f"{lock} waits, {mode}, by {waiter}", "count", count)
        out[f"locktime:{lock}:{mode}:{waiter}"] = (f"{lock} wait, {mode}, by {waiter}, ms ({EMULATED})", "emulated",
                                                   wait_ns / 1e6)  # fmt: skip


def _cell_text(kind: str, values: list) -> tuple[str, object]:
    """The shown text and the JSON value of one cell from its runs' values."""
    if not values:
        return "-", None
    texts = [v for v in values if isinstance(v, str)]
    if texts:
        return (texts[0] if len(set(texts)) == 1 else " / ".join(dict.fromkeys(texts))), texts[0]
    if kind == "emulated":
        mean, stdev = mean_stdev(values)
        text = f"{mean:,.1f}" + (f" ± {stdev:,.1f}" if stdev is not None else "")
        return text, {"mean": mean, "stdev": stdev or 0.0, "runs": values}
    if len(set(values)) == 1:
        return f"{values[0]:,}", values[0]
    return f"{min(values):,}-{max(values):,} (runs differ)", values


def build_tables(arch: str, cells: list[Cell], outcomes: list[dict]) -> list[Table]:
    """One :class:`Table` per scenario label, from the captures and outcomes of a run matrix."""
    columns = list(dict.fromkeys(c.column.spec for c in cells))
    tables = []
    for label in dict.fromkeys(c.label for c in cells):
        scenario = scenarios.get(label, arch)
        table = Table(label, arch, scenario.description, columns)
        per_column: dict[str, list[dict]] = {c: [] for c in columns}
        status: dict[str, str] = {}
        missed: dict[str, int] = {}
        for cell, outcome in zip(cells, outcomes):
            if cell.label != label:
                continue
            if outcome["status"] in ("ok", "checks-failed"):
                checks = run_checks(arch, cell)
                missed[cell.column.spec] = missed.get(cell.column.spec, 0) + (not all(c["ok"] for c in checks))
                per_column[cell.column.spec].append(capture_measures(cell.capture, arch, checks))
            else:
                status.setdefault(cell.column.spec, f"{'n/a' if outcome['status'] == 'n/a' else 'failed'}: "
                                  f"{outcome['reason']}")  # fmt: skip
        runs_row = []
        for column in columns:
            mine = [o for c, o in zip(cells, outcomes) if c.label == label and c.column.spec == column]
            done = [o for o in mine if o["status"] in ("ok", "checks-failed")]
            text = f"{len(done)} of {len(mine)}" if done else status.get(column, "-")
            if missed.get(column):
                text += f", {missed[column]} with a check not met"
            runs_row.append(text)
            table.problems += missed.get(column, 0) + sum(o["status"] == "failed" for o in mine)
        table.rows.append({"key": "info:runs", "label": "runs", "kind": "info", "cells": runs_row, "values": runs_row})
        keys: dict[str, tuple[str, str]] = {}
        for runs in per_column.values():
            for measures in runs:
                for key, (row_label, kind, _value) in measures.items():
                    keys.setdefault(key, (row_label, kind))
        order = {key: i for i, key in enumerate(keys)}
        for key in sorted((k for k in keys if not k.startswith("na:")), key=lambda k: _row_order(k, order)):
            row_label, kind = keys[key]
            cells_out, values_out = [], []
            for column in columns:
                runs = per_column[column]
                if not runs:  # the runs row says why
                    text, value = status.get(column, "-").split(":", 1)[0] if column in status else "-", None
                else:
                    text, value = _cell_text(kind, [v for v in (_run_value(m, key, kind) for m in runs) if v is not None])
                cells_out.append(text)
                values_out.append(value)
            if kind == "count" and key not in _ALWAYS and not any(_nonzero(v) for v in values_out):
                continue  # fired on no kernel (or could not be measured anywhere): nothing to compare
            table.rows.append({"key": key, "label": row_label, "kind": kind, "cells": cells_out, "values": values_out})
        table.notes += _unattached_notes([c for c, o in zip(cells, outcomes)
                                          if c.label == label and o["status"] in ("ok", "checks-failed")])  # fmt: skip
        tables.append(table)
    return tables


def _unattached_notes(cells: list[Cell]) -> list[str]:
    """Per column, the probes its kernel could not attach grouped by reason (from the first run's manifest)."""
    notes, seen = [], set()
    for cell in cells:
        if cell.column.spec in seen:
            continue
        seen.add(cell.column.spec)
        failed = json.loads((cell.capture / "capture.json").read_text()).get("probes", {}).get("failed", [])
        by_reason: dict[str, list[str]] = {}
        for entry in failed:
            by_reason.setdefault(entry["reason"], []).append(entry["probe"])
        notes += [f"`{cell.column.spec}` did not attach {', '.join(names)}: {reason}" for reason, names in by_reason.items()]
    return notes


def _nonzero(value) -> bool:
    if isinstance(value, list):
        return any(_nonzero(v) for v in value)
    return isinstance(value, (int, float)) and value != 0


#: Rows shown even when zero everywhere: no mmu_lock wait is a finding.
_ALWAYS = {"lock:mmu_lock:_all"}
_ORDER = ("info:", "check:", "count:", "visit:", "lock:", "locktime:", "time:")


def _row_order(key: str, first_seen: dict[str, int]) -> tuple:
    """Rows by group; steps and checks as the runs met them, visits and locks by name (mmu_lock first)."""
    group = next(i for i, prefix in enumerate(_ORDER) if key.startswith(prefix))
    return (group, key if _ORDER[group] in ("visit:", "lock:", "locktime:") else "", first_seen[key])


def _run_value(measures: dict, key: str, kind: str):
    """One run's value of a row: measured, or why not (``na:GROUP``), or 0 for a count the run did not meet."""
    if key in measures:
        return measures[key][2]
    parts = key.split(":")
    for end in range(len(parts) - 1, 0, -1):  # na:visit:VISITOR, then na:visit
        na = measures.get("na:" + ":".join(parts[:end]))
        if na is not None:
            return na[2]
    return 0 if kind == "count" else None


def render_markdown(tables: list[Table], command: str = "") -> str:
    """The tables as Markdown, one section per scenario (what ``tracekit lab matrix`` prints and writes)."""
    lines = []
    if command:
        lines += [f"    {command}", ""]
    if len(tables) > 1:
        lines += _summary(tables)
    for table in tables:
        lines += [f"### {table.arch} `{table.scenario}`: {table.description}", ""]
        lines.append("| measure | " + " | ".join(f"`{c}`" for c in table.columns) + " |")
        lines.append("|---|" + "---:|" * len(table.columns))
        for row in table.rows:
            lines.append(f"| {row['label']} | " + " | ".join(str(c).replace("|", "\\|") for c in row["cells"]) + " |")
        lines += [""] + [f"- {note}" for note in table.notes]
        lines += [""] if table.notes else []
    lines.append(f"Counts are exact; rows marked ({EMULATED}) are {runner.TIMING_NOTE}.")
    return "\n".join(lines) + "\n"


def _summary(tables: list[Table]) -> list[str]:
    """One line per scenario: each kernel's runs and the scenario's checks (exact counts, evidence, n/a)."""
    columns = list(dict.fromkeys(c for t in tables for c in t.columns))
    lines = ["### Summary: runs and checks per scenario", "",
             "| scenario | " + " | ".join(f"`{c}`" for c in columns) + " |", "|---|" + "---|" * len(columns)]
    for table in tables:
        runs = next(row for row in table.rows if row["key"] == "info:runs")
        checks = [row for row in table.rows if row["kind"] == "check"]
        cells = []
        for i, column in enumerate(columns):
            at = table.columns.index(column) if column in table.columns else None
            if at is None:
                cells.append("-")
                continue
            text = runs["cells"][at]
            if not checks or text.startswith(("n/a", "failed")):
                cells.append(text)
                continue
            shown = "; ".join(f"{row['label'].removeprefix('check: ').split(' ', 1)[0]} {row['cells'][at]}"
                              for row in checks)  # fmt: skip
            cells.append(f"{text}; {shown}")
        lines.append(f"| `{table.scenario}` | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines + [""]


def tables_json(tables: list[Table], cells: list[Cell], outcomes: list[dict], command: str = "",
                plan_args: dict | None = None) -> dict:  # fmt: skip
    """The ``matrix.json`` document (``tracekit.lab.matrix/1``); ``plan_args`` are :func:`plan`'s arguments but
    the directory (a sample's table is made again from them)."""
    return {
        "schema": "tracekit.lab.matrix/1",
        "command": command,
        "plan": plan_args or {},
        "timing_note": runner.TIMING_NOTE,
        "runs": [{**o, "capture": f"{c.column.dirname}/{c.label}/{c.capture.name}"} for c, o in zip(cells, outcomes)],
        "tables": [{"scenario": t.scenario, "arch": t.arch, "description": t.description, "columns": t.columns,
                    "rows": t.rows, "notes": t.notes, "problems": t.problems} for t in tables],  # fmt: skip
    }


def write_outputs(out: Path, tables: list[Table], cells: list[Cell], outcomes: list[dict], command: str = "",
                  plan_args: dict | None = None) -> str:  # fmt: skip
    """Write ``matrix.md`` and ``matrix.json`` in ``out``; returns the Markdown."""
    text = render_markdown(tables, command)
    out.mkdir(parents=True, exist_ok=True)
    (out / "matrix.md").write_text(text)
    doc = tables_json(tables, cells, outcomes, command, plan_args)
    (out / "matrix.json").write_text(json.dumps(doc, indent=1) + "\n")
    return text


#: The capture families the table reads; committed samples keep only these (and the manifest).
TABLE_FAMILIES = ("stage2_visit", "lock")


def _kept_families(manifest: dict) -> tuple[str, ...]:
    """:data:`TABLE_FAMILIES`, plus the walks where the scenario's checks ask the model (``model_counts``)."""
    recorded = ((manifest.get("workload") or {}).get("scenario")) or {}
    arch = "arm64" if manifest.get("arch") == "aarch64" else "x86"
    try:
        model = scenarios.get(recorded.get("name", ""), arch).model_counts
    except UsageError:  # a scenario since renamed: what it recorded
        model = recorded.get("model_counts")
    return TABLE_FAMILIES + (("stage2_walk",) if model or recorded.get("model_counts") else ())


def copy_for_sample(src: Path, dest: Path) -> None:
    """Copy matrix directory ``src`` to ``dest`` small enough to commit: the outcomes, ``matrix.md``/``.json`` and
    each capture rewritten with only :data:`TABLE_FAMILIES` (see :func:`_trimmed_capture`); console logs stay
    behind."""
    captures = sorted(p.parent for p in src.rglob("capture.json"))
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_file() and not path.name.endswith(".log") and not any(c in path.parents for c in captures):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest / rel)
    for capture in captures:
        _trimmed_capture(capture, dest / capture.relative_to(src))


#: Above this many rows, a sample's visits are kept as their sums per visitor, level and kind.
_VISIT_ROWS = 2_000


def _trimmed_capture(source: Path, target: Path) -> None:
    """``source`` rewritten at ``target`` with the families the table reads; visits summed per visitor, level and
    kind when they are many and no model check needs them walk by walk. The manifest keeps the recording's own
    facts and says what was left out (``sample_trimmed``: family -> rows, or how the visits were summed)."""

    cap = open_capture(source)
    manifest = dict(cap.manifest)
    kept = _kept_families(manifest)
    trimmed = {name: cap.rows(name) for name in cap.families() if name not in kept}
    tables = {name: cap.table(name) for name in cap.families() if name in kept}
    visits = tables.get("stage2_visit")
    if visits is not None and visits.num_rows > _VISIT_ROWS and "stage2_walk" not in kept:
        keys = ["visitor", "level", "kind"]
        summed = visits.group_by(keys).aggregate([("count", "sum"), ("ts_ns", "min"), ("cpu", "min"), ("pid", "min"),
                                                  ("tid", "min")])  # fmt: skip
        columns = {"ts_ns": "ts_ns_min", "cpu": "cpu_min", "pid": "pid_min", "tid": "tid_min", "count": "count_sum"}
        arrays = [summed[columns.get(f.name, f.name)] if f.name != "walk_id" else pa.array([-1] * summed.num_rows)
                  for f in visits.schema]  # fmt: skip
        tables["stage2_visit"] = pa.Table.from_arrays([a.cast(f.type) for a, f in zip(arrays, visits.schema)],
                                                      schema=visits.schema)  # fmt: skip
        trimmed["stage2_visit"] = f"{visits.num_rows} rows summed per visitor, level and kind (walk_id -1)"
    timing = {k: manifest.pop(k) for k in ("start", "stop", "stop_monotonic_ns", "duration_s") if k in manifest}
    for key in ("families", "lost", "status", "writer_pid"):
        manifest.pop(key, None)
    with CaptureWriter(target, manifest={**manifest, "sample_trimmed": trimmed}) as writer:
        for name, table in tables.items():
            writer.declare(name, table.schema)
            if table.num_rows:
                writer.append(name, table)
        for entry in cap.manifest.get("lost") or []:
            writer.add_lost(entry["probe"], int(entry["cpu"]), int(entry["count"]))
    written = json.loads((target / "capture.json").read_text())
    (target / "capture.json").write_text(json.dumps({**written, **timing}, indent=1, sort_keys=True))
