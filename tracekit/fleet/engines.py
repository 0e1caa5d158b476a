"""The two engines the fleet summary runs on: DuckDB in-process, Apache Spark (local or a cluster).

Both get the same input tables (:meth:`Engine.register`, one table per family over the captures'
segments) and run the same SQL (:meth:`Engine.summarise`: the per-capture tables, then the query over
them; DuckDB builds the former a batch of captures at a time); Spark is optional and :func:`spark_engine`
says how to install it. How each reads the segments: docs/fleet.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Protocol

import pyarrow as pa

from tracekit.capture.columns import SCHEMAS
from tracekit.dataset import Dataset, plain_schema
from tracekit.capture.format import shown_path
from tracekit.capture.remote import is_url
from tracekit.errors import MissingCapability, UsageError
from tracekit.copyout import connection
from tracekit.sql import query_error
from tracekit.fleet.query import FILE_COLUMNS

__all__ = ["Engine", "ENGINES", "duckdb_engine", "spark_engine", "family_columns"]

#: Spark keeps a family of at most this many rows in memory once read (the query reads a family several times).
CACHE_ROWS = 4_000_000

#: DuckDB's memory limit for the summary (beyond it, sorts and aggregates spill to a temporary directory).
MEMORY_LIMIT = "1GB"

#: DuckDB reads the segments of this many captures per query (it keeps state per file a query reads,
#: outside its memory limit): the per-capture tables are appended a batch at a time.
BATCH_CAPTURES = 100

#: Engine names accepted by ``tracekit fleet summary --engine``.
ENGINES = ("duckdb", "spark")


class Engine(Protocol):
    """An engine holding the input tables; ``query`` runs SQL over them."""

    name: str

    def segment_name(self, path: str) -> str | int: ...

    def register(self, name: str, table: pa.Table) -> None: ...

    def summarise(self, tables: dict[str, str], sql: str) -> pa.Table:
        """The result of ``sql`` once each of ``tables`` (name -> query) holds its query's rows."""

    def close(self) -> None: ...


def family_columns(family: str, present: set[str], wanted: tuple[str, ...]) -> list[tuple[str, pa.DataType | None]]:
    """``(column, None)`` for each wanted column the family's files have (``present``: names in the files),
    ``(column, type)`` (its declared plain type, registered as NULL) for the others."""
    declared = plain_schema(SCHEMAS[family])
    return [(c, None if file_column(family, c) in present else declared.field(file_column(family, c)).type)
            for c in wanted]


def file_column(family: str, column: str) -> str:
    """The name of input column ``column`` of ``family`` in the Parquet files."""
    return FILE_COLUMNS.get((family, column), column)


_SQL_TYPES = {pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
              pa.uint8(): "SMALLINT", pa.uint16(): "INTEGER", pa.uint32(): "BIGINT", pa.uint64(): "DECIMAL(20,0)",
              pa.string(): "STRING", pa.bool_(): "BOOLEAN"}


def _null_of(type_: pa.DataType, engine: str) -> str:
    sql_type = _SQL_TYPES[type_]
    if engine == "duckdb" and sql_type == "STRING":
        sql_type = "VARCHAR"
    return f"CAST(NULL AS {sql_type})"


