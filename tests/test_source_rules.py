"""The house rules of tracekit/, analysis/ and probes/ (docs: ../shared/docs/STYLE.md), checked by ast.

- a module docstring is a title and a sentence or two: at most :data:`DOCSTRING_LINES` lines;
- an import inside a function or class says why it is late, in a comment on its line or the line above
  (a run of imports on consecutive lines shares one); a linter pragma alone is no reason.
"""

from __future__ import annotations

import ast
import io
import re
import textwrap
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for d in ("tracekit", "analysis", "probes") for p in (ROOT / d).rglob("*.py"))
DOCSTRING_LINES = 12
#: Comments that instruct a tool and say nothing to a reader.
_PRAGMA = re.compile(r"#\s*(noqa\b[:\s\w,]*|type:\s*ignore\S*|pragma\b.*|fmt:\s*\w+)", re.IGNORECASE)


def docstring_lines(source: str) -> int:
    """How many lines the module docstring of ``source`` spans (0 without one)."""
    doc = ast.get_docstring(ast.parse(source), clean=False)
    return len(doc.strip("\n").splitlines()) if doc else 0


def _reasons(source: str) -> set[int]:
    """Lines holding a comment that is more than a linter pragma."""
    lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and _PRAGMA.sub("", token.string).strip(" #()"):
            lines.add(token.start[0])
    return lines


def unexplained_late_imports(source: str) -> list[tuple[int, str]]:
    """(line, statement) of each import inside a function or class with no reason comment."""
    tree = ast.parse(source)
    reasons = _reasons(source)
    late = sorted({node.lineno: node for scope in ast.walk(tree)
                   if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                   for node in ast.walk(scope) if isinstance(node, (ast.Import, ast.ImportFrom))}.items())
    explained: set[int] = set()
    found = []
    for line, node in late:
        if reasons & set(range(line - 1, node.end_lineno + 1)) or (line - 1) in explained:
            explained.add(node.end_lineno)
        else:
            found.append((line, ast.unparse(node)))
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_docstring_is_short(path):
    lines = docstring_lines(path.read_text())
    assert lines <= DOCSTRING_LINES, (f"{path.relative_to(ROOT)}: a {lines}-line module docstring; a title and a "
                                      f"sentence or two (at most {DOCSTRING_LINES} lines), details in docs/")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_late_imports_say_why(path):
    found = unexplained_late_imports(path.read_text())
    assert not found, f"{path.relative_to(ROOT)}: late imports without a reason comment: {found}"


def test_docstring_checker_counts_lines():
    assert docstring_lines('"""Title."""\nx = 1\n') == 1
    assert docstring_lines("x = 1\n") == 0
    long = '"""Title.\n\n' + "A sentence.\n" * 20 + '"""\n'
    assert docstring_lines(long) == 22 > DOCSTRING_LINES


def test_late_import_checker_finds_planted_imports():
    source = textwrap.dedent('''
        import os


        def explained():
            # matplotlib is slow to import
            import matplotlib
            import matplotlib.pyplot as plt


        def inline():
            import duckdb  # optional dependency


        def in_try():
            try:  # late: optional
                from pyspark.sql import (
                    SparkSession,
                )
            except ImportError:
                pass


        def bare():
            import json


        def pragma_only():
            import bcc  # noqa: F401


        def after_a_gap():
            # a reason for the first import only
            import a

            import b


        class Holder:
            def method(self):
                from x import y
    ''')
    assert [statement for _, statement in unexplained_late_imports(source)] == [
        "import json", "import bcc", "import b", "from x import y"]
