"""Every analysis module opens with a docstring whose first line is a title (its length:
tests/test_source_rules.py), lists its public names in ``__all__`` and never imports bcc."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

ANALYSIS = Path(__file__).resolve().parents[2] / "analysis"
MODULES = sorted(p.stem for p in ANALYSIS.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", MODULES)
def test_public_names_and_no_kernel_access(name):
    module = importlib.import_module(f"tracekit.analysis.{name}")
    doc = (module.__doc__ or "").strip().splitlines()
    assert doc and doc[0].strip() and (len(doc) == 1 or not doc[1].strip()), f"{name}: no title line"
    exported = getattr(module, "__all__", None)
    assert exported, f"{name} has no __all__"
    for public in exported:
        assert hasattr(module, public), f"{name}.__all__ names {public}, which does not exist"
        obj = getattr(module, public)
        if inspect.isfunction(obj):
            assert obj.__doc__, f"{name}.{public} has no docstring"
    tree = ast.parse((ANALYSIS / f"{name}.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"bcc", "tracekit.recorder"}, f"{name} imports the kernel side"
    assert "tracekit.recorder" not in (ANALYSIS / f"{name}.py").read_text()