class DuckDbEngine:
    """DuckDB, in-process: a view per family over the segments of a batch of ``batch_captures`` captures
    (``read_parquet``, a row's ``segment`` the number of its file: an integer joins faster than a file
    name, read as no column of the file), memory limited to ``memory_limit`` (:data:`MEMORY_LIMIT`; what
    does not fit, the per-capture tables included, spills to a temporary directory)."""

    name = "duckdb"

    def __init__(self, dataset: Dataset, wanted: dict[str, tuple[str, ...]], *, threads: int | None = None,
                 memory_limit: str | None = MEMORY_LIMIT, batch_captures: int = BATCH_CAPTURES):
        self.con = connection()
        self.spill = tempfile.mkdtemp(prefix="tracekit-fleet-")
        self.numbers: dict[str, int] = {}  # each segment file's number, its rows' ``segment``
        self.captures, self.wanted, self.batch = list(dataset.captures), wanted, max(1, int(batch_captures))
        try:
            self._set_up(dataset, wanted, threads, memory_limit)
        except BaseException:
            self.close()  # a setup that fails part-way leaves no connection and no spill directory
            raise

    def _set_up(self, dataset: Dataset, wanted: dict[str, tuple[str, ...]], threads: int | None,
                memory_limit: str | None) -> None:
        import duckdb  # late: ~0.2 s to import, needed by fleet summary and sql only

        self.con.execute(f"SET temp_directory = '{_sql_text(self.spill)}'")
        self.con.execute("SET preserve_insertion_order = false")
        self.con.execute("SET enable_external_file_cache = false")  # each file is read once: nothing to keep
        if threads is not None:
            self.con.execute(f"SET threads = {int(threads)}")
        if memory_limit:
            self.con.execute(f"SET memory_limit = '{_sql_text(memory_limit)}'")
        for family in wanted:
            for paths in _files_by_columns(self.captures, family).values():
                self.numbers.update(zip(paths, range(len(self.numbers), len(self.numbers) + len(paths))))
        try:
            self._views(self.captures)
        except duckdb.Error as error:  # a view reads its first file's schema: one it could not read
            raise query_error(error) from None

    def _views(self, captures: list) -> None:
        """The family views over the segments of ``captures`` (consecutive in the dataset: each list of
        files below is a run of consecutive numbers)."""
        for family, columns in self.wanted.items():
            parts = []
            for present, paths in _files_by_columns(captures, family).items():
                select = ", ".join(_duckdb_column(family, c, t) for c, t in family_columns(family, set(present), columns))
                first = self.numbers[paths[0]]
                files = f"tracekit_files_{family}_{len(parts)}"  # a variable: not parsed again where read
                self.con.execute(f"SET VARIABLE {files} = ?", [paths])
                parts.append(f"SELECT CAST(file_index AS BIGINT) + {first} AS segment, {select} "
                             f"FROM read_parquet(getvariable('{files}'))")
            if not parts:
                select = ", ".join(_duckdb_column(family, c, t) for c, t in family_columns(family, set(), columns))
                parts.append(f"SELECT CAST(NULL AS BIGINT) AS segment, {select} LIMIT 0")
            self.con.execute(f'CREATE OR REPLACE VIEW "{family}" AS ' + " UNION ALL ".join(parts))

    def segment_name(self, path: str) -> int:
        """How a row's ``segment`` names the file ``path``: its number (DuckDB's ``file_index`` in the list
        ``read_parquet`` was given, plus the list's first number); a file no view reads gets a new one."""
        return self.numbers.setdefault(path, len(self.numbers))

    def register(self, name: str, table: pa.Table) -> None:
        self.con.register(f"_arrow_{name}", table)
        self.con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM "_arrow_{name}"')
        self.con.unregister(f"_arrow_{name}")

    def summarise(self, tables: dict[str, str], sql: str) -> pa.Table:
        """``tables`` built a batch of captures at a time (a query each, appended), then ``sql`` over them;
        a file a query could not read is one line (CaptureFormatError)."""
        import duckdb  # late: ~0.2 s to import, needed by fleet summary and sql only

        try:
            for start in range(0, max(1, len(self.captures)), self.batch):
                self._views(self.captures[start:start + self.batch])
                for name, query in tables.items():
                    into = f'CREATE TABLE "{name}" AS' if start == 0 else f'INSERT INTO "{name}"'
                    self.con.execute(f"{into} SELECT * FROM ({query})")
            return self.con.sql(sql).to_arrow_table()
        except duckdb.Error as error:
            raise query_error(error) from None

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self.spill, ignore_errors=True)


def _sql_text(text: str) -> str:
    """``text`` for inside a single-quoted SQL string."""
    return text.replace("'", "''")


def _duckdb_column(family: str, column: str, missing: pa.DataType | None) -> str:
    if missing is not None:
        return f'{_null_of(missing, "duckdb")} AS "{column}"'
    return f'"{file_column(family, column)}" AS "{column}"'


def _files_by_columns(captures: list, family: str) -> dict[tuple[str, ...], list[str]]:
    """The segment files of ``family``, grouped by the columns their capture's schema has (read when the
    captures were opened): each group is read without unifying schemas file by file."""
    out: dict[tuple[str, ...], list[str]] = {}
    for cap in captures:
        files = [str(path) for path in cap.segments(family)]
        if files:
            out.setdefault(tuple(cap.schema(family).names), []).extend(files)
    return out


def duckdb_engine(dataset: Dataset, wanted: dict[str, tuple[str, ...]], **options: Any) -> DuckDbEngine:
    """A DuckDB engine over ``dataset`` with the ``wanted`` family tables; UsageError for a capture at a URL
    DuckDB does not read (it reads local paths and ``file://``, Spark the Hadoop file systems)."""
    remote = next((str(c.path) for c in dataset.captures if is_url(c.path) and not str(c.path).startswith("file:")), None)
    if remote is not None:
        raise UsageError(f"{shown_path(remote)}: DuckDB reads local captures and file:// URLs; "
                         f"use --engine spark for {remote.split(':', 1)[0]}:// captures")
    return DuckDbEngine(dataset, wanted, **options)


