"""Hostile mutations of a recorded capture, and the commands a user runs on them.

:func:`mutations` yields ``(name, mutate)`` pairs from a seeded random generator: badly typed or huge
manifest values, damaged manifest text, flipped bytes and truncations in segments, well-formed segments
holding extreme values or nulls, segments and schema files of another family, foreign columns,
non-UTF-8 names, files symlinked outside the capture.
:func:`run_command` runs one tracekit command in-process and returns its exit code and the problems
found: a traceback, an exit code other than 0 or 1, an error of more than one line.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from tracekit.cli import app

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "x86-dirty-log-4k.tkcap"

#: Manifest fields some command reads (dotted paths; ``#`` is any list index).
READ_FIELDS = [
    "lost", "lost.#", "lost.#.count", "lost.#.probe", "lost.#.cpu", "target", "target.pids", "target.pids.#",
    "target.comm", "target.threads", "target.threads.#", "target.threads.#.tid", "target.threads.#.vcpu",
    "target.threads.#.comm", "target.threads.#.vcpu_from", "target.vms", "target.vms.#.pid", "target.vcpu_fds",
    "command_output", "command_output.stdout", "window", "window.seconds", "window.start_ns", "partial",
    "partial.walk_elements_without_start", "source", "source.kind", "source.description", "status",
    "format_version",
    "host", "kernel_release", "arch", "page_size", "kvm_params", "clock", "clock.anchor",
    "clock.anchor.monotonic_ns", "start", "stop", "duration_s", "probes", "probes.attached",
    "probes.attached.#", "probes.failed", "backend", "command_line", "families", "writer_pid",
    "workload", "workload.phases", "workload.phases.#", "workload.phases.#.start_ns",
    "workload.phases.#.end_ns", "workload.phases.#.name", "workload.phases.#.iteration", "workload.vcpus",
    "workload.vcpus.#", "workload.vcpus.#.tid", "workload.vcpus.#.index", "workload.guest_paging",
    "workload.guest_paging.mappings", "workload.guest_paging.mappings.#.gva",
    "workload.guest_paging.levels", "workload.guest_paging.table_gpas", "workload.ioctls",
    "workload.ioctls.#", "workload.ioctls.#.start_ns", "workload.ioctls.#.name", "workload.ioctls.#.arg",
    "workload.arch", "workload.memslots", "workload.memslots.#.size", "workload.test_region",
    "workload.options", "workload.iterations", "workload.scenario", "model_scenario", "mmu_lock_addrs",
    "lab", "family_notes",
]

HOSTILE_VALUES: list[object] = [
    "abc", "", [1], [], {}, {"a": 1}, None, True, 4096, -1, 0, 10**30, -(10**30), 2**63, 1.5,
    float("nan"), float("inf"), float("-inf"), [None], [[1]], ["x"], [{"tid": "x"}], {"pids": "1"},
    "\udcff", "x" * 10_000, [10**30], [float("nan")], 2**31 - 1, 2**63 - 1, -(2**63), [0, 2**63 - 1],
]

COMMANDS = [
    ["info"], ["info", "--json"], ["analyze"], ["analyze", "--json"], ["report"], ["compare"],
    ["export", "-f", "walk"], ["export", "-f", "ioctl", "--format", "jsonl"], ["export", "--perfetto"],
]


def _set(tree, path: list, value) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _paths(tree, prefix=()) -> Iterator[tuple]:
    """Every path into ``tree`` (keys and list indexes)."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        yield prefix + (key,)
        yield from _paths(value, prefix + (key,))


def _resolve(manifest: dict, dotted: str, rng: random.Random) -> list | None:
    """A concrete path for ``dotted`` (``#`` replaced by an index of that list), or None if absent."""
    node, path = manifest, []
    for part in dotted.split("."):
        if part == "#":
            if not isinstance(node, list) or not node:
                return None
            key = rng.randrange(len(node))
        elif isinstance(node, dict) and part in node:
            key = part
        elif isinstance(node, dict):
            return path + [part]  # absent key: add it
        else:
            return None
        path.append(key)
        node = node[key]
    return path


def _manifest(cap: Path) -> dict:
    return json.loads((cap / "capture.json").read_text())


def _write_manifest(cap: Path, manifest: dict) -> None:
    (cap / "capture.json").write_text(json.dumps(manifest))


def _segments(cap: Path) -> list[Path]:
    return sorted(cap.glob("*/part-*.parquet"))


def _families(cap: Path) -> list[Path]:
    return sorted(p for p in cap.iterdir() if p.is_dir())


