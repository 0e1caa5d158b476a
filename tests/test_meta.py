"""Meta-tests of the project's own standards: contracts stated, commands documented, JSON documented.

- every Python module of the package (tracekit/, probes/, analysis/) opens with a docstring;
- every CLI command's help ends with worked examples;
- every command that offers --json is documented under docs/cli-json/;
- every module that adds commands (``register(app)``) is in the CLI's registry, which holds nothing else.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tracekit.cli import COMMAND_MODULES, app

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(
    p for d in ("tracekit", "probes", "analysis") for p in (ROOT / d).rglob("*.py")
    if p.name != "__init__.py" or p.stat().st_size > 0
)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_has_docstring(path):
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{path.relative_to(ROOT)} lacks a module docstring stating its contract"


def _commands(group: typer.Typer, prefix: tuple[str, ...] = ()):
    command = typer.main.get_command(group)
    stack = [(prefix, command)]
    while stack:
        path, cmd = stack.pop()
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                stack.append((path + (name,), sub))
        elif path:
            yield path, cmd


COMMANDS = sorted(_commands(app), key=lambda item: item[0])


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_command_help_has_examples(path, cmd):
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in (cmd.help or ""), f"'tracekit {' '.join(path)} --help' has no worked examples"


def test_json_outputs_are_documented():
    docs = "\n".join(p.read_text() for p in (ROOT / "docs" / "cli-json").glob("*.md"))
    for path, cmd in COMMANDS:
        if any("--json" in getattr(param, "opts", ()) for param in cmd.params):
            name = " ".join(path)
            assert f"tracekit {name}" in docs or f"`{name}" in docs, f"--json of 'tracekit {name}' is undocumented"


def test_every_command_module_is_registered():
    defining = {p for p in SOURCES if re.search(r"^def register\(app\b", p.read_text(), re.MULTILINE)}
    registered = [Path(module.__file__).resolve() for module in COMMAND_MODULES]
    assert len(set(registered)) == len(registered), "a module is registered twice"
    assert set(registered) == defining, (
        f"not registered in tracekit.cli: {sorted(str(p.relative_to(ROOT)) for p in defining - set(registered))}; "
        f"registered without register(app): {sorted(str(p) for p in set(registered) - defining)}")