class SparkEngine:
    """Apache Spark through pyspark: local mode by default, or the cluster at ``master``."""

    name = "spark"

    def __init__(self, dataset: Dataset, wanted: dict[str, tuple[str, ...]], *, master: str | None = None):
        from pyspark.sql import SparkSession, functions as F  # late: optional (tracekit[spark])

        builder = (SparkSession.builder.appName("tracekit fleet summary")
                   .master(master or os.environ.get("TRACEKIT_SPARK_MASTER", "local[2]"))
                   .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").config("spark.sql.session.timeZone", "UTC")
                   .config("spark.sql.shuffle.partitions", os.environ.get("TRACEKIT_SPARK_PARTITIONS", "4")))
        self.spark = builder.getOrCreate()
        self.spark.sparkContext.setLogLevel("ERROR")
        for family, columns in wanted.items():
            paths = [_spark_path(p) for files in _files_by_columns(dataset.captures, family).values() for p in files]
            if paths:
                frame = self.spark.read.schema(_spark_read_schema(family, columns)).parquet(*paths)
                frame = frame.withColumn("segment", F.col("_metadata.file_path"))
                present = {file_column(family, c) for c in columns}  # declared: a column a file lacks is null
            else:
                frame = self.spark.createDataFrame([], "segment string")
                present = set()
            picked = [F.col(file_column(family, c)).alias(c) if t is None else F.lit(None).cast(_SQL_TYPES[t]).alias(c)
                      for c, t in family_columns(family, present, columns)]
            frame = frame.select(F.col("segment"), *picked)
            if sum(cap.rows(family) for cap in dataset.captures) <= CACHE_ROWS:
                frame = frame.cache()  # read once, not once per figure that reads the family
            frame.createOrReplaceTempView(family)

    def segment_name(self, path: str) -> str:
        """How Spark's ``_metadata.file_path`` names the file ``path``: ``file:`` + the absolute local path (a
        ``file:///`` URL too), any other URL as it is."""
        spark_path = _spark_path(path)
        if spark_path.startswith("file://"):
            return "file:" + spark_path[len("file://"):]
        return spark_path if "://" in spark_path else "file:" + spark_path

    def register(self, name: str, table: pa.Table) -> None:
        rows = [tuple(row.values()) for row in table.to_pylist()]
        self.spark.createDataFrame(rows, schema=_spark_schema(table.schema)).createOrReplaceTempView(name)

    def summarise(self, tables: dict[str, str], sql: str) -> pa.Table:
        """``tables`` as views (Spark plans them into ``sql``), then ``sql``."""
        for name, query in tables.items():
            self.spark.sql(query).createOrReplaceTempView(name)
        return self.spark.sql(sql).toArrow()

    def close(self) -> None:
        self.spark.catalog.clearCache()
        self.spark.stop()


def _spark_path(path: str) -> str:
    """A segment as Spark is given it: a local path made absolute, a filesystem URL as it is."""
    return path if "://" in path else os.path.abspath(path)


#: How Spark reads each Parquet type of the capture families (unsigned types widen; uint64 is DECIMAL(20,0)).
_SPARK_READ_TYPES = {pa.int8(): "tinyint", pa.int16(): "smallint", pa.int32(): "int", pa.int64(): "bigint",
                     pa.uint8(): "int", pa.uint16(): "int", pa.uint32(): "bigint", pa.uint64(): "decimal(20,0)",
                     pa.string(): "string", pa.bool_(): "boolean"}


def _spark_read_schema(family: str, columns: tuple[str, ...]) -> str:
    """The DDL schema Spark reads ``columns`` of ``family`` with: given, so no file footer is read up front."""
    declared = plain_schema(SCHEMAS[family])
    names = [file_column(family, c) for c in columns]
    return ", ".join(f"`{n}` {_SPARK_READ_TYPES[declared.field(n).type]}" for n in names)


def _spark_schema(schema: pa.Schema) -> str:
    """A DDL schema string of the simple (string and integer) columns registered from Arrow."""
    names = {pa.string(): "string", pa.int64(): "bigint", pa.int32(): "int", pa.float64(): "double"}
    return ", ".join(f"`{f.name}` {names[f.type]}" for f in schema)


def spark_engine(dataset: Dataset, wanted: dict[str, tuple[str, ...]], *, master: str | None = None) -> SparkEngine:
    """A Spark engine over ``dataset``; MissingCapability when pyspark or a Java runtime is missing."""
    try:
        import pyspark  # noqa: F401  (late: optional, tracekit[spark]; imported here to name the fix)
    except ModuleNotFoundError as error:
        raise MissingCapability("--engine spark needs pyspark: pip install 'tracekit[spark]' "
                                "(and a Java runtime: scripts/install.sh --spark)") from error
    if not os.environ.get("JAVA_HOME") and shutil.which("java") is None:
        raise MissingCapability("--engine spark needs a Java runtime (scripts/install.sh --spark installs "
                                "Debian's default-jre-headless)")
    return SparkEngine(dataset, wanted, master=master)
