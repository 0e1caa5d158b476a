"""Property: whatever event tables go through CaptureWriter come back identical, metadata included."""

from __future__ import annotations

import json

import hypothesis.strategies as st
import pyarrow as pa
import pyarrow.dataset as ds
from hypothesis import HealthCheck, given, settings

from tests.strategies import FAMILY_NAMES, event_tables, family_schemas
from tracekit.capture import CaptureWriter, open_capture


@st.composite
def captures(draw):
    names = draw(st.lists(FAMILY_NAMES, min_size=1, max_size=3, unique=True))
    families = {}
    for name in names:
        schema = draw(family_schemas())
        chunks = draw(st.lists(event_tables(schema), max_size=3))
        families[name] = (schema, chunks)
    return families


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(families=captures(), flush_between=st.booleans(),
       lost=st.dictionaries(st.tuples(st.sampled_from(["walk", "ioctl"]), st.integers(0, 3)), st.integers(0, 10**9), max_size=4))
def test_roundtrip(tmp_path_factory, families, flush_between, lost):
    """Rows, column types, manifest keys and lost counters survive writing and reading."""
    path = tmp_path_factory.mktemp("rt") / "c.tkcap"
    target = {"pids": [42], "comm": "tk", "threads": [{"tid": 43, "comm": "tk-vcpu-0", "vcpu": 0}]}
    with CaptureWriter(path, {"target": target, "source": {"kind": "test", "description": "hypothesis"}}) as w:
        for name, (schema, chunks) in families.items():
            w.declare(name, schema)
            for chunk in chunks:
                w.append(name, chunk)
                if flush_between:
                    w.flush()
        for (probe, cpu), count in lost.items():
            w.add_lost(probe, cpu, count)
    cap = open_capture(path)
    assert cap.complete
    assert cap.families() == sorted(families)
    assert cap.manifest["target"] == target
    assert cap.lost_total() == sum(lost.values())
    for name, (schema, chunks) in families.items():
        expected = pa.concat_tables(chunks) if chunks else schema.empty_table()
        got = cap.table(name)
        assert got.schema.equals(schema), (got.schema, schema)
        assert got.to_pylist() == expected.to_pylist()
        assert cap.rows(name) == expected.num_rows
        if expected.num_rows:
            # readable without tracekit: plain pyarrow.dataset sees the same rows
            plain = ds.dataset(path / name, format="parquet").to_table()
            assert plain.num_rows == expected.num_rows
    assert json.loads((path / "capture.json").read_text())["status"] == "complete"
