"""Fixtures of the analysis tests: hypothesis profiles (``fast`` by default, 25 examples; ``extensive``
with ``HYPOTHESIS_PROFILE=extensive``), the samples directory, a tiny-capture builder, and every
per-walk array spilled to a file (:mod:`tracekit.analysis.spill`, small blocks: the path a large capture
takes, on every test's capture; ``in_memory`` marks a test that keeps the default sizes)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, settings

from tracekit.analysis import spill
from tracekit.capture import COMMON_FIELDS, CaptureWriter

settings.register_profile("fast", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("extensive", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


@pytest.fixture(autouse=True)
def spill_everything(request, monkeypatch):
    """Every per-walk array in a file, sorted and copied in small blocks, unless the test is marked
    ``in_memory``."""
    if request.node.get_closest_marker("in_memory") is None:
        monkeypatch.setattr(spill, "SPILL_BYTES", 0)
        monkeypatch.setattr(spill, "RESIDENT_BYTES", 0)
        monkeypatch.setattr(spill, "SORT_ROWS", 1000)
        monkeypatch.setattr(spill, "COPY_ROWS", 3000)


@pytest.fixture
def make_capture(tmp_path):
    """``make_capture({family: {column: values}}, manifest)`` -> path of a capture holding those rows.

    Column types are inferred by pyarrow unless a ``pa.Schema`` is passed as ``{family: (schema, rows)}``;
    the common columns default to ts_ns = 0.., cpu 0, pid 1, tid 1.
    """
    counter = iter(range(1000))

    def build(families: dict, manifest: dict | None = None) -> Path:
        path = tmp_path / f"c{next(counter)}.tkcap"
        with CaptureWriter(path, manifest=manifest or {}) as writer:
            for family, spec in families.items():
                if isinstance(spec, tuple):
                    schema, rows = spec
                    table = pa.table(rows, schema=schema)
                else:
                    n = len(next(iter(spec.values())))
                    defaults = {"ts_ns": list(range(n)), "cpu": [0] * n, "pid": [1] * n, "tid": [1] * n}
                    columns = {f.name: pa.array(spec.get(f.name, defaults[f.name]), f.type) for f in COMMON_FIELDS}
                    columns.update({k: v for k, v in spec.items() if k not in columns})
                    table = pa.table(columns)
                writer.declare(family, table.schema)
                writer.append(family, table)
        return path

    return build
