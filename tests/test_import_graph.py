"""The modules of tracekit/, analysis/ and probes/ import each other without a circle.

The graph is built statically (ast) from every import statement, at module level or inside a
function: an import deferred into a function to dodge a circle is still a circle. Modules are named as
installed (analysis/ is ``tracekit.analysis``, probes/ ``tracekit.probes``). Imports of optional
dependencies (bcc) name no project module, so they are not edges.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Source folder -> the package it is installed as (pyproject.toml's package-dir).
PACKAGES = {"tracekit": "tracekit", "analysis": "tracekit.analysis", "probes": "tracekit.probes"}


def _modules(root: Path, packages: dict[str, str]) -> dict[str, Path]:
    modules = {}
    for folder, package in packages.items():
        for path in (root / folder).rglob("*.py"):
            parts = path.relative_to(root / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((package, *parts))] = path
    return modules


def _project_module(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` loads: itself, or the nearest package above it (None: not ours)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path = ROOT, packages: dict[str, str] = PACKAGES) -> dict[str, dict[str, int]]:
    """module -> {imported project module: line of the first such import}."""
    modules = _modules(root, packages)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = graph.setdefault(module, {})
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            else:
                continue
            for target in targets:
                found = _project_module(target, modules)
                if found and found != module:
                    edges.setdefault(found, node.lineno)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, {}):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@functools.cache
def project_graph() -> dict[str, dict[str, int]]:
    """The project's own import graph, parsed once for the tests that read it."""
    return import_graph()


def test_no_import_cycles():
    graph = project_graph()
    described = []
    for component in cycles(graph):
        members = set(component)
        steps = [f"{src}:{line} -> {dst}" for src in component for dst, line in graph[src].items() if dst in members]
        described.append(" | ".join(steps))
    assert not described, "import circles:\n" + "\n".join(described)


def test_graph_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import thing\n")
    (pkg / "a.py").write_text("import os\n\ndef late():\n    from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from .. import a\nthing = 1\n")
    (pkg / "c.py").write_text("import pkg.sub.b as b\nimport bcc\nfrom pkg.extra.d import x\n")
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "d.py").write_text("x = 1\n")  # a folder installed as pkg.extra
    graph = import_graph(tmp_path, {"pkg": "pkg", "extra": "pkg.extra"})
    assert graph["pkg.a"] == {"pkg.sub.b": 4}  # inside a function; os is not ours
    assert graph["pkg.sub"] == {"pkg.sub.b": 1}  # relative, one level
    assert graph["pkg.sub.b"] == {"pkg.a": 1}  # relative, two levels
    assert graph["pkg.c"] == {"pkg.sub.b": 1, "pkg.extra.d": 3}  # bcc is not ours
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]


def test_host_facts_sit_below_recorder_and_funcprobes():
    graph = project_graph()
    assert graph["tracekit.host"] == {}, "tracekit.host imports only the standard library"
    assert not [m for m in graph["tracekit.recorder.probe_family"] if m.startswith("tracekit.funcprobes")]
