"""The manifest's declared schema, and its bounded parsing.

:data:`MANIFEST` declares the type and range of every manifest field tracekit reads, once;
:func:`parse_manifest` checks the bytes of ``capture.json`` (size and depth bounded) against it and
raises one-line :class:`~tracekit.errors.CaptureFormatError` naming the first offending field. Fields
not declared pass unchecked (a newer writer's keys); a declared field may be absent but not null
unless :func:`nullable`. A new field is one entry below plus its row in docs/capture-format.md.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import uuid
from typing import Any

from tracekit.errors import CaptureFormatError

__all__ = [
    "MANIFEST", "MAX_MANIFEST_BYTES", "MAX_MANIFEST_DEPTH", "Spec", "Int", "Num", "Str", "Name", "Bool", "List",
    "Obj", "Map", "AnyOf", "Anything", "nullable", "manifest_violations", "check_manifest", "parse_manifest",
    "STARTING_KEYS", "new_capture_id", "derived_capture_id",
]

#: Largest ``capture.json`` read (a recorded manifest is tens of kilobytes).
MAX_MANIFEST_BYTES = 16 << 20
#: Deepest nesting of arrays and objects accepted (a recorded manifest nests 6 deep).
MAX_MANIFEST_DEPTH = 32

_INT64 = (-(1 << 63), (1 << 63) - 1)


def _shown(value: Any) -> str:
    """A short, printable, one-line rendering of ``value`` for an error message."""
    if isinstance(value, (dict, list)):
        return f"{type(value).__name__} of {len(value)}"
    text = ascii(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Spec:
    """One declared type. ``violations`` appends ``"path: expected ..., got ..."`` lines to ``out``."""

    allow_null = False
    expected = "a value"

    def accepts(self, value: Any) -> bool:
        return True

    def violations(self, value: Any, path: str, out: list[str]) -> None:
        if value is None and self.allow_null:
            return
        if value is None or not self.accepts(value):
            out.append(f"{path}: expected {self.expected}, got {_shown(value)}")
        else:
            self.inner_violations(value, path, out)

    def inner_violations(self, value: Any, path: str, out: list[str]) -> None:
        """Violations inside an accepted container value."""


class Int(Spec):
    """An integer (not a boolean) within ``[low, high]`` (int64 by default)."""

    def __init__(self, low: int = _INT64[0], high: int = _INT64[1]):
        self.low, self.high = low, high
        self.expected = f"an integer in [{low}, {high}]"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high


class Num(Spec):
    """A finite number within ``[low, high]``."""

    def __init__(self, low: float = -1e18, high: float = 1e18):
        self.low, self.high = low, high
        self.expected = f"a finite number in [{low:g}, {high:g}]"

    def accepts(self, value: Any) -> bool:
        return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and self.low <= value <= self.high)


class Str(Spec):
    """A string of valid Unicode text (no lone surrogates), optionally one of ``choices``."""

    expected = "a string"

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True


class Name(Str):
    """A short identifier: 1-128 letters, digits and ``._:-``, starting with a letter or digit."""

    expected = "an identifier of 1-128 letters, digits, '.', '_', ':' or '-'"
    _PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and self._PATTERN.fullmatch(value) is not None


class Bool(Spec):
    expected = "true or false"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


class Anything(Spec):
    """Any value, null included, left unchecked."""

    allow_null = True


class List(Spec):
    """An array whose every item satisfies ``item``."""

    def __init__(self, item: Spec):
        self.item = item
        self.expected = "an array"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, list)

    def inner_violations(self, value: list, path: str, out: list[str]) -> None:
        for i, item in enumerate(value):
            self.item.violations(item, f"{path}[{i}]", out)


class Obj(Spec):
    """An object whose declared keys satisfy their spec; ``required`` keys must be present; other keys
    are allowed and left unchecked."""

    expected = "an object"

    def __init__(self, fields: dict[str, Spec], required: tuple[str, ...] = ()):
        self.fields, self.required = fields, required

    def accepts(self, value: Any) -> bool:
        return isinstance(value, dict)

    def inner_violations(self, value: dict, path: str, out: list[str]) -> None:
        prefix = f"{path}." if path else ""
        for key in self.required:
            if key not in value:
                out.append(f"{prefix}{key}: missing")
        for key, spec in self.fields.items():
            if key in value:
                spec.violations(value[key], prefix + key, out)


class Map(Spec):
    """An object with any keys, every value satisfying ``value``."""

    expected = "an object"

    def __init__(self, value: Spec):
        self.value = value

    def accepts(self, value: Any) -> bool:
        return isinstance(value, dict)

    def inner_violations(self, value: dict, path: str, out: list[str]) -> None:
        for key, item in value.items():
            self.value.violations(item, f"{path}[{ascii(key)}]", out)


class AnyOf(Spec):
    """A value satisfying one of ``specs`` (the first whose shape fits is checked in depth)."""

    def __init__(self, *specs: Spec):
        self.specs = specs
        self.expected = " or ".join(s.expected for s in specs)
        self.allow_null = any(s.allow_null for s in specs)

    def accepts(self, value: Any) -> bool:
        return any(s.accepts(value) for s in self.specs)

    def inner_violations(self, value: Any, path: str, out: list[str]) -> None:
        next(s for s in self.specs if s.accepts(value)).inner_violations(value, path, out)


def nullable(spec: Spec) -> Spec:
    """``spec``, or null."""
    either = copy.copy(spec)
    either.allow_null = True
    return either


# -- the declaration ---------------------------------------------------------------------------------

PID = Int(0, (1 << 31) - 1)  # also thread ids
INDEX = Int(0, (1 << 31) - 1)  # vCPU indexes, iterations, CPUs
COUNT = Int(0, _INT64[1])
NS = Int(*_INT64)  # CLOCK_MONOTONIC / CLOCK_REALTIME nanoseconds
U64 = Int(0, (1 << 64) - 1)  # guest and host addresses, sizes
TEXT = Str()
TEXTS = List(TEXT)

_THREAD = Obj({"pid": nullable(PID), "tid": PID, "comm": nullable(TEXT), "vcpu": nullable(INDEX), "vcpu_from": nullable(TEXT)})
_VCPU_FDS = Obj({"fds": List(Obj({"pid": PID, "fd": Int(0, (1 << 31) - 1), "vcpu": INDEX}))})
_VM = Obj({"pid": PID, "comm": nullable(TEXT), "name": nullable(TEXT), "vcpus": nullable(COUNT),
           "memory": nullable(COUNT)})
_TARGET = Obj({"pids": List(PID), "pid": PID, "comm": nullable(TEXT), "name": nullable(TEXT),
               "guest": nullable(TEXT), "threads": List(_THREAD), "vms": List(_VM), "vcpu_fds": _VCPU_FDS})
_PHASE = Obj({"name": TEXT, "iteration": nullable(INDEX), "start_ns": nullable(NS), "end_ns": nullable(NS)})
_MAPPING = Obj({"gva": U64, "gpa": U64, "size": U64, "page_size": U64, "role": TEXT})
_WORKLOAD = Obj({
    "arch": TEXT,
    "phases": List(_PHASE),
    "vcpus": List(Obj({"index": INDEX, "tid": PID})),
    "guest_paging": Obj({"levels": Int(1, 6), "root_gpa": U64, "table_gpas": List(U64),
                         "mappings": List(_MAPPING)}),
    "scenario": Obj({"arch": TEXT, "backing": TEXT, "eager_split_chunk": nullable(U64)}),
})
_MODEL_SCENARIO = Obj({"granule": Int(1, 1 << 30), "ipa_bits": Int(1, 64), "chunk_size": U64,
                       "memslots": List(Obj({"ipa": U64, "size": U64, "mapping_size": U64}))})
LOST = List(Obj({"probe": TEXT, "cpu": INDEX, "count": COUNT}))

#: Every manifest field tracekit reads (docs/capture-format.md describes them).
MANIFEST = Obj({
    "format": TEXT,
    "format_version": Int(1, 1 << 31),
    "capture_id": Name(),
    "tracekit_version": TEXT,
    "host": TEXT,
    "kernel_release": TEXT,
    "arch": TEXT,
    "page_size": Int(1, 1 << 40),
    "kvm_params": Map(AnyOf(TEXT, Map(nullable(TEXT)))),  # {module: {param: value}}; labs {"module.param": value}
    "clock": Obj({"ts_ns": TEXT, "anchor": Obj({"monotonic_ns": NS, "realtime_ns": NS})}),
    "start": TEXT,
    "stop": nullable(TEXT),
    "stop_monotonic_ns": NS,
    "duration_s": Num(0),
    "status": TEXT,
    "status_reason": nullable(TEXT),
    "writer_pid": nullable(PID),
    "families": Map(Obj({"rows": COUNT, "segments": COUNT})),
    "lost": LOST,
    "target": _TARGET,
    "probes": Obj({"requested": TEXTS, "attached": TEXTS, "families": TEXTS, "silent": TEXTS,
                   "failed": List(Obj({"probe": TEXT, "reason": nullable(TEXT)}))}),
    "backend": nullable(TEXT),
    "command_line": AnyOf(TEXTS, TEXT),
    "source": Obj({"kind": TEXT, "description": nullable(TEXT)}),
    "workload": nullable(_WORKLOAD),
    "command_output": Obj({"stdout": TEXT, "bytes": COUNT, "dropped_bytes": COUNT}),
    "window": Obj({"clock": TEXT, "start_ns": NS, "stop_ns": NS, "seconds": Num(0)}),
    "partial": Map(NS),
    "model_scenario": _MODEL_SCENARIO,
    "mmu_lock_addrs": List(U64),
    "lab": Obj({"mmu_lock_addrs": List(U64)}),
}, required=("format", "format_version"))

#: What a segment's embedded manifest snapshot must satisfy (the reader takes these from it).
SNAPSHOT = Obj({"lost": LOST, "progress_monotonic_ns": NS})


def manifest_violations(manifest: Any, spec: Spec = MANIFEST) -> list[str]:
    """Every violation of ``spec`` in ``manifest``, one line each (empty when it conforms)."""
    out: list[str] = []
    spec.violations(manifest, "", out)
    return [f"(top level){line}" if line.startswith(":") else line for line in out]


def check_manifest(manifest: Any, where: str, spec: Spec = MANIFEST) -> None:
    """Raise CaptureFormatError naming the first field of ``manifest`` that violates ``spec``."""
    found = manifest_violations(manifest, spec)
    if found:
        more = f" (and {len(found) - 1} more violation(s); -v lists them)" if len(found) > 1 else ""
        raise CaptureFormatError(f"{where}: invalid manifest field {found[0]}{more}", detail="\n".join(found))


def _depth(value: Any) -> int:
    """Nesting depth of arrays and objects in ``value`` (counted up to one past the bound), level by level."""
    depth, level = 0, [value]
    while depth <= MAX_MANIFEST_DEPTH:
        containers = [node for node in level if isinstance(node, (dict, list))]
        if not containers:
            break
        depth += 1
        level = [child for node in containers for child in (node.values() if isinstance(node, dict) else node)]
    return depth


def parse_manifest(data: bytes, where: str) -> Any:
    """The JSON value in ``data`` (UTF-8 text), refused beyond the size and depth bounds."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise CaptureFormatError(f"{where}: manifest larger than {MAX_MANIFEST_BYTES >> 20} MiB, refused")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CaptureFormatError(f"{where}: manifest is not UTF-8 text (byte {error.start})") from None
    if not text.strip():
        raise CaptureFormatError(f"{where}: empty manifest (capture truncated)")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as error:
        raise CaptureFormatError(f"{where}: corrupt manifest ({error.msg} at line {error.lineno})") from None
    except RecursionError:
        raise CaptureFormatError(f"{where}: manifest nested deeper than {MAX_MANIFEST_DEPTH} levels, refused") from None
    if _depth(manifest) > MAX_MANIFEST_DEPTH:
        raise CaptureFormatError(f"{where}: manifest nested deeper than {MAX_MANIFEST_DEPTH} levels, refused")
    return manifest


#: Manifest keys fixed when a recording begins: what identifies a capture written before ``capture_id``.
STARTING_KEYS = ("host", "kernel_release", "arch", "clock", "start", "writer_pid", "command_line", "source")


def new_capture_id() -> str:
    """A fresh capture id: 32 lowercase hex digits (a random UUID)."""
    return uuid.uuid4().hex


def derived_capture_id(manifest: dict) -> str:
    """The id of a capture written before ids: 32 hex digits of the SHA-256 of its starting keys
    (:data:`STARTING_KEYS`, canonical JSON), or of the whole manifest when it has none of them."""
    chosen = {key: manifest[key] for key in STARTING_KEYS if key in manifest}
    text = json.dumps(chosen or manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]
