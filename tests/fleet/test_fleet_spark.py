"""The fleet summary on Apache Spark (local mode, one session) equals DuckDB's golden file.

Slow tier: starting a JVM and Spark takes tens of seconds. Skips with the reason where pyspark or a Java
runtime is missing (``pip install 'tracekit[spark]'``, ``scripts/install.sh --spark``); fails instead
when ``TRACEKIT_REQUIRE_SPARK=1`` (CI installs both).
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.fleet.golden import SAMPLES, comparable, load

pytestmark = pytest.mark.slow


def _spark_missing() -> str | None:
    try:
        import pyspark  # noqa: F401
    except ModuleNotFoundError:
        return "pyspark is not installed (pip install 'tracekit[spark]')"
    if not os.environ.get("JAVA_HOME") and shutil.which("java") is None:
        return "no Java runtime (scripts/install.sh --spark)"
    return None


@pytest.mark.parametrize("where", ["path", "file-url"])
def test_spark_local_mode_gives_the_duckdb_golden(where):
    """The samples by their local path, and by a file:// URL (manifests and segment lists read through
    pyarrow.fs, the segments by Spark at their URLs, as hdfs:// or s3a:// ones would be)."""
    missing = _spark_missing()
    if missing:
        if os.environ.get("TRACEKIT_REQUIRE_SPARK") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    from tracekit.fleet.summary import fleet_summary

    source = str(SAMPLES) if where == "path" else f"file://{SAMPLES}"
    summary = fleet_summary([source], by="kernel", engine="spark", master="local[2]")
    assert summary.engine == "spark"
    assert all(row["path"].startswith(source) for row in summary.captures)
    assert comparable(summary) == load()
