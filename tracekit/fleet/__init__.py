"""Many captures at once: ``tracekit fleet summary`` on DuckDB or Spark.

:mod:`.query` holds the SQL (two steps), :mod:`.engines` the two engines and their shared input tables,
:mod:`.summary` runs it over a dataset, :mod:`.render` turns the result into text, JSON and HTML.
"""
