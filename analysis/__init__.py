"""Offline analyses of tracekit captures (installed as ``tracekit.analysis``).

Every module is a pure function from a capture (or its tables) to pandas DataFrames with documented
columns and units; nothing here touches the kernel or imports bcc, so analyses run on any machine that can
read the Parquet files. docs/analysis.md lists them, a section per module.
"""