def mutations(seed: int, count: int, outside: Path) -> Iterator[tuple[str, Callable[[Path], None]]]:
    """``count`` named mutations of a capture copy, drawn from ``seed``; ``outside`` is a directory out of
    the capture holding ``secret`` (a file) and ``valid.tkcap`` (an intact copy) for symlink targets."""
    rng = random.Random(seed)

    def manifest_value(cap: Path, rng=rng) -> str:
        manifest = _manifest(cap)
        if rng.random() < 0.75:
            path = _resolve(manifest, rng.choice(READ_FIELDS), rng)
        else:
            path = list(rng.choice(list(_paths(manifest))))
        value = rng.choice(HOSTILE_VALUES)
        if path:
            _set(manifest, path, value)
        _write_manifest(cap, manifest)
        return f"{'.'.join(map(str, path or []))}={str(value)[:20]!r}"

    def manifest_delete(cap: Path, rng=rng) -> str:
        manifest = _manifest(cap)
        path = list(rng.choice(list(_paths(manifest))))
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
        _write_manifest(cap, manifest)
        return ".".join(map(str, path))

    def manifest_text(cap: Path, rng=rng) -> str:
        text = (cap / "capture.json").read_bytes()
        kind = rng.choice(["truncate", "flip", "deep", "deep_value", "huge", "trailing", "non_utf8", "bom"])
        if kind == "truncate":
            text = text[: rng.randrange(len(text))]
        elif kind == "flip":
            data = bytearray(text)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            text = bytes(data)
        elif kind == "deep":
            text = b"[" * 100_000
        elif kind == "deep_value":
            manifest = _manifest(cap)
            manifest["target"] = json.loads("[" * 500 + "]" * 500)
            text = json.dumps(manifest).encode()
        elif kind == "huge":
            text = text[:-2] + b', "pad": "' + b"x" * (20 << 20) + b'"}'
        elif kind == "trailing":
            text = text + b" " * (20 << 20)
        elif kind == "non_utf8":
            text = text.replace(b'"tracekit"', b'"trace\xffkit"', 1)
        else:
            text = b"\xef\xbb\xbf" + text
        (cap / "capture.json").write_bytes(text)
        return kind

    def segment_bytes(cap: Path, rng=rng) -> str:
        segment = rng.choice(_segments(cap))
        data = bytearray(segment.read_bytes())
        kind = rng.choice(["flip", "flip", "truncate", "zero"])
        if kind == "flip":
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            data = data[: rng.randrange(len(data))]
        else:
            start = rng.randrange(len(data))
            data[start:start + 64] = bytes(len(data[start:start + 64]))
        segment.write_bytes(bytes(data))
        return f"{kind} {segment.parent.name}/{segment.name}"

    def foreign_segment(cap: Path, rng=rng) -> str:
        segments = _segments(cap)
        source = rng.choice(segments)
        family = rng.choice([f for f in _families(cap) if f.name != source.parent.name])
        kind = rng.choice(["copy", "replace", "schema", "column_a", "snapshot"])
        if kind == "copy":
            shutil.copy(source, family / "part-000009.parquet")
        elif kind == "replace":
            target = sorted(family.glob("part-*.parquet"))
            shutil.copy(source, target[0] if target else family / "part-000001.parquet")
        elif kind == "schema":
            shutil.copy(source.parent / "_schema.parquet", family / "_schema.parquet")
        elif kind == "column_a":
            pq.write_table(pa.table({"a": pa.array([], pa.int64())}), family / "part-000009.parquet")
        else:
            table = pq.read_table(source)
            meta = dict(table.schema.metadata or {})
            snapshot = json.loads(meta.get(b"tracekit.manifest", b"{}"))
            snapshot["lost"] = rng.choice(HOSTILE_VALUES[:12])
            snapshot["progress_monotonic_ns"] = rng.choice(["x", 10**30, None, 1])
            meta[b"tracekit.manifest"] = json.dumps(snapshot).encode()
            pq.write_table(table.replace_schema_metadata(meta), source)
            manifest = _manifest(cap)
            manifest["status"] = "recording"
            _write_manifest(cap, manifest)
        return f"{kind} {source.parent.name}->{family.name}"

    def segment_values(cap: Path, rng=rng) -> str:
        segment = rng.choice(_segments(cap))
        table = pq.read_table(segment)
        index = rng.randrange(table.num_columns)
        field = table.schema.field(index)
        column = table.column(index).combine_chunks()
        n = len(column)
        kind = rng.choice(["extreme", "null", "shuffle", "constant"])
        values = column.to_pylist()
        if kind == "extreme" and pa.types.is_integer(field.type):
            info = np.iinfo(field.type.to_pandas_dtype())
            values = [rng.choice([int(info.min), int(info.max), 0, -1 if info.min < 0 else 1]) for _ in values]
        elif kind == "extreme" and (pa.types.is_string(field.type) or pa.types.is_dictionary(field.type)):
            values = [rng.choice(["", "x\ny", "\u00ff" * 300, "CPU 99999999999/KVM"]) for _ in values]
        elif kind == "null":
            values = [None if rng.random() < 0.5 else v for v in values]
        elif kind == "shuffle":
            rng.shuffle(values)
        elif values:
            values = [values[0]] * n
        try:
            new = pa.array(values, type=field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            new = column
        if kind == "null" and not field.nullable:
            field = field.with_nullable(True)
        schema = table.schema.set(index, field)
        table = pa.Table.from_arrays([new if i == index else c for i, c in enumerate(table.columns)], schema=schema)
        pq.write_table(table, segment, write_page_checksum=True)
        return f"{kind} {segment.parent.name}.{field.name}"

    def odd_names(cap: Path, rng=rng) -> str:
        family = rng.choice(_families(cap))
        kind = rng.choice(["segment", "family", "tmp", "dir_as_segment", "fifo"])
        base = os.fsencode(family)
        if kind == "segment":
            shutil.copy(rng.choice(_segments(cap)), os.fsdecode(base + b"/part-\xff\xfe.parquet"))
        elif kind == "family":
            os.mkdir(os.fsencode(cap) + b"/w\xffalk")
            shutil.copy(family / "_schema.parquet", os.fsdecode(os.fsencode(cap) + b"/w\xffalk/_schema.parquet"))
        elif kind == "tmp":
            (family / ".part-000099.parquet.tmp").write_bytes(b"PAR1")
        elif kind == "dir_as_segment":
            (family / "part-000099.parquet").mkdir()
        else:
            os.mkfifo(family / "part-000098.parquet")
        return f"{kind} in {family.name}"

    def symlinks(cap: Path, rng=rng) -> str:
        kind = rng.choice(["manifest_secret", "manifest_valid", "schema_valid", "schema_secret",
                           "segment_valid", "family_dir"])
        valid = outside / "valid.tkcap"
        family = rng.choice([f for f in _families(cap) if (valid / f.name / "_schema.parquet").exists()])
        if kind.startswith("manifest"):
            (cap / "capture.json").unlink()
            target = outside / "secret" if kind.endswith("secret") else valid / "capture.json"
            (cap / "capture.json").symlink_to(target)
        elif kind.startswith("schema"):
            (family / "_schema.parquet").unlink()
            target = outside / "secret" if kind.endswith("secret") else valid / family.name / "_schema.parquet"
            (family / "_schema.parquet").symlink_to(target)
        elif kind == "segment_valid":
            segment = next(iter(sorted((valid / family.name).glob("part-*.parquet"))), None)
            if segment is not None:
                (family / "part-000099.parquet").symlink_to(segment)
        else:
            shutil.rmtree(family)
            family.symlink_to(valid / family.name)
        return f"{kind} {family.name}"

    def removals(cap: Path, rng=rng) -> str:
        family = rng.choice(_families(cap))
        kind = rng.choice(["schema", "family", "segments", "empty_segment", "manifest_dir"])
        if kind == "schema":
            (family / "_schema.parquet").unlink()
        elif kind == "family":
            shutil.rmtree(family)
        elif kind == "segments":
            for segment in family.glob("part-*.parquet"):
                segment.unlink()
        elif kind == "empty_segment":
            (family / "part-000099.parquet").write_bytes(b"")
        else:
            (cap / "capture.json").unlink()
            (cap / "capture.json").mkdir()
        return f"{kind} {family.name}"

    kinds = [(manifest_value, 10), (manifest_delete, 3), (manifest_text, 2), (segment_bytes, 4),
             (segment_values, 4), (foreign_segment, 3), (odd_names, 1), (symlinks, 1), (removals, 1)]
    population = [k for k, weight in kinds for _ in range(weight)]
    for i in range(count):
        mutate = rng.choice(population)
        yield f"{i}:{mutate.__name__}", mutate


def prepare_outside(directory: Path) -> Path:
    """A directory outside any mutated copy: a ``secret`` file and an intact ``valid.tkcap``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "secret").write_text("root:secret-hash:19000:0:99999:7:::\n")
    if not (directory / "valid.tkcap").exists():
        shutil.copytree(SAMPLE, directory / "valid.tkcap")
    return directory


def run_command(runner: CliRunner, command: list[str], cap: Path, work: Path) -> tuple[int, list[str]]:
    """Run ``command`` on ``cap`` in-process; its exit code and the problems found (none when it behaved)."""
    args = [command[0], str(cap), *command[1:]]
    if command[0] == "report":
        args += ["-o", str(work / "report.html")]
    elif command[0] == "compare":
        args += ["--", str(SAMPLE)]
    elif "--perfetto" in command:
        args.append(str(work / "trace.json"))
    elif command[0] == "export":
        args += ["-o", str(work / "export.out")]
    result = runner.invoke(app, args)
    problems = []
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        problems.append(f"traceback: {type(result.exception).__name__}: {str(result.exception)[:200]}")
    elif result.exit_code not in (0, 1):
        problems.append(f"exit code {result.exit_code}")
    if "Traceback" in result.output:
        problems.append("traceback printed")
    if result.exit_code == 1:
        err = result.stderr.strip()
        if err.count("\n") or not err.startswith("tracekit: error: "):
            problems.append(f"error not one line: {err[:300]!r}")
    return result.exit_code, problems
