"""The two engines the fleet summary runs on: DuckDB in-process, Apache Spark (local or a cluster).

Both get the same input tables: ``captures`` and ``fleet_groups`` from pyarrow tables, and one table
per family of :data:`tracekit.fleet.query.INPUT_COLUMNS` (``capture`` then the listed columns, NULL
where no file of the family has a column) over the captures' Parquet segments; then
:meth:`Engine.query` runs a SQL text and returns a pyarrow Table. DuckDB reads the segments through
:func:`tracekit.dataset.connect`'s family views; Spark reads the same files (``spark.read.parquet``
with the family's declared types, so a column a file lacks reads as NULL and no footer is read up
front), gives each row its capture through the file it came from (``_metadata.file_path``), and keeps
a family of at most :data:`CACHE_ROWS` rows in memory once read. A family without
segments is an empty table of its declared columns. Spark is optional (``tracekit[spark]``, a JRE):
without it :func:`spark_engine` raises MissingCapability naming the fix.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import pyarrow as pa

from tracekit.capture.columns import SCHEMAS
from tracekit.dataset import Dataset, connect, plain_schema, segments_table
from tracekit.errors import MissingCapability

__all__ = ["Engine", "ENGINES", "duckdb_engine", "spark_engine", "family_columns"]

#: Spark keeps a family of at most this many rows in memory once read (the query reads a family several times).
CACHE_ROWS = 4_000_000

#: Engine names accepted by ``tracekit fleet summary --engine``.
ENGINES = ("duckdb", "spark")


class Engine(Protocol):
    """An engine holding the input tables; ``query`` runs SQL over them."""

    name: str

    def register(self, name: str, table: pa.Table) -> None: ...

    def query(self, sql: str) -> pa.Table: ...

    def close(self) -> None: ...


def family_columns(family: str, present: set[str], wanted: tuple[str, ...]) -> list[tuple[str, pa.DataType | None]]:
    """``(column, None)`` for each wanted column the family's files have, ``(column, type)`` (its declared
    plain type, registered as NULL) for the others."""
    declared = plain_schema(SCHEMAS[family])
    return [(c, None if c in present else declared.field(c).type) for c in wanted]


_SQL_TYPES = {pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
              pa.uint8(): "SMALLINT", pa.uint16(): "INTEGER", pa.uint32(): "BIGINT", pa.uint64(): "DECIMAL(20,0)",
              pa.string(): "STRING", pa.bool_(): "BOOLEAN"}


def _null_of(type_: pa.DataType, engine: str) -> str:
    sql_type = _SQL_TYPES[type_]
    if engine == "duckdb" and sql_type == "STRING":
        sql_type = "VARCHAR"
    return f"CAST(NULL AS {sql_type})"


class DuckDbEngine:
    """DuckDB, in-process, over :func:`tracekit.dataset.connect`'s views."""

    name = "duckdb"

    def __init__(self, dataset: Dataset, wanted: dict[str, tuple[str, ...]], *, threads: int | None = None,
                 memory_limit: str | None = None):
        self.con = connect(dataset, threads=threads)
        if memory_limit:
            self.con.execute(f"SET memory_limit = '{memory_limit}'")
        self.con.execute("CREATE SCHEMA fleet")
        for family, columns in wanted.items():
            present = {row[0] for row in self.con.execute(f'DESCRIBE main."{family}"').fetchall()}
            select = ", ".join(f'"{c}"' if t is None else f'{_null_of(t, self.name)} AS "{c}"'
                               for c, t in family_columns(family, present, columns))
            self.con.execute(f'CREATE VIEW fleet."{family}" AS SELECT capture, {select} FROM main."{family}"')
        self.con.execute("SET search_path = 'fleet,main'")  # the input tables shadow the dataset's own

    def register(self, name: str, table: pa.Table) -> None:
        self.con.register(f"_arrow_{name}", table)
        self.con.execute(f'CREATE OR REPLACE TABLE fleet."{name}" AS SELECT * FROM "_arrow_{name}"')
        self.con.unregister(f"_arrow_{name}")

    def query(self, sql: str) -> pa.Table:
        return self.con.sql(sql).to_arrow_table()

    def close(self) -> None:
        self.con.close()



def duckdb_engine(dataset: Dataset, wanted: dict[str, tuple[str, ...]], **options: Any) -> DuckDbEngine:
    """A DuckDB engine over ``dataset`` with the ``wanted`` family tables."""
    return DuckDbEngine(dataset, wanted, **options)


class SparkEngine:
    """Apache Spark through pyspark: local mode by default, or the cluster at ``master``."""

    name = "spark"

    def __init__(self, dataset: Dataset, wanted: dict[str, tuple[str, ...]], *, master: str | None = None):
        from pyspark.sql import SparkSession, functions as F

        builder = (SparkSession.builder.appName("tracekit fleet summary")
                   .master(master or os.environ.get("TRACEKIT_SPARK_MASTER", "local[2]"))
                   .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").config("spark.sql.session.timeZone", "UTC")
                   .config("spark.sql.shuffle.partitions", os.environ.get("TRACEKIT_SPARK_PARTITIONS", "4")))
        self.spark = builder.getOrCreate()
        self.spark.sparkContext.setLogLevel("ERROR")
        segments = segments_table(dataset).to_pylist()
        by_family: dict[str, list[dict]] = {}
        for row in segments:
            if row["rows"]:
                by_family.setdefault(row["family"], []).append(row)
        for family, columns in wanted.items():
            rows = by_family.get(family, [])
            if rows:
                files = [_spark_path(row["file"]) for row in rows]
                frame = self.spark.read.schema(_spark_read_schema(family, columns)).parquet(*files)
                frame = frame.withColumn("_file", F.col("_metadata.file_path"))
                owners = self.spark.createDataFrame([(_reported_path(f), row["capture"]) for f, row in zip(files, rows)],
                                                    "_file string, capture string")
                frame = frame.join(F.broadcast(owners), "_file")
                present = set(columns)  # the declared schema: a column a file lacks reads as null
            else:
                frame = self.spark.createDataFrame([], "capture string")
                present = set()
            picked = [F.col(c) if t is None else F.lit(None).cast(_SQL_TYPES[t]).alias(c)
                      for c, t in family_columns(family, present, columns)]
            frame = frame.select(F.col("capture"), *picked)
            if sum(row["rows"] for row in rows) <= CACHE_ROWS:
                frame = frame.cache()  # read once, not once per figure that reads the family
            frame.createOrReplaceTempView(family)

    def register(self, name: str, table: pa.Table) -> None:
        rows = [tuple(row.values()) for row in table.to_pylist()]
        self.spark.createDataFrame(rows, schema=_spark_schema(table.schema)).createOrReplaceTempView(name)

    def query(self, sql: str) -> pa.Table:
        return self.spark.sql(sql).toArrow()

    def close(self) -> None:
        self.spark.catalog.clearCache()
        self.spark.stop()


def _spark_path(path: str) -> str:
    """A segment as Spark is given it: a local path made absolute, a filesystem URL as it is."""
    return path if "://" in path else os.path.abspath(path)


def _reported_path(path: str) -> str:
    """How Spark's ``_metadata.file_path`` names a file it was given as ``path`` (``file:`` + a local path)."""
    return path if "://" in path else "file:" + path


#: How Spark reads each Parquet type of the capture families (unsigned types widen; uint64 is DECIMAL(20,0)).
_SPARK_READ_TYPES = {pa.int8(): "tinyint", pa.int16(): "smallint", pa.int32(): "int", pa.int64(): "bigint",
                     pa.uint8(): "int", pa.uint16(): "int", pa.uint32(): "bigint", pa.uint64(): "decimal(20,0)",
                     pa.string(): "string", pa.bool_(): "boolean"}


def _spark_read_schema(family: str, columns: tuple[str, ...]) -> str:
    """The DDL schema Spark reads ``columns`` of ``family`` with: given, so no file footer is read up front."""
    declared = plain_schema(SCHEMAS[family])
    return ", ".join(f"`{c}` {_SPARK_READ_TYPES[declared.field(c).type]}" for c in columns)


def _spark_schema(schema: pa.Schema) -> str:
    """A DDL schema string of the simple (string and integer) columns registered from Arrow."""
    names = {pa.string(): "string", pa.int64(): "bigint", pa.int32(): "int", pa.float64(): "double"}
    return ", ".join(f"`{f.name}` {names[f.type]}" for f in schema)


def spark_engine(dataset: Dataset, wanted: dict[str, tuple[str, ...]], *, master: str | None = None) -> SparkEngine:
    """A Spark engine over ``dataset``; MissingCapability when pyspark or a Java runtime is missing."""
    try:
        import pyspark  # noqa: F401
    except ModuleNotFoundError as error:
        raise MissingCapability("--engine spark needs pyspark: pip install 'tracekit[spark]' "
                                "(and a Java runtime: scripts/install.sh --spark)") from error
    import shutil

    if not os.environ.get("JAVA_HOME") and shutil.which("java") is None:
        raise MissingCapability("--engine spark needs a Java runtime (scripts/install.sh --spark installs "
                                "Debian's default-jre-headless)")
    return SparkEngine(dataset, wanted, master=master)
